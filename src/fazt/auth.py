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
from collections import OrderedDict, deque
from dataclasses import dataclass, field

SESSION_SECONDS = 7 * 24 * 3600
DEVICE_SECONDS = 365 * 24 * 3600
DEVICE = "device:"  # what a device cookie signs before its nonce: never a session's body
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
    """Failed sign-ins, counted in RAM: at most `attempts` per address in `window`
    seconds, and at most `ceiling` from all addresses together.

    The per-address count alone let an attacker with many addresses (a /48 of IPv6
    holds 65,536 /64s) guess as fast as the CPU checks passwords, and grew its table
    without bound. The ceiling bounds the guesses; the owner still gets in past it
    from where the owner signed in before (an address or a browser's device cookie)
    and from the machine itself (loopback): such an attempt is `trusted`, held to the
    per-address count only. The table holds at most `max_addresses`, dropping the
    address whose last failure is oldest; since every untrusted failure counts
    against the ceiling, at most `ceiling` addresses have one inside the window, so
    with `max_addresses` well above it an address still locked out is never dropped
    (which would let it start over).
    """

    attempts: int = 5
    window: float = 60.0
    ceiling: int = 60
    max_addresses: int = 4096
    max_known: int = 32
    # address -> its failures in the window (at most `attempts`), last failure last
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    _recent: deque[float] = field(default_factory=deque)  # every failure, oldest first
    _known: OrderedDict[str, None] = field(default_factory=OrderedDict)  # owner's addresses
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, address: str, trusted: bool = False) -> int:
        """Seconds to wait before this address may try again; 0 when it may now."""
        with self._lock:
            return self._wait(address, trusted or address in self._known, time.monotonic())

    def begin(self, address: str, trusted: bool = False) -> tuple[int, float]:
        """Check and count one attempt at once, as a failure until `succeeded` says
        otherwise: a check takes ~50 ms, and parallel attempts checked first and
        counted after would all pass. Returns (seconds to wait, 0) when refused,
        else (0, a stamp for `succeeded`)."""
        now = time.monotonic()
        with self._lock:
            wait = self._wait(address, trusted or address in self._known, now)
            if wait:
                return wait, 0.0
            self._record(address, now)
            return 0, now

    def succeeded(self, address: str, stamp: float | None = None) -> None:
        """The owner signed in from `address`: forget its failures (and the attempt
        `begin` counted), and trust it past the ceiling from now on."""
        with self._lock:
            self._failures.pop(address, None)
            if stamp is not None and stamp in self._recent:
                self._recent.remove(stamp)
            self._known[address] = None
            self._known.move_to_end(address)
            if len(self._known) > self.max_known:
                self._known.popitem(last=False)

    def _wait(self, address: str, trusted: bool, now: float) -> int:
        self._expire(now)
        mine = self._failures.get(address)
        while mine and now - mine[0] >= self.window:
            mine.popleft()
        waits = []
        if mine and len(mine) >= self.attempts:
            waits.append(self.window - (now - mine[0]))
        if not trusted and len(self._recent) >= self.ceiling:
            waits.append(self.window - (now - self._recent[-self.ceiling]))
        return max(1, int(max(waits)) + 1) if waits else 0

    def _record(self, address: str, now: float) -> None:
        mine = self._failures.pop(address, None) or deque(maxlen=self.attempts)
        mine.append(now)
        self._failures[address] = mine  # last: the table is ordered by last failure
        self._recent.append(now)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def _expire(self, now: float) -> None:
        while self._recent and now - self._recent[0] >= self.window:
            self._recent.popleft()
        while self._failures:
            address, mine = next(iter(self._failures.items()))
            if now - mine[-1] < self.window:
                break
            del self._failures[address]


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

    def issue_device(self) -> str:
        """A browser's device cookie: proof that it signed in once, so that it is let
        in past the sign-in ceiling (see LoginLimiter). Ends with the session key."""
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._sign(DEVICE + nonce)}"

    def check_device(self, value: str | None) -> bool:
        nonce, _, signature = (value or "").partition(".")
        return bool(nonce) and hmac.compare_digest(
            signature.encode(), self._sign(DEVICE + nonce).encode())

    def check_token(self, token: str | None) -> bool:
        return bool(token) and token_hash(token) in self.token_hashes

    def _sign(self, body: str) -> str:
        mac = hmac.new(self.session_key.encode(), body.encode(), hashlib.sha256)
        return _b64(mac.digest())
