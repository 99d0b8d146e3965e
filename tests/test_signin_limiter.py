"""The sign-in limiter: failed guesses bounded per address and for the whole server,
in a table of bounded size, while the owner still gets in."""

from conftest import PASSWORD, USERNAME

from fazt import auth
from fazt.auth import LoginLimiter

ADMIN = {"Host": "admin.localhost", "X-Fazt-Request": "1"}
WRONG = "not the password"


class Clock:
    """time.monotonic for fazt.auth, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(limiter: LoginLimiter, address: str, trusted: bool = False) -> int:
    """One wrong guess as the sign-in makes it; the wait it was refused with, or 0."""
    wait, _ = limiter.begin(address, trusted)
    return wait


def test_attempts_are_counted_before_the_check_so_parallel_guesses_do_not_pass():
    limiter = LoginLimiter(attempts=5)
    waits = [fail(limiter, "203.0.113.1") for _ in range(20)]
    assert waits[:5] == [0] * 5 and all(w >= 1 for w in waits[5:])


def test_a_spray_of_addresses_is_capped_server_wide_and_the_table_stays_small(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(auth.time, "monotonic", clock)
    limiter = LoginLimiter(attempts=3, window=60, ceiling=10, max_addresses=40)
    for _ in range(3):
        assert fail(limiter, "198.51.100.1") == 0
    assert fail(limiter, "198.51.100.1") >= 1  # locked out
    allowed = 0
    for n in range(5000):
        clock.now += 0.001
        allowed += fail(limiter, f"2001:db8:{n:x}::/64") == 0
    assert allowed == 7  # the ceiling: 10 guesses a minute from everyone, 3 of them above
    assert limiter.retry_after("192.0.2.9") >= 1  # a fresh address waits too
    assert len(limiter._failures) <= 40
    # Guesses past the ceiling from the owner's side still go on, but the table stays
    # bounded, whatever they number.
    for n in range(5000):
        fail(limiter, f"10.{n // 256}.{n % 256}.1", trusted=True)
    assert len(limiter._failures) <= 40
    assert len(limiter._recent) <= 10 + 5000  # one a guess, dropped after the window
    clock.now += 61
    assert limiter.retry_after("192.0.2.9") == 0 and not limiter._recent


def test_eviction_never_frees_an_address_still_locked_out(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(auth.time, "monotonic", clock)
    limiter = LoginLimiter(attempts=5, window=60, ceiling=20, max_addresses=30)
    for _ in range(5):
        fail(limiter, "198.51.100.1")
    for n in range(10_000):  # enough fresh addresses to push it out of any table
        clock.now += 0.005
        fail(limiter, f"203.0.{n // 256}.{n % 256}")
    assert clock.now - 1000 < 60
    assert limiter.retry_after("198.51.100.1") >= 1
    clock.now = 1000 + 61
    assert limiter.retry_after("198.51.100.1") == 0  # and then it may try again


def login(client, remote_addr: str, password: str = WRONG, headers: dict | None = None):
    return client.simulate_post("/api/login", remote_addr=remote_addr,
                                headers={**ADMIN, **(headers or {})},
                                json={"username": USERNAME, "password": password})


def device_cookie(client, signed_in):
    """What the dashboard asks for after signing in: this browser's device cookie."""
    assert signed_in.status_code == 200
    assert "fazt_device" not in signed_in.cookies  # the sign-in sets its session alone
    session = {"Cookie": f"fazt_session={signed_in.cookies['fazt_session'].value}"}
    r = client.simulate_post("/api/device", headers={**ADMIN, **session})
    assert r.status_code == 200
    return r.cookies["fazt_device"]


def test_past_the_ceiling_strangers_wait_and_the_owner_still_signs_in(client, instance):
    # The owner signs in once from home, and from a laptop (a browser keeps its cookie).
    assert login(client, "192.0.2.1", PASSWORD).status_code == 200
    device = device_cookie(client, login(client, "192.0.2.2", PASSWORD))
    assert device.path == "/api/login" and device.http_only
    instance.auth.limiter.ceiling = 6
    for n in range(3):  # a crowd of addresses, two wrong guesses each
        for _ in range(2):
            assert login(client, f"203.0.113.{n}").status_code == 401
    stranger = login(client, "203.0.113.50")
    assert stranger.status_code == 429
    assert stranger.json["error"]["code"] == "too_many_attempts"
    assert int(stranger.headers["retry-after"]) >= 1
    # The right password from a stranger waits too: else the answer tells a guess apart.
    assert login(client, "203.0.113.51", PASSWORD).status_code == 429
    # The owner: from where they signed in before, with their browser's device cookie
    # from anywhere, or on the machine itself.
    assert login(client, "192.0.2.1", PASSWORD).status_code == 200
    cafe = login(client, "198.51.100.77", PASSWORD,
                 {"Cookie": f"fazt_device={device.value}"})
    assert cafe.status_code == 200
    assert login(client, "127.0.0.1", PASSWORD).status_code == 200
    forged = login(client, "198.51.100.78", PASSWORD,
                   {"Cookie": f"fazt_device={device.value[:-2]}xx"})
    assert forged.status_code == 429
    # A device cookie passes the ceiling only: its address's own limit still holds.
    for _ in range(5):
        assert login(client, "198.51.100.79", WRONG,
                     {"Cookie": f"fazt_device={device.value}"}).status_code == 401
    assert login(client, "198.51.100.79", PASSWORD,
                 {"Cookie": f"fazt_device={device.value}"}).status_code == 429


def test_log_out_everywhere_forgets_the_devices(client, instance):
    first = login(client, "192.0.2.1", PASSWORD)
    device = device_cookie(client, first).value
    assert client.simulate_post("/api/device", headers=ADMIN).status_code == 401
    assert instance.auth.check_device(device)
    assert not instance.auth.check_device(device + "x")
    assert not instance.auth.check_device(first.cookies["fazt_session"].value)
    session = {"Cookie": f"fazt_session={first.cookies['fazt_session'].value}"}
    assert client.simulate_post("/api/logout-all", headers={**ADMIN, **session},
                                remote_addr="192.0.2.1").status_code == 200
    assert not instance.auth.check_device(device)
