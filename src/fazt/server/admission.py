"""Who gets in: connection limits, each address's share, the cockpit's reserve, bodies.

The rules, in the order a connection meets them:

1. Accepting. Past `connection_limit` open connections (or fewer, when the process's
   file descriptors allow fewer: descriptors.py; a TLS connection counts
   as two, its memory being twice an idle plain one's: tls.py), room is made by
   closing a connection *between requests*, never one whose request has
   arrived and never one that has spoken to the cockpit: first one that has
   not completed a request yet (silent, still sending its headers, or a sign-in
   still sending its few bytes of body: sign-ins are exempt from 3) for
   MIN_QUIET seconds, else a keep-alive idle for IDLE_EVICT seconds. A client
   in use sends its next request well within IDLE_EVICT; closing its
   connection then would race that request into a reset (HTTP allows the
   close, but the request is lost). The close itself is graceful (see
   `Connection.evict`): a request still being sent gets a 503, and no close
   ever leaves unread input for the kernel to answer with a reset. When
   nothing can be closed, up to COCKPIT_RESERVE more are still accepted; when
   their request arrives, only the cockpit is served (or room made by the same
   rules), the rest get 503 with Retry-After and their place is free again at
   once. Past that, new connections wait in the kernel's backlog (BACKLOG in
   boot.py) until one closes or turns closable: none is reset to make room.
2. Each address's share. One address may hold `address_connections` open; its
   own closable connection (by the rules of 1) makes room for its next one, and
   when it has none to give, the newcomer's request (unless it is for the
   cockpit) gets 429.
   Requests per second per address (`address_requests_per_s`, a token bucket
   with two seconds of burst) past the rate get 429 with Retry-After.
   Behind a trusted proxy (the `trusted_proxies` setting) every visitor shares
   the proxy's socket address, so once a request's headers are read its
   limits (requests per second, bodies in flight) count the client the proxy
   names in X-Forwarded-For (`proxies.client_address`), as the sign-in limiter
   and the log do. Connections are counted per socket peer, since they are
   accepted before any header is read; a trusted proxy's are not capped by
   `address_connections` (it carries everyone), only by the server's limit.
   An "address" here is `proxies.address_key`: an IPv6 client is counted by its /64
   (one home connection holds 2^64 addresses; counted apart, each would bring a fresh
   share), an IPv4 one on a dual-stack listener as IPv4. A trusted proxy's own
   connections are counted under its full address, so that its neighbours in its /64
   do not inherit the crowd it carries.
3. Bodies. A body is read only where the route takes one and only up to the
   route's limit (BodyRule); anything else is answered 405/411/413 before a
   byte of it is read, and the connection is then closed rather than drained.
   Bodies being read count against the address's share and a global count, and
   must arrive at BODY_MIN_RATE (else 408; see the connection).
4. The user lane's queue: past USER_QUEUE_LIMIT waiting requests, 503.

The cockpit (`admin.D`) is served from the reserve in 1: the owner always gets in.
A connection whose request proves the owner (a valid session cookie or API token,
checked in RAM) is the cockpit's from then on: exempt from 2 and 4, never closed to
make room. Any other cockpit request (the dashboard's page) is served, but under 2
like anyone's (the sign-in apart: its own limiter locks out an address that guesses),
and on a reserve connection that connection closes once answered: speaking to the
cockpit, or saying `Host: admin.D`, earns nothing. Every cockpit request runs on the
cockpit's lane, and no site request does, whatever its connection said before.
"""

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fazt import proxies
from fazt.constants import MB
from fazt.hosts import ADMIN, SITE, Target
from fazt.server.timeouts import CLIENT_TIMEOUT

MIN_QUIET = 0.25  # seconds a connection that has not completed a request must be silent
IDLE_EVICT = 2.0  # seconds a keep-alive must be idle before it may be closed to make room
COCKPIT_RESERVE = 64  # connections accepted past the limit, served only for the cockpit
USER_QUEUE_LIMIT = 256  # site requests waiting for a thread before new ones get 503
BODY_MIN_RATE = 1024  # bytes a second a body must average, after BODY_GRACE seconds
BODY_GRACE = CLIENT_TIMEOUT
BODIES_MIN = 8  # bodies read at once however low connection_limit is (capacity.js charges them)
BODIES_SHARE = 8  # one connection in this many may send a body at once (bodies_limit)
LINGERING_SHARE = 8  # and one in this many may linger half-closed (lingering_limit)
LOGIN_BODY = 8 * 1024  # a sign-in is a few hundred bytes
JSON_BODY = 64 * 1024  # the admin API's JSON bodies (cockpit/resources.py's JSON_LIMIT)


@dataclass(frozen=True)
class Refusal:
    """An answer given from the loop instead of the request's own."""

    status: int
    code: str
    message: str
    retry_after: int | None = None
    close: bool = False  # the connection itself is the excess: close it after the answer
    allow: str | None = None  # a 405's Allow header: the methods the resource answers


@dataclass(frozen=True)
class BodyRule:
    """What a route does with a body: its limit in bytes, whether it needs a length."""

    limit: int
    needs_length: bool = False
    refusal: Refusal | None = None  # answered before the body, whatever it is
    exempt: bool = False  # a sign-in's few bytes: not held to the shares of bodies in flight


NO_BODY = BodyRule(0)
LOGIN_RULE = BodyRule(LOGIN_BODY, exempt=True)  # the owner's way in, from any address
STATIC_METHODS = ("GET", "HEAD")
# A cockpit API call that changes something, from a connection that proved nobody: the
# Authentication middleware's answer, before any body (a 30 MB deploy was read, then 401).
UNPROVEN = BodyRule(0, refusal=Refusal(401, "unauthorized", "Sign in first: no valid "
                                       "session or API token."))


class Address:
    """What one client address holds: connections, bodies in flight, its request bucket."""

    __slots__ = ("open", "connections", "bodies", "tokens", "stamp", "closable")

    def __init__(self, burst: float):
        self.open = 0  # all its connections, the cockpit's included
        self.connections = 0  # those counted against its share
        self.bodies = 0
        self.tokens = burst
        self.stamp = time.monotonic()
        self.closable = Closable()  # its connections that may be closed


class Closable:
    """Connections that may be closed to make room, least recently active first, in two
    orders: those that have not completed a request on this connection (closable after
    MIN_QUIET), and keep-alives between requests (closable only after IDLE_EVICT)."""

    __slots__ = ("fresh", "idle")

    def __init__(self) -> None:
        self.fresh: OrderedDict = OrderedDict()
        self.idle: OrderedDict = OrderedDict()

    def add(self, conn, idle: bool) -> None:
        self.discard(conn)
        (self.idle if idle else self.fresh)[conn] = None

    def discard(self, conn) -> None:
        self.fresh.pop(conn, None)
        self.idle.pop(conn, None)

    def __contains__(self, conn) -> bool:
        return conn in self.fresh or conn in self.idle

    def victim(self, now: float):
        """The connection to close now, or None: each order's head is its quietest."""
        for conn in self.fresh:
            if now - conn.since >= MIN_QUIET:
                return conn
            break
        for conn in self.idle:
            if now - conn.since >= IDLE_EVICT:
                return conn
            break
        return None


class Admission:
    def __init__(self, classify: Callable[[str | None], Target], connection_limit: int,
                 address_connections: int, address_rps: float, max_upload_bytes: int,
                 js_body_bytes: int):
        self.classify = classify  # Host -> cockpit, site or unknown (custom domains too)
        # Host -> whether its plain-port requests go to HTTPS (set at boot when HTTPS is on)
        self.redirected: Callable[[str | None], bool] = lambda host: False
        # The `trusted_proxies` setting, parsed (set at boot; read for every request)
        self.trusted: Callable[[], tuple[proxies.Network, ...]] = tuple
        # (Cookie, Authorization) -> whether they prove the owner: a valid session or API
        # token, checked in RAM (set at boot). Only such a connection is the cockpit's.
        self.owner: Callable[[str | None, str | None], bool] = lambda cookie, auth: False
        self.open = 0
        self.charged = 0  # open connections weighed by their memory (TLS counts double)
        self.bodies = 0
        self.paused = 0  # times the listeners stopped accepting: full, nothing to close
        self.evicted = 0
        self.addresses: dict[str, Address] = {}
        self.closable = Closable()
        self.resize(connection_limit, address_connections, address_rps, max_upload_bytes,
                    js_body_bytes)

    def resize(self, connection_limit: int, address_connections: int, address_rps: float,
               max_upload_bytes: int, js_body_bytes: int) -> None:
        """Recalibration: new limits apply to the next connection and the next request."""
        self.connection_limit = connection_limit
        self.address_connections = address_connections
        self.address_rps = address_rps
        self.max_upload_bytes = max_upload_bytes
        self.js_body_bytes = js_body_bytes
        self.js_rule = BodyRule(js_body_bytes)  # every back-end request asks: made once

    @property
    def bodies_limit(self) -> int:
        return max(BODIES_MIN, self.connection_limit // BODIES_SHARE)

    @property
    def lingering_limit(self) -> int:
        """Half-closed connections kept reading at once (HTTPServer.linger)."""
        return max(BODIES_MIN, self.connection_limit // LINGERING_SHARE)

    @property
    def address_bodies_limit(self) -> int:
        return max(4, self.address_connections // 8)

    # -- connections ------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether the next connection can be taken: below the limit and its reserve, or
        with a connection quiet long enough to close. When not, the listener leaves new
        connections waiting in the kernel's backlog (nothing is reset) until one closes."""
        if self.charged < self.connection_limit + COCKPIT_RESERVE:
            return True
        return self.closable.victim(time.monotonic()) is not None

    def arrived(self, conn) -> None:
        """A new connection (the listener checked `has_room`): make room for it."""
        proxy = self._is_proxy(conn.ip)
        conn.key = conn.ip if proxy else proxies.address_key(conn.ip)
        address = self.addresses.get(conn.key)
        if address is None:
            address = self.addresses[conn.key] = Address(self.address_rps * 2)
        conn.counted = True
        address.open += 1
        address.connections += 1
        self.open += 1
        self.charged += conn.transport.weight
        if address.connections > self.address_connections and not self._close(
                address.closable) and not proxy:
            conn.over_share = True
        while self.charged > self.connection_limit:
            if self._close(self.closable):
                continue
            # Full of recently active connections: the newcomer takes a reserve place, where
            # only the cockpit is served and a site request gets an explicit 503.
            conn.reserve = True
            break
        self.quiet_again(conn)

    def _is_proxy(self, ip: str) -> bool:
        trusted = self.trusted()
        return bool(trusted) and proxies.is_trusted(ip, trusted)

    def _client(self, conn, forwarded_for: str | None) -> Address:
        """The record of the request's client: the peer's, or that of whom a trusted proxy
        names (by their keys: `proxies.address_key`)."""
        client = conn.key
        if forwarded_for:
            trusted = self.trusted()
            if trusted:
                named = proxies.client_address(conn.ip, forwarded_for, trusted)
                if named != conn.ip:
                    client = proxies.address_key(named)
        conn.client = client
        address = self.addresses.get(client)
        if address is None:
            address = self.addresses[client] = Address(self.address_rps * 2)
        return address

    def _share(self, conn, forwarded_for: str | None) -> Refusal | None:
        """The address's share: its connections, then its requests per second."""
        if conn.over_share:
            return Refusal(429, "too_many_connections",
                           "This address has too many connections open; close some and "
                           "try again.", 2, close=True)
        return self._rate(self._client(conn, forwarded_for))

    def _rate(self, address: "Address") -> Refusal | None:
        """The address's requests per second (a token bucket, two seconds of burst)."""
        now = time.monotonic()
        rate = self.address_rps
        address.tokens = min(rate * 2, address.tokens + (now - address.stamp) * rate)
        address.stamp = now
        if address.tokens < 1:
            wait = max(1, math.ceil((1 - address.tokens) / rate))
            return Refusal(429, "too_many_requests",
                           "This address sends requests faster than its share; slow down.", wait)
        address.tokens -= 1
        return None

    def trim(self) -> None:
        """Back under the limit once the newcomers that went past it are quiet enough (the
        server's sweep, every second): the reserve is for moments, not for good."""
        while self.charged > self.connection_limit and self._close(self.closable):
            pass

    def _close(self, closable: Closable) -> bool:
        """Close one connection of `closable` to make room, if one may be closed (a keep-alive
        used a moment ago may have its next request on the way: the newcomer gets an
        explicit answer instead)."""
        victim = closable.victim(time.monotonic())
        if victim is None:
            return False
        self.evicted += 1
        victim.evict()  # calls left() first: the room is free at once
        return True

    def quiet_again(self, conn) -> None:
        """The connection is between requests (or still sending headers): it may be closed."""
        if conn.admin or not conn.counted:
            return
        idle = conn.between_requests
        self.closable.add(conn, idle)
        self.addresses[conn.key].closable.add(conn, idle)

    def is_closable(self, conn) -> bool:
        return conn in self.closable

    def busy(self, conn) -> None:
        """Its request has arrived: from now until the answer is sent it is never closed."""
        self.closable.discard(conn)
        address = self.addresses.get(conn.key)
        if address is not None:
            address.closable.discard(conn)

    def left(self, conn) -> None:
        """The connection no longer counts: closed, or being closed to make room."""
        if not conn.counted:
            return
        conn.counted = False
        self.busy(conn)
        self.open -= 1
        self.charged -= conn.transport.weight
        address = self.addresses.get(conn.key)
        if address is not None:
            address.open -= 1
            if not conn.admin:
                address.connections -= 1
        if conn.in_body:
            self.body_ended(conn)

    def forget_idle_addresses(self) -> None:
        """Drop the records of addresses with nothing open and a full bucket (bounded RAM)."""
        now = time.monotonic()
        full = self.address_rps * 2
        for key in [key for key, a in self.addresses.items()
                    if a.open <= 0 and a.bodies <= 0
                    and a.tokens + (now - a.stamp) * self.address_rps >= full]:
            del self.addresses[key]

    # -- requests -----------------------------------------------------------------

    def admit(self, conn, method: str, path: str, host: str | None, queue_depth: int,
              forwarded_for: str | None = None, cookie: str | None = None,
              authorization: str | None = None) -> Refusal | BodyRule:
        """A request's headers are in: refuse it, or say how much body it may send."""
        target = self.classify(host)
        conn.target = target
        conn.client = conn.key
        if target.kind == ADMIN:
            if not conn.admin and self.owner(cookie, authorization):
                # The owner, proven: from now on outside the address's share, never closable.
                conn.admin = True
                self.addresses[conn.key].connections -= 1
            if conn.admin:
                return self._body_rule(target.kind, method, path)
            # Not proven (yet): a sign-in, the dashboard's page. Served from the reserve
            # too (how the owner gets in when the server is full), but as anyone's request
            # (the address's share and rate), and a reserve connection closes once answered,
            # so that nobody holds the reserve by speaking to the cockpit.
            # The sign-in itself is exempt (its own limiter locks out an address guessing
            # passwords), so the owner gets in from an address a crowd shares.
            conn.close_when_answered = conn.reserve
            if path == "/api/login":
                return self._body_rule(target.kind, method, path)
            refusal = self._share(conn, forwarded_for)
            if refusal is not None:
                return refusal
            if method not in STATIC_METHODS and path.startswith("/api/"):
                return UNPROVEN  # the API's own answer, without reading a body for it
            return self._body_rule(target.kind, method, path)
        if conn.reserve and (self.charged <= self.connection_limit
                             or self._close(self.closable)):
            # Room was made since it arrived, or is made now by the rules of accepting.
            conn.reserve = False
        if conn.reserve:
            return Refusal(503, "over_capacity",
                           "The server is at its connection limit; try again shortly.", 2,
                           close=True)
        refusal = self._share(conn, forwarded_for)
        if refusal is not None:
            return refusal
        if queue_depth >= USER_QUEUE_LIMIT:
            return Refusal(503, "overloaded",
                           "The server is busy with other requests; try again shortly.", 1)
        rule = self._body_rule(target.kind, method, path)
        if rule.refusal is not None and self.redirected(host) and conn.listener.scheme == "http":
            return BodyRule(JSON_BODY)  # the thread answers 308 to HTTPS, whatever the method
        return rule

    def _body_rule(self, kind: str, method: str, path: str) -> BodyRule:
        if kind == ADMIN:
            if path == "/api/deploy":
                return BodyRule(self.max_upload_bytes, needs_length=method == "POST")
            if path == "/api/login":
                return LOGIN_RULE
            if path.startswith("/api/"):
                return BodyRule(JSON_BODY)
            return NO_BODY
        if kind == SITE:
            if path == "/api" or path.startswith("/api/"):
                return self.js_rule
            if method not in STATIC_METHODS:
                return BodyRule(0, refusal=Refusal(
                    405, "method_not_allowed", "Static files answer GET and HEAD only.",
                    allow=", ".join(STATIC_METHODS)))
        return NO_BODY

    def check_body(self, conn, rule: BodyRule, content_length: int, chunked: bool,
                   length_given: bool) -> Refusal | None:
        """Before the first byte of a body: may it be read? `length_given`: whether the
        request has a Content-Length header."""
        if rule.refusal is not None:
            return rule.refusal
        if (content_length or chunked) and conn.target.kind not in (ADMIN, SITE):
            # say what is wrong (a deploy sent to a bare IP, say), not "over 0 bytes"
            return Refusal(404, "unknown_host", "This host is not served here.", close=True)
        if content_length > rule.limit:
            return Refusal(413, "too_large",
                           f"The request body is larger than this URL takes: at most "
                           f"{_size(rule.limit)}.")
        # An explicit "Content-Length: 0" is a length: the route says what is wrong with
        # an empty body (a deploy of nothing is a 400), not "send a Content-Length".
        if rule.needs_length and not length_given and not chunked:
            return Refusal(411, "length_required", "Send the body with a Content-Length.")
        if not content_length and not chunked:
            return None
        if chunked and not rule.limit:
            return Refusal(413, "too_large", "This address takes no request body.")
        address = self.addresses[conn.client]
        if not (conn.admin or rule.exempt):
            if address.bodies >= self.address_bodies_limit:
                return Refusal(429, "too_many_uploads",
                               "This address is already sending as many bodies as it may; "
                               "try again when one is done.", 5)
            if self.bodies >= self.bodies_limit:
                return Refusal(503, "too_many_uploads",
                               "The server is receiving as many bodies as it can; "
                               "try again shortly.", 5)
        self.bodies += 1
        address.bodies += 1
        conn.in_body = True
        return None

    def body_ended(self, conn) -> None:
        if conn.in_body:
            conn.in_body = False
            self.bodies -= 1
            address = self.addresses.get(conn.client)
            if address is not None:
                address.bodies -= 1

    def stats(self) -> dict:
        return {"open": self.open, "charged": self.charged, "limit": self.connection_limit,
                "reserve": COCKPIT_RESERVE, "bodies": self.bodies,
                "addresses": len(self.addresses), "evicted": self.evicted,
                "paused": self.paused}


def _size(limit: int) -> str:
    return f"{limit // MB} MB" if limit >= MB else f"{max(1, limit // 1024)} KB" if limit else \
        "0 bytes (it takes no body)"
