"""Two lanes of worker threads, so user traffic can never take the cockpit's.

The event loop hands every request that needs a thread to this dispatcher,
saying whether it is for the cockpit (`admin.D`), and it passes it to one of
two Waitress ThreadedTaskDispatchers: `cockpit_threads` threads for the
cockpit, and `user_threads` for everything else. When every user thread is stuck on heavy
JavaScript or a slow request, admin requests still find an idle thread.
Each lane resizes at run time (recalibration).

Reserved threads are not enough on their own: under load a cockpit thread
still shares the CPUs with everything else, and a sign-in is mostly scrypt,
which runs outside Python's lock. So cockpit threads ask the kernel for a
higher CPU priority (priority.py: nice -10) when the process may have it
(root, or CAP_SYS_NICE); otherwise they run at the normal one. Measured with
JavaScript slots busy on every CPU: a sign-in's p99 was 2.0-2.1x its idle p99
at nice -5, 1.4-1.5x at -10 (bench/ section 4). The price: a long cockpit task
(a backup, a large deploy) takes CPU from the sites while it runs. Lowering the
user lane's priority instead was measured and rejected: a user thread holding
Python's lock and starved of CPU stalls everyone waiting for that lock
(static throughput fell tenfold).

The event loop must also let go (see `boot.py`'s LOOP_YIELD): `contended()` tells it when
a cockpit request is in flight or several site requests want Python's lock. A pause
between chunks of a turn as well, while a cockpit request runs, was measured and dropped:
no gain on a status read, and static throughput beside back-to-back sign-ins fell from
14,700-16,800 to 8,700-9,100 req/s.
"""

import threading

from waitress.task import ThreadedTaskDispatcher

from fazt.server import priority


class _PriorityDispatcher(ThreadedTaskDispatcher):
    """A lane whose threads the kernel runs first when CPUs are scarce."""

    def handler_thread(self, thread_no: int) -> None:
        priority.raise_this_thread()  # not permitted: the normal priority
        super().handler_thread(thread_no)


class _CockpitTask:
    """A cockpit task in the queue, counted from queueing until it is done."""

    __slots__ = ("task", "lanes")

    def __init__(self, task, lanes: "LaneDispatcher"):
        self.task = task
        self.lanes = lanes
        lanes._cockpit_in_flight(+1)

    def service(self) -> None:
        try:
            self.task.service()
        finally:
            self.lanes._cockpit_in_flight(-1)

    def cancel(self) -> None:
        try:
            self.task.cancel()
        finally:
            self.lanes._cockpit_in_flight(-1)

    def __repr__(self) -> str:
        return repr(self.task)


class LaneDispatcher:
    """Two Waitress task dispatchers: tasks are objects with `service()` and `cancel()`."""

    def __init__(self, user_threads: int, cockpit_threads: int):
        self.user = ThreadedTaskDispatcher()
        self.cockpit = _PriorityDispatcher()
        self.user.set_thread_count(user_threads)
        self.cockpit.set_thread_count(cockpit_threads)
        self.cockpit_tasks = 0  # queued or running
        self._count_lock = threading.Lock()

    def add_task(self, task, cockpit: bool) -> None:
        if cockpit:
            self.cockpit.add_task(_CockpitTask(task, self))
        else:
            self.user.add_task(task)

    def user_queue_depth(self) -> int:
        """Site requests waiting for a thread (read without the lock: a heuristic)."""
        return len(self.user.queue)

    def _cockpit_in_flight(self, change: int) -> None:
        with self._count_lock:
            self.cockpit_tasks += change

    def contended(self) -> bool:
        """A cockpit request is in flight, or more than one site request wants to run.
        Read without locks: a heuristic, called on every turn of the event loop."""
        return bool(self.cockpit_tasks) or self.user.active_count + len(self.user.queue) > 1

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
