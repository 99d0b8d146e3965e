"""RAM-resident authentication: checking a password or a session never reads the database.

The password hash and the session key are loaded at boot. A session is a
signed, expiring token: `<username>.<expires>.<nonce>.<hmac>`. The nonce is
128 random bits drawn at each sign-in, so no two sign-ins share a token (two
in the same second once did, and logging out one logged out both) and a
token cannot be guessed from the time. Logging out revokes that nonce only;
rotating the key logs out every session at once. Failed logins are counted
per address in RAM.
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
                 token_hashes: set[str] | None = None, revoked: dict[str, int] | None = None):
        self.username = username
        self.password_hash = password_hash
        self.session_key = session_key
        self.token_hashes = frozenset(token_hashes or ())  # replaced whole, never edited
        self.limiter = LoginLimiter()
        self._lock = threading.Lock()
        # Signed-out sessions' nonces -> when they expire anyway; loaded at boot.
        self._revoked: dict[str, int] = dict(revoked or {})

    def check_password(self, username: str, password: str) -> bool:
        # Always run the slow hash, so a wrong username costs as long as a wrong password.
        ok_password = verify_password(password, self.password_hash)
        # surrogatepass: JSON may carry a lone surrogate, which is a wrong name, not a crash.
        ok_user = hmac.compare_digest(username.encode("utf-8", "surrogatepass"),
                                      self.username.encode())
        return ok_password and ok_user

    def issue(self, now: float | None = None) -> str:
        """A new session: its own random nonce, never derived from the time."""
        expires = int((now or time.time()) + SESSION_SECONDS)
        body = f"{_b64(self.username.encode())}.{expires}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def check_session(self, token: str | None, now: float | None = None) -> bool:
        return self._nonce(token, now) is not None

    def _nonce(self, token: str | None, now: float | None) -> str | None:
        """The nonce of a valid, unrevoked session token; None for anything else."""
        if not token or token.count(".") != 3:
            return None
        body, _, signature = token.rpartition(".")
        # Bytes: compare_digest refuses str with non-ASCII characters (a forged cookie).
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        user, expires, nonce = body.split(".")
        if nonce in self._revoked:
            return None
        try:
            alive = int(expires) > (now or time.time())
            return nonce if alive and _unb64(user) == self.username.encode() else None
        except ValueError:
            return None

    def revoke(self, token: str, now: float | None = None) -> bool:
        """Log out one session (a copy of its cookie stops working too), no other.

        Returns whether a live session was revoked, so the caller can record
        it (see `revoked`) and a restart does not bring it back.
        """
        nonce = self._nonce(token, now)
        if nonce is None:
            return False
        moment = now or time.time()
        with self._lock:
            self._revoked = {n: e for n, e in self._revoked.items() if e > moment}
            self._revoked[nonce] = int(token.split(".")[1])
        return True

    def revoked(self) -> dict[str, int]:
        """Revoked nonces -> when their sessions expire anyway (kept until then)."""
        with self._lock:
            return dict(self._revoked)

    def rotate(self, new_key: str) -> None:
        """Log out everywhere: every session signed with the old key stops working."""
        with self._lock:
            self.session_key = new_key
            self._revoked = {}  # every one of them is dead with the old key

    def check_token(self, token: str | None) -> bool:
        return bool(token) and token_hash(token) in self.token_hashes

    def _sign(self, body: str) -> str:
        mac = hmac.new(self.session_key.encode(), body.encode(), hashlib.sha256)
        return _b64(mac.digest())
