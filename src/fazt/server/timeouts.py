"""How long a client may take to show it is really talking: one number, 10 s.

It bounds a TLS handshake, a request's headers, a new connection's first
request, and the grace before a body's rate is checked. `FAZT_CLIENT_TIMEOUT`
(seconds) in the server's environment changes it; it is read once, when the
server starts. The tests shorten it so they need not wait out ten real seconds
to see a slow client closed.
"""

import os

from fazt.errors import FaztError

DEFAULT = 10.0


def client_timeout(environ: dict | None = None) -> float:
    environ = os.environ if environ is None else environ
    text = environ.get("FAZT_CLIENT_TIMEOUT", "").strip()
    if not text:
        return DEFAULT
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds <= 600:
        raise FaztError(f"FAZT_CLIENT_TIMEOUT must be a number of seconds from 1 to 600, "
                        f"not {text!r}.")
    return seconds


CLIENT_TIMEOUT = client_timeout()
