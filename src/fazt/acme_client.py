"""One ACME conversation (RFC 8555) through the `acme` library, the one certbot runs on.

fazt does not speak the protocol itself: this module only drives the library
through account -> order -> HTTP-01 challenge -> finalize, retries the
`badNonce` rejections that a CA may send at any time (the library retries only
once; pebble rejects 5% of nonces on purpose and Let's Encrypt sends them too),
and turns every failure into one sentence for `fazt cert list`.
"""

import contextlib
import datetime
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable

import josepy as jose
import requests
from acme import challenges, client, errors, messages
from cryptography.hazmat.primitives import serialization
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from fazt import __version__
from fazt.errors import FaztError
from fazt.pem import new_key

BAD_NONCE_RETRIES = 8
TIMEOUT = 30  # seconds the CA may keep silent: to connect, or between two reads
REQUEST_DEADLINE = 60  # seconds for one whole HTTP request to the CA, its answer included
ORDER_DEADLINE = 120  # seconds for validation and issuance
POLL_FIRST = 0.1  # seconds before the first look at a pending validation; doubles to POLL_MAX
POLL_MAX = 1.0


class AcmeError(FaztError):
    """The CA could not be reached, refused, or could not validate the host."""


class AccountGone(AcmeError):
    """The CA no longer knows the stored account (a test CA restarted): register again."""


class _Network(client.ClientNetwork):
    def post(self, *args, **kwargs) -> requests.Response:
        for _ in range(BAD_NONCE_RETRIES):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce":
                    raise
        return self._post_once(*args, **kwargs)

    def _send_request(self, method: str, url: str, *args, **kwargs) -> requests.Response:
        """Every HTTP request to the CA (the library's one door), within REQUEST_DEADLINE."""
        with _Deadline(REQUEST_DEADLINE) as deadline:
            try:
                response = super()._send_request(method, url, *args, **kwargs)
            except Exception:
                if not deadline.cut:
                    raise
        if deadline.cut:  # whatever the cut socket made of it: an error, or a short answer
            raise requests.Timeout("timed out")  # said as a connect timeout is
        return response


class _Deadline:
    """One HTTP request to the CA, cut once it has taken `seconds` in all.

    The library's timeout (TIMEOUT) counts each wait for the next bytes, so a CA
    that trickles them (a stalled proxy, an overloaded server) held the certificate
    thread for as long as it liked, and every other host's order, an import or a
    new domain waited behind it. A timer shuts the request's sockets down instead:
    the blocked read returns, and the order fails with its usual backoff. The
    sockets are duplicates taken on this thread while the request runs (see
    _Watched), so the timer never touches a descriptor that was closed and reused.
    """

    _current = threading.local()  # the deadline of the request this thread is making

    def __init__(self, seconds: float):
        self.cut = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()  # no cut once the request is over
        self._over = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True  # a stop of the server never waits for it

    @classmethod
    def watch(cls, sock: socket.socket | None) -> None:
        """Called on the requesting thread with each socket the request uses."""
        deadline = getattr(cls._current, "deadline", None)
        if deadline is None or sock is None:
            return
        with deadline._lock:
            if not deadline._over:
                deadline._sockets.append(socket.fromfd(sock.fileno(), sock.family, sock.type))

    def _cut(self) -> None:
        with self._lock:
            if self._over:
                return
            self.cut = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> "_Deadline":
        self._current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._current.deadline = None
        self._timer.cancel()
        with self._lock:
            self._over = True
            for sock in self._sockets:
                sock.close()


class _QuietCut(logging.Filter):
    """Drops urllib3's "Failed to parse headers" warning (with its traceback) when the
    request's deadline cut the answer halfway through its headers: the cut is already
    the order's one sentence ("... timed out."). Any other case of it is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        deadline = getattr(_Deadline._current, "deadline", None)  # the logging thread's
        return not (deadline is not None and deadline.cut
                    and str(record.msg).startswith("Failed to parse headers"))


# urllib3 2.x logs it from urllib3.connection, 1.x from urllib3.connectionpool.
for _name in ("urllib3.connection", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(_QuietCut())


class _Watched:
    """urllib3's connections to the CA, showing their sockets to the request's deadline:
    a new one from its TCP connection on (a CA may trickle its TLS handshake too), a
    kept-alive one at each request made on it. (`_new_conn` is urllib3's own, in 1.x
    and 2.x alike; tests/test_acme_client.py fails if it stops being called.)"""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _Deadline.watch(sock)
        return sock

    def request(self, *args, **kwargs) -> None:
        _Deadline.watch(self.sock)  # None on a new connection: _new_conn shows it
        return super().request(*args, **kwargs)


class _WatchedHTTP(_Watched, HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTP


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPS


class _Adapter(HTTPAdapter):
    """requests' adapter for the CA: watched connections (see _Deadline), and a PEM
    bundle trusted besides the system store (requests' `verify=` would replace it)."""

    def __init__(self, bundle: str = ""):
        self.context = ssl.create_default_context(cafile=bundle) if bundle else None
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        if self.context is not None:
            kwargs["ssl_context"] = self.context
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


Publish = Callable[[str, str], None]  # (token, key authorization) served under /.well-known


class Acme:
    """A session with one CA for one account."""

    def __init__(self, directory: str, *, email: str = "", ca_bundle: str = "",
                 account: tuple[bytes, str] | None = None):
        """`account` is (key PEM, account URI) from an earlier registration, else a new
        account is made on `connect()` (read `account` afterwards to store it)."""
        self.directory_url = directory
        self.email = email
        self.account = account
        key_pem = account[0] if account else new_key()
        self._key_pem = key_pem
        key = jose.JWKEC(key=serialization.load_pem_private_key(key_pem, password=None))
        self.net = _Network(key, alg=jose.ES256, user_agent=f"fazt/{__version__}",
                            timeout=TIMEOUT)
        try:
            adapter = _Adapter(ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise AcmeError(f"Cannot read acme_ca_bundle {ca_bundle}: {exc}.") from None
        self.net.session.mount("https://", adapter)
        self.net.session.mount("http://", adapter)
        self.client: client.ClientV2 | None = None

    def connect(self) -> None:
        """Read the directory and register (or find) the account."""
        with _explained(f"the ACME server at {self.directory_url}"):
            directory = client.ClientV2.get_directory(self.directory_url, self.net)
            self.client = client.ClientV2(directory, self.net)
            if self.account:
                self.net.account = messages.RegistrationResource(
                    uri=self.account[1], body=messages.Registration())
                return
            contact = {"email": self.email} if self.email else {}
            registration = messages.NewRegistration.from_data(
                terms_of_service_agreed=True, **contact)
            try:
                regr = self.client.new_account(registration)
                uri = regr.uri
            except errors.ConflictError as exc:  # this key has an account already
                uri = exc.location
                self.net.account = messages.RegistrationResource(
                    uri=uri, body=messages.Registration())
            self.account = (self._key_pem, uri)

    def issue(self, host: str, csr_pem: bytes, publish: Publish,
              withdraw: Callable[[str], None]) -> bytes:
        """Order a certificate for `host`, answering HTTP-01; returns the full chain PEM."""
        if self.client is None:
            self.connect()
        tokens = []
        try:
            with _explained(f"the ACME server at {self.directory_url}", host):
                order = self.client.new_order(csr_pem)
                for authz in order.authorizations:
                    if authz.body.status == messages.STATUS_VALID:
                        continue  # the CA remembers an earlier validation
                    challenge = next((c for c in authz.body.challenges
                                      if isinstance(c.chall, challenges.HTTP01)), None)
                    if challenge is None:
                        raise AcmeError(f"The CA offers no HTTP-01 challenge for {host}.")
                    response, validation = challenge.response_and_validation(self.net.key)
                    token = challenge.chall.encode("token")
                    tokens.append(token)
                    publish(token, validation)
                    self.client.answer_challenge(challenge, response)
                deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
                order = order.update(authorizations=self._validated(order, deadline))
                order = self.client.finalize_order(order, deadline)
                return order.fullchain_pem.encode()
        finally:
            for token in tokens:
                withdraw(token)

    def _validated(self, order: messages.OrderResource, deadline: datetime.datetime
                   ) -> list[messages.AuthorizationResource]:
        """The order's authorizations once none is pending. The library looks once a
        second from the start; a CA often validates within a fraction of one, so the
        first looks come sooner (after 0.1 s, 0.2 s, 0.4 s, ...), then once a second."""
        done = []
        for authz in order.authorizations:
            delay = POLL_FIRST
            while authz.body.status == messages.STATUS_PENDING:
                if datetime.datetime.now() > deadline:
                    raise errors.TimeoutError()
                time.sleep(delay)
                delay = min(delay * 2, POLL_MAX)
                authz, _ = self.client.poll(authz)
            done.append(authz)
        failed = [a for a in done if a.body.status != messages.STATUS_VALID]
        if failed:
            raise errors.ValidationError(failed)
        return done


class _explained:
    """Turns whatever the library or the network raises into one AcmeError sentence."""

    def __init__(self, what: str, host: str | None = None):
        self.what, self.host = what, host

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, FaztError):
            return False
        if isinstance(exc, requests.RequestException):
            raise AcmeError(f"Cannot reach {self.what}: {_network_reason(exc)}.") from None
        if isinstance(exc, errors.ValidationError):
            details = [str(c.error.detail) for a in exc.failed_authzrs
                       for c in a.body.challenges if c.error is not None]
            raise AcmeError(f"The CA could not validate {self.host}: "
                            f"{'; '.join(details) or 'no detail given'}.") from None
        if isinstance(exc, errors.TimeoutError):
            raise AcmeError(f"The order for {self.host} took too long.") from None
        if isinstance(exc, messages.Error):
            kind = AccountGone if exc.code == "accountDoesNotExist" else AcmeError
            raise kind(f"{self.what} refused: {exc.detail or exc.code}.") from None
        if isinstance(exc, (errors.Error, ValueError, KeyError, jose.DeserializationError)):
            raise AcmeError(f"{self.what} answered something unexpected: {_short(exc)}.") from None
        return False


def _network_reason(exc: requests.RequestException) -> str:
    """The cause a person can act on, out of urllib3's nested wrapping."""
    text = str(exc)
    for cause in ("certificate verify failed[^(]*", "Connection refused", "timed out",
                  "Name or service not known", "No route to host",
                  "Temporary failure in name resolution"):
        found = re.search(cause, text)
        if found:
            return found.group(0).strip().rstrip(":")
    return _short(exc)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
