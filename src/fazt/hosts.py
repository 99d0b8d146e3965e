"""Which part of fazt a Host header is for. Shared by the WSGI router and the lanes."""

from collections.abc import Mapping
from typing import NamedTuple

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
    if not host:
        return Target(UNKNOWN)
    name = host.strip().lower()
    if name.startswith("["):  # an IPv6 literal: never one of our names
        return Target(UNKNOWN)
    name = name.rsplit(":", 1)[0].rstrip(".")
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
