"""The owner's side of HTTPS: custom domains and certificates made elsewhere.

The command line and the admin API both call these; each checks everything
before it writes, so bad input changes nothing. A running server picks the
changes up through its database watch within seconds.
"""

import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from fazt.deploy import check_site_name
from fazt.errors import FaztError, NotFound
from fazt.hosts import ROOT_SITE, UNKNOWN, ascii_host, classify
from fazt.pem import check_pair, served_pair
from fazt.store import Database
from fazt.store import certs as store
from fazt.store import sites as sites_store

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def check_host(host: str, *, wildcard: bool = False) -> str:
    """A DNS name as clients send it (lower-case, ASCII: an IDN such as 'bücher.example'
    becomes its xn-- form, hosts.ascii_host), or one sentence."""
    text = (host or "").strip()
    star = wildcard and text.startswith("*.")
    name = ascii_host(text[2:] if star else text)
    labels = name.split(".")
    if star:
        name = "*." + name
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(x) for x in labels):
        raise FaztError(f"{host!r} is not a host name such as www.example.org.")
    if labels[-1].isdigit():  # 1.2.3.4, 0x7f.1: no top-level domain is all digits
        raise FaztError(f"{host!r} looks like an IP address, not a host name such as "
                        "www.example.org.")
    return name


def add_domain(db: Database, site: str, host: str, domain: str) -> str:
    """Serve `site` at `host` too (and order its certificate when HTTPS is on)."""
    check_site_name(site)
    host = check_host(host)
    if classify(host, domain).kind != UNKNOWN:
        raise FaztError(f"{host} is already one of fazt's own hosts under {domain}.")
    with db.write() as conn:
        _check_site(conn, site)
        owner = store.load_domains(conn).get(host)
        if owner and owner != site:
            raise FaztError(f"{host} already serves site {owner!r}; remove it there first.")
        store.add_domain(conn, host, site)
    return host


def remove_domain(db: Database, site: str, host: str) -> str:
    host = check_host(host)
    with db.write() as conn:
        _check_site(conn, site)
        if store.load_domains(conn).get(host) != site:
            raise NotFound(f"Site {site!r} has no domain {host}.")
        store.remove_domain(conn, host)
        store.remove_certificate(conn, host)  # see remove_site
    return host


def remove_site(conn: sqlite3.Connection, site: str, domain: str) -> bool:
    """Remove `site` (store.sites.remove_site) and the certificates of the hosts it frees:
    its custom domains, and its own name (`site.D`; `D` itself is always served). A
    running server stops showing them on the next handshake, and `fazt cert list` no
    longer lists them: left in place, they were served for names fazt no longer
    answers, and counted as live. A wildcard stays (no one site owns it). In db.write().
    """
    hosts = [h for h, s in store.load_domains(conn).items() if s == site]
    if site != ROOT_SITE:
        hosts.append(f"{site}.{domain}")
    if not sites_store.remove_site(conn, site):
        return False
    for host in hosts:
        store.remove_certificate(conn, host)
    return True


def site_domains(db: Database, site: str) -> list[str]:
    with db.read() as conn:
        _check_site(conn, site)
        return [h for h, s in store.load_domains(conn).items() if s == site]


def _check_site(conn, site: str) -> None:
    if conn.execute("SELECT 1 FROM sites WHERE name = ?", (site,)).fetchone() is None:
        raise NotFound(f"There is no site named {site!r}.")


def import_certificate(db: Database, host: str, chain_pem: bytes, key_pem: bytes) -> dict:
    """Install a certificate made elsewhere (a wildcard by DNS-01, a company CA).

    Refused, with nothing written, when the key does not match, the certificate
    does not name the host, or it is expired or not valid yet. The chain is stored in
    the order TLS sends it (pem.served_pair), whatever order the file had.
    """
    host = check_host(host, wildcard=True)
    chain_pem, key_pem = served_pair(chain_pem, key_pem)
    info = check_pair(host, chain_pem, key_pem, time.time())
    with db.write() as conn:
        store.save_certificate(conn, host, chain_pem, key_pem, issuer=info.issuer,
                               not_before=info.not_before, not_after=info.not_after,
                               source="import")
    return {"host": host, "issuer": info.issuer, "not_after": info.not_after}


def certificate_list(db: Database) -> list[dict]:
    """Host, issuer, expiry, source and last error of every certificate: never a key."""
    with db.read() as conn:
        return store.list_certificates(conn)


T = TypeVar("T")


def choose(name: str, entries: Mapping[str, T], valid: Callable[[T], bool]) -> T | None:
    """The certificate shown for `name`, out of `entries` (host name -> certificate):
    its own if valid now, else a valid wildcard's one level up (`*.example.org`), else
    whichever of the two exists (an expired certificate still completes a handshake,
    and the browser then says why, which beats a refused one). The TLS port
    (`Certificates.context_for`) and the plain port's redirect (`autocert.serves`)
    both choose with it, so a host is redirected exactly when it is shown a valid one."""
    own = entries.get(name)
    wildcard = entries.get("*." + name.split(".", 1)[1]) if "." in name else None
    for candidate in (own, wildcard):
        if candidate is not None and valid(candidate):
            return candidate
    return own if own is not None else wildcard
