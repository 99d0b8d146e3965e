"""The event loop: epoll through `selectors`, timers, and a doorbell for other threads.

One thread runs it and every socket belongs to it. Nothing here may block:
no database, no disk, no lock another thread holds for long. Work that can
wait goes to the lanes' threads, which hand results back through
`call_soon_threadsafe` (an eventfd rings the loop awake).

epoll, not poll(2): measured here on a poll loop, the CPU per new connection
grew from 0.64 ms with 500 connections held to 1.76 ms with 2,000, because
every turn walks every socket; epoll's cost follows the sockets that are ready.

Some events go first: the listening sockets and new connections until their
first request's headers are in (the owner's next request may be on a new
connection), the doorbell (answers the threads finished) and the connections
that have spoken to the cockpit. Under a flood one turn handles
every ready connection, which took 4 ms of CPU and, on CPUs shared with busy
JavaScript, about 12 ms of wall time (bench section 4): an event that became
ready meanwhile waited for the next turn, then for its place in it (epoll
reports in the order things became ready). So these are watched by an epoll
of their own (`urgent`), which the loop waits on and which also watches the
ordinary epoll's descriptor; a turn handles the urgent events first, then the
ordinary ones in chunks of URGENT_EVERY with a look at the urgent ones before
each: the owner waits for a few connections' work, not a turn's. Ordinary
events still get a share of every turn, however busy the urgent ones are.
(Plain epoll cannot order them: a descriptor that becomes ready joins the tail
of the ready list, and maxevents only cuts the list.)
"""

import errno
import heapq
import itertools
import logging
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable

from fazt.server.transport import TransportFactory

log = logging.getLogger("fazt")
# Connections accepted at one look at the listener: a listener is looked at between every
# URGENT_EVERY ordinary events, so newcomers drain the backlog quickly without taking
# whole turns from the connections already open.
ACCEPTS_AT_ONCE = 32
URGENT_EVERY = 8  # ordinary events handled between two looks at the urgent ones
RETRY_ACCEPT = 0.1  # seconds before a listener out of descriptors tries again


class Timer:
    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable, args: tuple):
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self, after_turn: Callable[[], None] | None = None,
                 on_wake: Callable[[], None] | None = None):
        self.selector = selectors.EpollSelector()  # the ordinary connections' events
        # Listeners, the doorbell, new connections and the cockpit's: looked at first, and
        # again between chunks of ordinary events (the module's docstring). The loop waits
        # on this one, which watches `selector`'s own descriptor too (as a handler of None):
        # a turn with only urgent events ready (a handshake flood: all new connections)
        # then costs one epoll_wait, not two.
        self.urgent = selectors.EpollSelector()
        self.urgent.register(self.selector.fileno(), selectors.EVENT_READ, None)
        self.after_turn = after_turn  # runs after every turn (the lanes' lock pause)
        self.on_wake = on_wake  # runs after the doorbell rang (stalled streams resume)
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._soon: deque = deque()
        self._bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._rung = False
        self.urgent.register(self._bell, selectors.EVENT_READ, self)
        self.stopping = False

    # -- from any thread ----------------------------------------------------

    def call_soon_threadsafe(self, callback: Callable, *args) -> None:
        self._soon.append((callback, args))
        self.wake()

    def wake(self) -> None:
        if not self._rung:  # one ring is enough until the loop has answered it
            self._rung = True
            try:
                os.eventfd_write(self._bell, 1)
            except OSError:  # closed at shutdown
                pass

    def stop(self) -> None:
        self.stopping = True
        self.wake()

    # -- on the loop's thread -------------------------------------------------

    def call_later(self, delay: float, callback: Callable, *args) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def handle_event(self, mask: int) -> None:
        """The doorbell rang: run what other threads asked for."""
        try:
            os.eventfd_read(self._bell)
        except BlockingIOError:
            pass
        self._rung = False
        soon = self._soon
        while soon:
            callback, args = soon.popleft()
            try:
                callback(*args)
            except Exception:
                log.exception("callback failed")
        if self.on_wake is not None:
            self.on_wake()

    def run_once(self, timeout: float = 1.0) -> None:
        timers = self._timers
        if timers:
            timeout = max(0.0, min(timeout, timers[0][0] - time.monotonic()))
        urgent = self.urgent
        events = urgent.select(timeout)
        self._handle(events)
        if any(key.data is None for key, _ in events):  # ordinary events are ready too
            ready = self.selector.select(0)
            for first in range(0, len(ready), URGENT_EVERY):
                if first:
                    self._handle(urgent.select(0))
                self._handle(ready[first:first + URGENT_EVERY])
        if timers:
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                timer = heapq.heappop(timers)[2]
                if not timer.cancelled:
                    try:
                        timer.callback(*timer.args)
                    except Exception:
                        log.exception("timer failed")
        if self.after_turn is not None:
            self.after_turn()

    @staticmethod
    def _handle(events: list) -> None:
        for key, mask in events:
            handler = key.data
            if handler is None:  # the ordinary events' epoll, among the urgent ones
                continue
            try:
                handler.handle_event(mask)
            except Exception:  # a bug in one connection must not stop the others
                log.exception("event handler failed")
                abort = getattr(handler, "abort", None)
                if abort is not None:
                    abort()

    def run(self, until: Callable[[], bool] | None = None) -> None:
        while not self.stopping and not (until and until()):
            self.run_once()

    def close(self) -> None:
        self.selector.close()
        self.urgent.close()
        os.close(self._bell)
        self._bell = -1


class Listener:
    """A listening socket and the transport its connections get (plain, or TLS), among the
    loop's urgent events."""

    def __init__(self, loop: Loop, sock: socket.socket, transport: TransportFactory,
                 on_accept: Callable[[socket.socket, tuple, object, "Listener"], None],
                 has_room: Callable[[], bool], scheme: str = "http"):
        self.loop = loop
        self.sock = sock
        self.transport = transport
        self.on_accept = on_accept
        self.has_room = has_room
        self.scheme = scheme
        self.port = sock.getsockname()[1]
        self.paused = False
        sock.setblocking(False)
        loop.urgent.register(sock, selectors.EVENT_READ, self)

    def resume(self) -> None:
        """Watch the socket again (room was made)."""
        if self.paused and self.sock.fileno() >= 0:
            self.paused = False
            self.loop.urgent.register(self.sock, selectors.EVENT_READ, self)

    def _pause(self) -> None:
        self.paused = True
        self.loop.urgent.unregister(self.sock)

    def handle_event(self, mask: int) -> None:
        for _ in range(ACCEPTS_AT_ONCE):
            if not self.has_room():  # newcomers wait in the kernel's backlog meanwhile
                self._pause()
                return
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    # Out of descriptors (descriptors.py keeps admission below that): the
                    # socket stays readable, so watching it would spin the loop. Look again
                    # when a connection closes (the server resumes its listeners) or soon.
                    self._pause()
                    self.loop.call_later(RETRY_ACCEPT, self.resume)
                return  # or the peer gave up while in the backlog
            conn.setblocking(False)
            self.on_accept(conn, addr, self.transport(), self)

    def close(self) -> None:
        if not self.paused:
            try:
                self.loop.urgent.unregister(self.sock)
            except (KeyError, ValueError):
                pass
        self.paused = True  # never watched again
        self.sock.close()
