"""RAM-resident authentication: checking a password or a session never reads the database.

The password hash and the session key are loaded at boot. A session is a
signed, expiring token: `<username>.<expires>.<hmac>`; rotating the key logs
out every session at once. Failed logins are counted per address in RAM.
"""

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

SESSION_SECONDS = 7 * 24 * 3600
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~16 MB and ~50 ms a check: slow for guessing


def hash_password(password: str) -> str:
    """A salted scrypt hash, as `scrypt$n$r$p$salt$hash` (base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${}${}".format(
        _b64(salt), _b64(digest), **_SCRYPT
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


def new_session_key() -> str:
    return secrets.token_hex(32)


def new_token() -> str:
    return "fazt_" + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class LoginLimiter:
    """At most `attempts` failures per address in `window` seconds."""

    attempts: int = 5
    window: float = 60.0
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, address: str) -> int:
        """Seconds to wait before this address may try again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(address, []) if now - t < self.window]
            self._failures[address] = recent
            if len(recent) < self.attempts:
                return 0
            return max(1, int(self.window - (now - recent[0])) + 1)

    def failed(self, address: str) -> None:
        with self._lock:
            self._failures.setdefault(address, []).append(time.monotonic())
            if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
                self._failures.pop(next(iter(self._failures)))

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


class Auth:
    """The owner's credentials and the session key, held in RAM."""

    def __init__(self, username: str, password_hash: str, session_key: str,
                 token_hashes: set[str] | None = None):
        self.username = username
        self.password_hash = password_hash
        self.session_key = session_key
        self.token_hashes = set(token_hashes or ())
        self.limiter = LoginLimiter()
        self._lock = threading.Lock()
        self._revoked: dict[str, int] = {}  # signed out sessions -> when they expire anyway

    def check_password(self, username: str, password: str) -> bool:
        # Always run the slow hash, so a wrong username costs as long as a wrong password.
        ok_password = verify_password(password, self.password_hash)
        ok_user = hmac.compare_digest(username.encode(), self.username.encode())
        return ok_password and ok_user

    def issue(self, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_SECONDS)
        body = f"{_b64(self.username.encode())}.{expires}"
        return f"{body}.{self._sign(body)}"

    def check_session(self, token: str | None, now: float | None = None) -> bool:
        if not token or token.count(".") != 2:
            return False
        body, _, signature = token.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return False
        if signature in self._revoked:
            return False
        user, _, expires = body.partition(".")
        try:
            return int(expires) > (now or time.time()) and _unb64(user) == self.username.encode()
        except ValueError:
            return False

    def revoke(self, token: str, now: float | None = None) -> None:
        """Log out one session: a copy of its cookie stops working too.

        Kept in RAM until the session would have expired anyway; a restart
        forgets it, which is why "log out everywhere" rotates the key instead.
        """
        if not self.check_session(token, now):
            return
        body, _, signature = token.rpartition(".")
        moment = now or time.time()
        with self._lock:
            self._revoked = {s: e for s, e in self._revoked.items() if e > moment}
            self._revoked[signature] = int(body.rpartition(".")[2])

    def rotate(self, new_key: str) -> None:
        """Log out everywhere: every session signed with the old key stops working."""
        with self._lock:
            self.session_key = new_key

    def check_token(self, token: str | None) -> bool:
        return bool(token) and token_hash(token) in self.token_hashes

    def _sign(self, body: str) -> str:
        mac = hmac.new(self.session_key.encode(), body.encode(), hashlib.sha256)
        return _b64(mac.digest())
