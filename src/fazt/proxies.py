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
IPV6_PREFIX = 64  # the block one IPv6 client holds: limits count it as one address


@functools.lru_cache(maxsize=8)
def networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """The setting's entries (checked when set) as networks; parsed once per value."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `address` names (an IPv4 peer on a dual-stack listener, "::ffff:a.b.c.d",
    as its IPv4 address), or None when it names none (a proxy's "unknown")."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=4096)
def address_key(address: str) -> str:
    """Whom the per-address limits count for a client at `address`: an IPv4 address
    itself, an IPv6 address its /64 ("2001:db8:1:2::/64"), anything else as it is.
    The request log and trusted_proxies keep reading the full address."""
    if ":" not in address:
        return address  # IPv4 (or not an address): no parsing on the common path
    ip = ip_of(address)
    if ip is None:
        return address
    if ip.version == 4:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))


def is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    ip = ip_of(address)
    return ip is not None and any(ip in network for network in trusted)


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
