"""Requests per second over the last minute, counted in RAM for the status page."""

import threading
import time


class RequestRate:
    """One counter a second in a 60-slot ring."""

    def __init__(self, seconds: int = 60):
        self._slots = [0] * seconds
        self._stamps = [0] * seconds
        self._lock = threading.Lock()
        self.total = 0

    def hit(self) -> None:
        now = int(time.time())
        i = now % len(self._slots)
        with self._lock:
            if self._stamps[i] != now:
                self._stamps[i] = now
                self._slots[i] = 0
            self._slots[i] += 1
            self.total += 1

    def per_second(self, window: int = 10) -> float:
        """Mean rate over the last `window` whole seconds."""
        now = int(time.time())
        with self._lock:
            count = sum(
                c for c, s in zip(self._slots, self._stamps, strict=True)
                if now - window <= s < now
            )
        return count / window
