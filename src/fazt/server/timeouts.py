"""How long a client may take to show it is really talking: one number, 10 s.

It bounds a TLS handshake, a request's headers, a new connection's first
request, and the grace before a body's rate is checked. `FAZT_CLIENT_TIMEOUT`
(seconds) in the server's environment changes it; it is read once, when the
server starts. The tests shorten it so they need not wait out ten real seconds
to see a slow client closed.
"""

from fazt.envtuning import seconds_from_env

DEFAULT = 10.0


def client_timeout(environ: dict | None = None) -> float:
    return seconds_from_env("FAZT_CLIENT_TIMEOUT", DEFAULT, 1, 600, environ)


CLIENT_TIMEOUT = client_timeout()
