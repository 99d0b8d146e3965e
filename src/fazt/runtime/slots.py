"""The slot semaphore: at most `max_concurrent_js` handlers run at once.

A request that finds no free slot is refused at once instead of queueing:
on a small machine a queue of JavaScript only turns overload into a frozen
CPU and timeouts for everyone, while a quick 429 lets the client back off.
The size changes at run time (recalibration). Growing frees slots at once;
shrinking never stops a running handler, it only refuses new ones until
enough have finished.
"""

import threading


class Slots:
    """A resizable, non-blocking counting semaphore that keeps its own counters."""

    def __init__(self, size: int):
        self._lock = threading.Lock()
        self._size = max(0, int(size))
        self._in_use = 0
        self._rejected = 0

    def try_acquire(self) -> bool:
        """Take a slot if one is free; never waits. A refusal is counted."""
        with self._lock:
            if self._in_use < self._size:
                self._in_use += 1
                return True
            self._rejected += 1
            return False

    def release(self) -> None:
        """Give back a slot taken by try_acquire."""
        with self._lock:
            if self._in_use <= 0:
                raise RuntimeError("Slots.release() without a matching try_acquire()")
            self._in_use -= 1

    def resize(self, size: int) -> None:
        """New capacity; running holders keep their slots."""
        with self._lock:
            self._size = max(0, int(size))

    def stats(self) -> dict:
        with self._lock:
            return {"slots": self._size, "in_use": self._in_use, "rejected": self._rejected}
