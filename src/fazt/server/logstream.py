"""The server's standard error, which a full disk cannot turn into an outage.

`fazt server start > fazt.log 2>&1` puts the server's own lines (its start-up
message, warnings, the request log, tracebacks of unexpected errors) on a disk
that may fill up, often the database's. A write there then raises OSError (no
room), and a start-up message that cannot be written stopped the server with
exit status 1 before it served anything; an unexpected error's report that
cannot be written turned one request's 500 into a dropped connection. Lines are
worth less than serving: what cannot be written is dropped and counted, and
writing resumes by itself once there is room.
"""

import sys
from typing import TextIO


class UnfailingStream:
    """A text stream whose write and flush never raise OSError: what could not be
    written is dropped (`dropped` counts the failed calls)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.dropped = 0

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError:
            self.dropped += 1
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            self.dropped += 1

    def __getattr__(self, name: str):  # fileno, isatty, encoding, ...: the stream's own
        return getattr(self.stream, name)


def install() -> UnfailingStream:
    """Make `sys.stderr` unfailing for the rest of the process; returns it."""
    if not isinstance(sys.stderr, UnfailingStream):
        sys.stderr = UnfailingStream(sys.stderr)
    return sys.stderr
