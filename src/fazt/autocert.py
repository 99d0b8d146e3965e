"""Certificates that obtain and renew themselves: one background thread, one order at a time.

The hosts come from what fazt serves (`D`, `admin.D`, every site's host, every
custom domain), never from what a client asks for: on-demand issuance for
arbitrary names is how servers burn their CA's rate limits. A host without a
valid certificate, or whose certificate has a third of its lifetime left, is
ordered; a failed order waits with exponential backoff, and its sentence is
kept in the database for `fazt cert list`, `fazt server status` and the
dashboard. Certificates, keys and the failure state are all in the database,
so a restart never orders a certificate it has again; a failing host is retried
once at start (see `_retry_at`), and a change of the CA settings forgets the
failures altogether (`instance._new_ca`).

The thread also watches the database, so a certificate imported or a domain
added by another process (`fazt cert import`, `fazt site domain add`) is
served within seconds.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from fazt.acme_client import AccountGone, Acme
from fazt.certs import choose
from fazt.errors import FaztError
from fazt.pem import CertInfo, csr_for, new_key, read_chain
from fazt.settings import CA_SETTINGS
from fazt.store import Database
from fazt.store import certs as store
from fazt.store.sites import list_sites

WATCH = 2.0  # seconds between looks at the database for new hosts and certificates
BACKOFF_FIRST = 60.0  # seconds after a first failure; doubles with each failure in a row
BACKOFF_MAX = 24 * 3600.0
log = logging.getLogger("fazt.autocert")


class CertificateSink(Protocol):
    """Where certificates go to be served (the TLS port's `Certificates`)."""

    def install(self, host: str, chain_pem: bytes, key_pem: bytes) -> None: ...

    def remove(self, host: str) -> None: ...


def served_hosts(domain: str, sites: list[str], domains: dict[str, str]) -> set[str]:
    """The names fazt answers for: the only names it may order certificates for."""
    if domain == "localhost" or domain.replace(".", "").isdigit():
        names = set()  # no CA signs these
    else:
        names = {domain, f"admin.{domain}"}
        names |= {domain if s == "root" else f"{s}.{domain}" for s in sites}
    names |= {host for host, site in domains.items() if site in sites}
    return names


def _ca(config: dict) -> tuple:
    """The settings the ACME client is made from (acme_directory, acme_email,
    acme_ca_bundle): a change of any ends the recorded failures (instance._new_ca)."""
    return tuple(config.get(k, "") for k in CA_SETTINGS)


def backoff(failures: int) -> float:
    return min(BACKOFF_FIRST * 2 ** max(failures - 1, 0), BACKOFF_MAX)


class AutoCert:
    """Keeps the certificates in `sink` current with the database and the CA."""

    def __init__(self, db: Database, sink: CertificateSink, settings: Callable[[], dict]):
        self.db = db
        self.sink = sink
        self.settings = settings  # the live config: https, acme_*, domain
        self.challenges: dict[str, str] = {}  # token -> key authorization, for HTTP-01
        self.served: dict[str, tuple[CertInfo, str]] = {}  # host -> (info, source)
        self.ordering: str | None = None
        self.listing: list[dict] = []  # what `fazt cert list` shows, kept for the status page
        self._stamp = None
        self.started = time.time()  # failures recorded before it get one early retry
        self._acme: Acme | None = None
        self._acme_for: tuple | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loading = threading.Lock()

    # -- what the rest of fazt calls ------------------------------------------------

    def load(self) -> None:
        """Serve every stored certificate (at boot, before the port opens; then on change,
        from this keeper's thread or from the thread that reads what another process
        committed: one at a time, so neither removes what the other just installed)."""
        with self._loading:
            self._load()

    def _load(self) -> None:
        with self.db.read() as conn:
            stamp = store.certificates_stamp(conn)
            stored = store.load_certificates(conn)
            sources = {c["host"]: c["source"] for c in store.list_certificates(conn)}
        self._stamp = stamp
        seen = set()
        for cert in stored:
            seen.add(cert.host)
            try:
                info = read_chain(cert.chain_pem)
                old = self.served.get(cert.host)
                if old and old[0].serial == info.serial:
                    continue
                self.sink.install(cert.host, cert.chain_pem, cert.key_pem)
            except Exception as exc:  # a bad row must not keep the others from serving
                # (nor the server from starting, nor later changes from being loaded)
                log.warning("cannot serve the certificate of %s: %s", cert.host, exc)
                continue
            self.served[cert.host] = (info, sources.get(cert.host) or "acme")
        for host in set(self.served) - seen:
            self.sink.remove(host)
            del self.served[host]

    def serves(self, host: str) -> bool:
        """Whether the TLS port shows `host` a certificate that is valid now.

        The plain port redirects only such a host: an expired certificate (an import
        left to lapse, an ACME renewal that keeps failing) would only make the browser
        refuse the page, so that host is served plainly, as one that has none yet.
        The certificate judged is the one the TLS port picks (certs.choose, as
        tls.Certificates.context_for does): the host's own if valid, else a valid
        wildcard's one level up, else whichever exists.
        """
        now = time.time()

        def valid(served: tuple[CertInfo, str]) -> bool:
            return served[0].valid_at(now)

        served = choose(host.lower().rstrip("."), self.served, valid)
        return served is not None and valid(served)

    def challenge(self, token: str) -> str | None:
        """The key authorization for an HTTP-01 token, while its order runs."""
        return self.challenges.get(token)

    def summary(self) -> dict:
        """For the status API, from RAM: the cockpit never waits on the database for it."""
        return {"ordering": self.ordering, "certificates": self.listing}

    def poke(self) -> None:
        """Look again now (a deploy or a new domain may want a certificate)."""
        self._wake.set()

    def start(self) -> "AutoCert":
        self._thread = threading.Thread(target=self._run, name="fazt-autocert", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the background thread --------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                delay = self.run_once(time.time())
            except FaztError as exc:  # the database is busy: look again soon
                log.warning("certificates: %s", exc.message)
                delay = WATCH
            except Exception:  # a background duty must never end
                log.exception("certificates: unexpected failure")
                delay = WATCH
            self._wake.wait(min(delay, WATCH))
            self._wake.clear()

    def run_once(self, now: float) -> float:
        """Load what changed, order at most one certificate; seconds until work is due."""
        with self.db.read() as conn:
            stamp = store.certificates_stamp(conn)
            self.listing = store.list_certificates(conn)
        if stamp != self._stamp:
            self.load()
        config = self.settings()
        if config.get("https") != "on":
            return WATCH
        with self.db.read() as conn:
            wanted = self._wanted(conn, config)
            failures = store.order_failures(conn)
        due = []
        for host in sorted(wanted):
            when = self._due_at(host)
            if host in failures:
                when = max(when, self._retry_at(*failures[host][1:]))
            if when <= now:
                due.append(host)
        if due:
            self._order(due[0], config)
            return 0  # the next due host, straight away
        return WATCH

    def _retry_at(self, next_attempt: float, last_attempt: float) -> float:
        """When a failing host is tried again: after its backoff, except that a failure
        from before this server started is retried once at start (a restart is the
        owner's "try again now": DNS fixed, a port opened), though never sooner than
        BACKOFF_FIRST after its last attempt, so a server restarted in a loop cannot
        hammer the CA. The count of failures is kept: if the retry fails too, the backoff
        goes on doubling from where it was."""
        if last_attempt < self.started:
            return min(next_attempt, last_attempt + BACKOFF_FIRST)
        return next_attempt

    @staticmethod
    def _wanted(conn, config: dict) -> set[str]:
        sites = [s["name"] for s in list_sites(conn)]
        return served_hosts(config.get("domain", "localhost"), sites, store.load_domains(conn))

    def _due_at(self, host: str) -> float:
        """When `host` needs a new certificate: at once when none covers it."""
        exact = self.served.get(host)
        if exact:
            info, source = exact
            # An imported certificate is the owner's to renew; ACME steps in once it expires.
            return info.not_after if source == "import" else info.renew_at()
        if "." in host:
            wildcard = self.served.get("*." + host.split(".", 1)[1])
            if wildcard:
                return wildcard[0].not_after
        return 0.0

    def _order(self, host: str, config: dict) -> None:
        self.ordering = host
        try:
            key_pem = new_key()
            chain = self._issue(host, key_pem, config)
            info = read_chain(chain)
            with self.db.write() as conn:
                # Its site or domain may have been removed while the order ran (a few
                # seconds): a certificate stored now would be served for a name fazt no
                # longer answers, and nothing would remove it.
                if host not in self._wanted(conn, config):
                    log.warning("certificate for %s dropped: the host was removed", host)
                    return
                self.sink.install(host, chain, key_pem)  # refuses a chain that does not fit
                store.save_certificate(conn, host, chain, key_pem, issuer=info.issuer,
                                       not_before=info.not_before, not_after=info.not_after,
                                       source="acme")
                self._stamp = store.certificates_stamp(conn)
            self.served[host] = (info, "acme")
            log.warning("certificate for %s obtained from %s (valid until %s)", host,
                        info.issuer, time.strftime("%Y-%m-%d %H:%M", time.gmtime(info.not_after)))
        except Exception as exc:
            message = exc.message if isinstance(exc, FaztError) else f"{type(exc).__name__}: {exc}"
            if _ca(self.settings()) != _ca(config):
                # The owner changed the CA settings while this order ran against the old
                # ones (and the change cleared the failures): no backoff for the new ones.
                log.warning("certificate for %s failed under the old CA settings: %s",
                            host, message)
                return
            with self.db.write() as conn:
                if host not in self._wanted(conn, config):
                    return  # removed meanwhile: no failure to list for it
                failures = store.order_failures(conn).get(host, (0, 0))[0] + 1
                now = time.time()
                store.record_failure(conn, host, message, now + self._wait(host, failures, now))
            log.warning("certificate for %s failed (%d in a row): %s", host, failures, message)
        finally:
            self.ordering = None

    def _wait(self, host: str, failures: int, now: float) -> float:
        """Seconds until a failed order is tried again: the backoff, except that a renewal
        does not let it outgrow the certificate still served: it is tried again once a
        quarter of the time that certificate has left has passed (never sooner than
        BACKOFF_FIRST). With a few days' certificates a day's backoff let a CA outage of
        a day and a half end in hours of an expired certificate."""
        wait = backoff(failures)
        served = self.served.get(host)
        if served and served[1] == "acme" and served[0].not_after > now:
            wait = min(wait, max((served[0].not_after - now) / 4, BACKOFF_FIRST))
        return wait

    def _issue(self, host: str, key_pem: bytes, config: dict) -> bytes:
        csr = csr_for(key_pem, host)
        try:
            return self._client(config).issue(host, csr, self.challenges.__setitem__,
                                              self._withdraw)
        except AccountGone:  # the CA forgot the stored account: register anew, once
            with self.db.write() as conn:
                store.forget_account(conn, config["acme_directory"])
            self._acme = None
            return self._client(config).issue(host, csr, self.challenges.__setitem__,
                                              self._withdraw)

    def _withdraw(self, token: str) -> None:
        self.challenges.pop(token, None)

    def _client(self, config: dict) -> Acme:
        """One ACME session while the CA settings stay the same; the account is stored."""
        directory = config["acme_directory"]
        settings = _ca(config)
        if self._acme is None or self._acme_for != settings:
            with self.db.read() as conn:
                account = store.load_account(conn, directory)
            acme = Acme(directory, email=settings[1], ca_bundle=settings[2], account=account)
            acme.connect()
            if account is None:
                with self.db.write() as conn:
                    store.save_account(conn, directory, *acme.account)
            self._acme, self._acme_for = acme, settings
        return self._acme
