"""Expected failures: each carries one readable sentence for the user.

These are domain errors: they say what went wrong (not found, too large, a
conflict, busy, unavailable), never how HTTP spells it. The command line prints
them without a traceback; `http_errors` maps each kind to its status code.
"""


class FaztError(Exception):
    """A failure the user can understand and act on: bad input, unless a subclass says."""

    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class NotFound(FaztError):
    code = "not_found"


class TooLarge(FaztError):
    code = "too_large"


class Conflict(FaztError):
    """The request is valid but clashes with the current state (or needs a confirmation)."""

    code = "conflict"


class Busy(FaztError):
    """Every slot for this kind of work is taken: come back in a moment."""

    code = "busy"
    retry_after = 1


class Unavailable(FaztError):
    """The database could not be reached in time: ask the client to retry."""

    code = "unavailable"
    retry_after = 5


class ReadOnly(Unavailable):
    """A write sent to a read-only follower: only the primary takes writes (503, and
    no Retry-After: waiting will not help)."""

    code = "read_only_follower"
    retry_after = None

    def __init__(self, message: str = "This server is a read-only follower, write to the primary."):
        super().__init__(message)
