"""Two lanes of worker threads, so user traffic can never take the cockpit's.

Waitress hands every ready channel to one task dispatcher. This one looks at
the Host of the channel's first request and passes it to one of two
ThreadedTaskDispatchers: `cockpit_threads` threads for `admin.D`, and
`user_threads` for everything else. When every user thread is stuck on heavy
JavaScript or a slow request, admin requests still find an idle thread.
Each lane resizes at run time (recalibration).

Reserved threads are not enough on their own: under load a cockpit thread
still shares the CPUs with everything else, and a sign-in is mostly scrypt,
which runs outside Python's lock. So cockpit threads ask the kernel for a
higher CPU priority (nice COCKPIT_NICE) when the process may have it
(root, or CAP_SYS_NICE); otherwise they run at the normal one. Lowering the
user lane's priority instead was measured and rejected: a user thread holding
Python's lock and starved of CPU stalls everyone waiting for that lock
(static throughput fell tenfold).
"""

import contextlib
import os
import threading
from collections.abc import Callable

from waitress.task import ThreadedTaskDispatcher

COCKPIT_NICE = -5


class _PriorityDispatcher(ThreadedTaskDispatcher):
    """A lane whose threads the kernel runs first when CPUs are scarce."""

    def handler_thread(self, thread_no: int) -> None:
        with contextlib.suppress(AttributeError, OSError):  # not permitted: normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COCKPIT_NICE)
        super().handler_thread(thread_no)


class LaneDispatcher:
    """A Waitress task dispatcher made of two."""

    def __init__(self, is_cockpit: Callable[[str | None], bool], user_threads: int,
                 cockpit_threads: int):
        self.is_cockpit = is_cockpit
        self.user = ThreadedTaskDispatcher()
        self.cockpit = _PriorityDispatcher()
        self.user.set_thread_count(user_threads)
        self.cockpit.set_thread_count(cockpit_threads)

    def add_task(self, channel) -> None:
        host = channel.requests[0].headers.get("HOST") if channel.requests else None
        lane = self.cockpit if self.is_cockpit(host) else self.user
        lane.add_task(channel)

    def set_thread_count(self, count: int) -> None:
        """What Waitress calls with its `threads` setting: the user lane's size."""
        self.user.set_thread_count(count)

    def resize(self, user_threads: int, cockpit_threads: int) -> None:
        self.user.set_thread_count(user_threads)
        self.cockpit.set_thread_count(cockpit_threads)

    def shutdown(self, cancel_pending: bool = True, timeout: int = 5) -> bool:
        a = self.cockpit.shutdown(cancel_pending, timeout)
        b = self.user.shutdown(cancel_pending, timeout)
        return a and b

    def sizes(self) -> dict:
        return {"user_threads": len(self.user.threads),
                "cockpit_threads": len(self.cockpit.threads)}
