"""Where files live is remembered in proportion to the file cache, so spreading requests
over many sites keeps hot files on the event loop's fast path."""

from conftest import deploy_dir

from fazt.vfs import FOUND_ENTRIES, found_entries


def test_the_found_map_grows_with_the_cache():
    assert found_entries(0) == found_entries(2**19) == FOUND_ENTRIES  # small hosts
    assert found_entries(2 * 2**30) == int(2 * 2**30 * 0.10) // 1600  # 134,217 on 2 GB


def test_many_sites_stay_remembered(instance, tmp_path):
    instance.vfs.resize(128 * 2**20, instance.vfs.large_file_bytes)  # room for 8,388
    root = tmp_path / "site"
    root.mkdir()
    for i in range(6000):
        (root / f"f{i}.txt").write_text(str(i))
    deploy_dir(instance, "many", root)
    for i in range(6000):
        assert instance.vfs.find("many", f"f{i}.txt") is not None
    assert all(instance.vfs.known("many", f"f{i}.txt") for i in range(6000))


def test_remembered_files_cost_a_full_garbage_collection_nothing(instance, tmp_path):
    """The found map and the fast path's rendered answers hold plain tuples, which CPython's
    cyclic collector stops tracking: with 100,000 files remembered, objects made its full
    collections (which stop the event loop) last 200 to 600 ms (bench section 9)."""
    import gc

    from fazt.server.fastpath import FastPath

    root = tmp_path / "site"
    root.mkdir()
    for i in range(2000):
        (root / f"f{i}.txt").write_text(str(i))
    deploy_dir(instance, "many", root)
    fast = FastPath(instance)
    instance.vfs.rules("many")
    gc.collect()
    before = len(gc.get_objects())
    answers = []
    for i in range(2000):
        assert instance.vfs.find("many", f"f{i}.txt") is not None
        answers.append(fast._prepare("many", f"/f{i}.txt", "gzip"))
    assert all(answers)
    gc.collect()
    assert len(gc.get_objects()) - before < 100  # not 2,000 or more
    assert not any(gc.is_tracked(a) for a in answers)
