"""The request log: one line a request, written in batches.

Writing each line as it happens costs a system call per request, and every
system call hands Python's lock to another thread and waits to take it back:
under a flood that wait is paid by every request, the cockpit's included.
So lines collect in memory and a background thread writes them out every
FLUSH_SECONDS (or at once when MAX_PENDING bytes are waiting). A killed
process loses at most that last batch of log lines, never any data.

Every field a client chose (address, Host, method, path) is escaped the way
nginx escapes its log: control characters, quotes, backslashes and bytes
past ASCII become `\\xHH`. A `%0a` in a path therefore cannot start a forged
line, and a quote cannot end the quoted request field early.
"""

import re
import sys
import threading
from typing import TextIO

FLUSH_SECONDS = 0.5
MAX_PENDING = 256 * 1024
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def escape(field: str | None) -> str:
    """One log field, printable ASCII only: "-" when absent."""
    if field is None or field == "":
        return "-"
    if field.isascii() and field.isprintable() and '"' not in field and "\\" not in field:
        return field  # the common case, without the regular expression (every request)
    return _UNSAFE.sub(_hex, field)


def _hex(match: re.Match) -> str:
    char = match.group()
    # WSGI passes the raw bytes as latin-1 text; anything wider was decoded by us.
    raw = char.encode("latin-1") if ord(char) < 256 else char.encode("utf-8")
    return "".join(f"\\x{b:02X}" for b in raw)


def line(address: str | None, host: str | None, method: str | None, path: str | None,
         status: str, millis: float) -> str:
    """The log line of one request, newline included."""
    return (f'{escape(address)} {escape(host)} "{escape(method)} {escape(path)}" '
            f"{escape(status)} {millis:.1f}ms\n")


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
