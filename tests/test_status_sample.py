"""The status's slow part comes from a sampler thread, so a read does no I/O."""

from conftest import eventually


def test_a_status_read_takes_the_sample_and_the_counters_live(instance, monkeypatch):
    instance.start_sampler(every=3600)  # one sample now, the next in an hour
    calls = []
    real = instance._slow_status
    monkeypatch.setattr(instance, "_slow_status", lambda: calls.append(1) or real())
    for _ in range(5):
        status = instance.status()
    assert calls == []  # the reads took the sample
    assert status["memory"]["rss_bytes"] > 0 and status["db"]["size_bytes"] > 0
    assert status["js"]["slots"] >= 1  # counters are live
    instance.set_config({"js_timeout_ms": 1234})  # applied and sampled at once
    assert instance.status()["thresholds"]["js_timeout_ms"] == 1234 and calls == [1]


def test_the_sampler_thread_refreshes_the_sample(instance):
    instance.start_sampler(every=0.05)
    first = instance._sample["at"]
    assert eventually(lambda: instance._sample["at"] > first)


def test_without_a_sampler_the_status_is_computed_now(instance):
    status = instance.status()
    assert status["sampled_s_ago"] == 0 and status["memory"]["ledger"]["total_mb"] > 0


def test_a_server_without_replication_leaves_litestreams_socket_alone(instance, monkeypatch):
    from fazt.replica import litestream

    asked = []
    monkeypatch.setattr(litestream, "control", lambda *args: asked.append(args))
    instance.replica_status()  # the command line asks: a server elsewhere may run Litestream
    assert asked
    asked.clear()
    instance.start_sampler(every=3600)  # a server: replication off means no Litestream
    instance.sample()
    assert asked == [] and instance.status()["replica"]["running"] is False
