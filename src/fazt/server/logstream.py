"""The server's standard error, which a full disk cannot turn into an outage.

`fazt server start > fazt.log 2>&1` puts the server's own lines (its start-up
message, warnings, the request log, tracebacks of unexpected errors) on a disk
that may fill up, often the database's. A write there then raises OSError (no
room), and a start-up message that cannot be written stopped the server with
exit status 1 before it served anything; the report of an unexpected error
would have raised again, inside the request it was about. Lines are
worth less than serving: what cannot be written is dropped and counted, and
writing resumes by itself once there is room. A server started with its standard
descriptors closed gets /dev/null in their place (`install`).
"""

import os
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
    _fill_closed_standard_descriptors()
    if sys.stderr is None:  # started with descriptor 2 closed: Python has no stderr
        sys.stderr = open(os.devnull, "w")  # kept for the life of the process
    if not isinstance(sys.stderr, UnfailingStream):
        sys.stderr = UnfailingStream(sys.stderr)
    return sys.stderr


def _fill_closed_standard_descriptors() -> None:
    """Started with 0, 1 or 2 closed (`2>&-`, some supervisors): the next socket or file
    opened would take that number, and whatever writes to "standard error" at the C
    level would write into a client's connection. /dev/null takes them first."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
