"""Which part of fazt a Host header is for. Shared by the WSGI router and the lanes."""

from collections.abc import Mapping
from typing import NamedTuple

import idna  # (a dependency of requests, which acme needs: already in every install)

ADMIN = "admin"
SITE = "site"
UNKNOWN = "unknown"
ROOT_SITE = "root"


class Target(NamedTuple):
    kind: str  # ADMIN, SITE or UNKNOWN
    site: str | None = None


def classify(host: str | None, domain: str, domains: Mapping[str, str] | None = None) -> Target:
    """`admin.D` → the cockpit, `NAME.D` → site NAME, `D` → site root; `localhost` alike;
    a custom domain (`domains`: host → site) → its site."""
    name = host_name(host)
    if not name or name.startswith("["):  # an IPv6 literal: never one of our names
        return Target(UNKNOWN)
    if domains and name in domains:
        return Target(SITE, domains[name])
    for base in (domain.lower(), "localhost"):
        if name == base:
            return Target(SITE, ROOT_SITE)
        if name.endswith("." + base):
            label = name[: -len(base) - 1]
            if "." in label or not label:
                return Target(UNKNOWN)
            return Target(ADMIN) if label == ADMIN else Target(SITE, label)
    return Target(UNKNOWN)


def host_name(host: str | None) -> str:
    """A Host header's name: lower-case, without its port or a trailing dot; an IPv6
    literal keeps its brackets. Never raises (falcon's `req.host` does on a port that
    is not a number, which any client can send)."""
    name = (host or "").strip().lower()
    if name.startswith("["):
        return name.split("]", 1)[0] + "]"
    return name.rsplit(":", 1)[0].rstrip(".")


def ascii_host(text: str) -> str:
    """A host name the owner typed, as DNS, TLS (SNI) and the Host header carry it:
    lower-case, without a trailing dot, an internationalised name in its xn-- form
    (UTS 46, as browsers convert it: 'Bücher.example.' -> 'xn--bcher-kva.example').
    A name that cannot be converted comes back lower-cased for the caller's check to
    refuse."""
    name = (text or "").strip().rstrip(".")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            pass
    return name.lower()
