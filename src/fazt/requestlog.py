"""The request log: one line a request, written in batches.

Writing each line as it happens costs a system call per request, and every
system call hands Python's lock to another thread and waits to take it back:
under a flood that wait is paid by every request, the cockpit's included.
So lines collect in memory and a background thread writes them out every
FLUSH_SECONDS (or at once when MAX_PENDING bytes are waiting). A killed
process loses at most that last batch of log lines, never any data.
"""

import sys
import threading
from typing import TextIO

FLUSH_SECONDS = 0.5
MAX_PENDING = 256 * 1024


class RequestLog:
    def __init__(self, stream: TextIO | None = None, every: float = FLUSH_SECONDS):
        self.stream = stream
        self.every = every
        self._lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            full = self._size >= MAX_PENDING
        if full:  # a bound on memory, whatever the flusher is doing
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines, self._size = self._lines, [], 0
        if lines:
            stream = self.stream or sys.stderr
            stream.write("".join(lines))
            stream.flush()

    def start(self) -> "RequestLog":
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.flush()
            except (OSError, ValueError):  # stderr gone: keep serving, drop the lines
                pass
