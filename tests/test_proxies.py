"""trusted_proxies: X-Forwarded-For and X-Forwarded-Proto believed only from the named
proxies, for the login limiter, the request log and the session cookie's Secure flag."""

import pytest
from conftest import PASSWORD, USERNAME

from fazt.app import Router
from fazt.proxies import address_key, client_address, networks

ADMIN = {"Host": "admin.localhost", "X-Fazt-Request": "1"}
PROXY = "10.0.0.5"


@pytest.mark.parametrize("peer,header,expected", [
    ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # not a proxy: header ignored
    (PROXY, None, PROXY),
    (PROXY, "198.51.100.1", "198.51.100.1"),
    (PROXY, "1.1.1.1, 198.51.100.1", "198.51.100.1"),  # the client may forge the left
    (PROXY, "198.51.100.1, 10.0.0.7", "198.51.100.1"),  # a second trusted hop is skipped
    (PROXY, "10.0.0.8, 10.0.0.7", "10.0.0.8"),
    (PROXY, "unknown", "unknown"),
    ("2001:db8::1", "198.51.100.1", "198.51.100.1"),
    ("::ffff:10.0.0.5", "198.51.100.1", "198.51.100.1"),  # IPv4 on a dual-stack listener
    ("::ffff:203.0.113.9", "198.51.100.1", "::ffff:203.0.113.9"),
])
def test_the_client_is_the_rightmost_untrusted_hop(peer, header, expected):
    assert client_address(peer, header, networks(("10.0.0.0/8", "2001:db8::/32"))) == expected


@pytest.mark.parametrize("address,key", [
    ("203.0.113.9", "203.0.113.9"),
    ("::ffff:203.0.113.9", "203.0.113.9"),  # IPv4 on a dual-stack listener: its IPv4 address
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),  # IPv6: its /64, whatever the rest
    ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),  # however it is spelled
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64 is another client
    ("::1", "::/64"),
    ("unknown", "unknown"),  # what a proxy may name: counted as it is
    ("not:an:address", "not:an:address"),
])
def test_limits_count_an_ipv6_client_by_its_64(address, key):
    assert address_key(address) == key


def login(client, remote_addr: str, forwarded: dict, password: str = "wrong password"):
    return client.simulate_post("/api/login", remote_addr=remote_addr,
                                headers={**ADMIN, **forwarded},
                                json={"username": USERNAME, "password": password})


def test_untrusted_forwarding_headers_change_nothing(client):
    for n in range(5):
        assert login(client, PROXY, {"X-Forwarded-For": f"198.51.100.{n}"}).status_code == 401
    # five failures from one peer, whatever it claimed: that peer waits
    assert login(client, PROXY, {"X-Forwarded-For": "198.51.100.99"}).status_code == 429
    ok = login(client, "192.0.2.1", {"X-Forwarded-Proto": "https"}, PASSWORD)
    assert ok.status_code == 200
    assert not ok.cookies["fazt_session"].secure


def test_a_trusted_proxy_names_the_client_and_the_scheme(instance, client):
    instance.set_config({"trusted_proxies": [PROXY]})
    for _ in range(5):
        assert login(client, PROXY, {"X-Forwarded-For": "198.51.100.1"}).status_code == 401
    assert login(client, PROXY, {"X-Forwarded-For": "198.51.100.1"}).status_code == 429
    # another visitor behind the same proxy is not locked out
    other = login(client, PROXY, {"X-Forwarded-For": "198.51.100.2",
                                  "X-Forwarded-Proto": "https"}, PASSWORD)
    assert other.status_code == 200
    assert other.cookies["fazt_session"].secure


def test_the_request_log_shows_the_client_behind_a_trusted_proxy(instance):
    from falcon import testing

    lines = []

    class Log:
        def write(self, line: str) -> None:
            lines.append(line)

    client = testing.TestClient(Router(instance, log=Log()))
    client.simulate_get("/_fazt/health", remote_addr=PROXY,
                        headers={"Host": "localhost", "X-Forwarded-For": "198.51.100.7"})
    instance.set_config({"trusted_proxies": ["10.0.0.0/8"]})
    client.simulate_get("/_fazt/health", remote_addr=PROXY,
                        headers={"Host": "localhost", "X-Forwarded-For": "198.51.100.7"})
    assert lines[0].startswith(PROXY + " ")
    assert lines[1].startswith("198.51.100.7 ")


def test_sign_in_guesses_from_one_64_count_as_one_address(client):
    """A /64 is one client's: five wrong passwords from five of its addresses lock out
    a sixth, while another /64 may still try."""
    for n in range(5):
        assert login(client, f"2001:db8:1:2::{n + 1:x}", {}).status_code == 401
    assert login(client, "2001:db8:1:2:ffff::1", {}).status_code == 429
    assert login(client, "2001:db8:1:3::1", {}).status_code == 401
