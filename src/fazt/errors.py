"""Expected failures: each carries one readable sentence for the user.

The command line prints them without a traceback; the HTTP layer turns them
into JSON or a small page with the status code they name.
"""


class FaztError(Exception):
    """A failure the user can understand and act on."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status


class NotFound(FaztError):
    status = 404
    code = "not_found"


class TooLarge(FaztError):
    status = 413
    code = "too_large"


class Unavailable(FaztError):
    """The database could not be reached in time: ask the client to retry."""

    status = 503
    code = "unavailable"
    retry_after = 5
