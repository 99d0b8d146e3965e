"""One ACME conversation (RFC 8555) through the `acme` library, the one certbot runs on.

fazt does not speak the protocol itself: this module only drives the library
through account -> order -> HTTP-01 challenge -> finalize, retries the
`badNonce` rejections that a CA may send at any time (the library retries only
once; pebble rejects 5% of nonces on purpose and Let's Encrypt sends them too),
and turns every failure into one sentence for `fazt cert list`.
"""

import datetime
import re
import ssl
import time
from collections.abc import Callable

import josepy as jose
import requests
from acme import challenges, client, errors, messages
from cryptography.hazmat.primitives import serialization
from requests.adapters import HTTPAdapter

from fazt import __version__
from fazt.errors import FaztError
from fazt.pem import new_key

BAD_NONCE_RETRIES = 8
TIMEOUT = 30  # seconds for one HTTP exchange with the CA
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


class _TrustAlso(HTTPAdapter):
    """Trusts a PEM bundle besides the system store (requests' `verify=` would replace it)."""

    def __init__(self, bundle: str):
        self.context = ssl.create_default_context(cafile=bundle)
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self.context
        return super().init_poolmanager(*args, **kwargs)


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
        if ca_bundle:
            try:
                adapter = _TrustAlso(ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise AcmeError(f"Cannot read acme_ca_bundle {ca_bundle}: {exc}.") from None
            self.net.session.mount("https://", adapter)
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
