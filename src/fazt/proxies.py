"""Who the client is behind a reverse proxy: forwarding headers believed only from the
proxies the owner named in the `trusted_proxies` setting.

Anyone can send `X-Forwarded-For` and `X-Forwarded-Proto`, so by default fazt
ignores them (and drops them, with `Forwarded`, before Falcon could read them):
the client is the connection's peer and the scheme is the connection's own.
When the peer is a trusted proxy, the client is the rightmost `X-Forwarded-For`
entry that is not itself a trusted proxy (entries further left may have been
written by the client), and the scheme is what the proxy says. The login limiter,
the request log and the session cookie's `Secure` flag all read the result.
"""

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_ADDRESS = 64  # characters kept of an entry that is not an IP address


@functools.lru_cache(maxsize=8)
def networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """The setting's entries (checked when set) as networks; parsed once per value."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # an IPv4 peer on a dual-stack listener ("::ffff:127.0.0.1")
    return any(ip in network for network in trusted)


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy that says more."""
    if not forwarded_for or not is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop[:MAX_ADDRESS]
    return hops[0][:MAX_ADDRESS] if hops else peer


def believe(environ: dict, trusted: tuple[Network, ...]) -> None:
    """Rewrite a WSGI environ's REMOTE_ADDR and wsgi.url_scheme from the forwarding
    headers when its peer is trusted; drop the headers Falcon would believe otherwise."""
    proto = environ.pop("HTTP_X_FORWARDED_PROTO", None)
    environ.pop("HTTP_FORWARDED", None)
    if not trusted:
        return
    peer = environ.get("REMOTE_ADDR") or ""
    if not is_trusted(peer, trusted):
        return
    environ["fazt.peer"] = peer
    environ["REMOTE_ADDR"] = client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), trusted)
    if proto:
        first = proto.split(",")[0].strip().lower()
        if first in ("http", "https"):
            environ["wsgi.url_scheme"] = first
