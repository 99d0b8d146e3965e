"""File descriptors: every connection is one, and the process may only have so many.

`connection_limit` comes from memory (capacity.js), and a host with plenty of RAM gets
100,000; the descriptor limit is a separate budget (`ulimit -n`; 1,024 on many hosts,
20,000 where this was measured). Past it `accept` fails with EMFILE: the new connection
stays in the kernel's backlog, the listening socket stays readable, and the loop spun on
it at full CPU while the owner's sign-in waited in that backlog behind a crowd of idle
connections (measured at `ulimit -n 256` with 400 silent connections: the sign-in
timed out). Admission only makes room for newcomers once `connection_limit` is reached,
so that limit must be reached before the descriptors run out: the server uses the
smaller of the two (`Descriptors.connections`), and says so at start-up.
"""

import os
import resource

from fazt.server.admission import BODIES_MIN, BODIES_SHARE, COCKPIT_RESERVE, LINGERING_SHARE

SPARE = 64  # for what a server opens besides connections and threads (a backup, a log)
PER_THREAD = 2  # a thread's SQLite reader holds the database and its WAL open
UNLIMITED = 1 << 30


def raise_limit() -> None:
    """Every connection is a file descriptor: allow as many as the system lets us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                        else 1 << 20, hard))
        except (ValueError, OSError):
            pass


class Descriptors:
    """The descriptor budget, measured once before the server accepts anything."""

    def __init__(self):
        self.soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:  # what boot opened: the database, logs, the loop's epolls, Litestream's pipes
            self.base = len(os.listdir("/proc/self/fd"))
        except OSError:
            self.base = SPARE

    def connections(self, threads: int) -> int:
        """How many connections fit. Each is one descriptor, the cockpit's reserve comes on
        top, and for every connection_limit of them admission also allows a share of
        bodies spooled to files and of half-closed connections still lingering."""
        if self.soft == resource.RLIM_INFINITY:
            return UNLIMITED
        room = self.soft - self.base - PER_THREAD * threads - SPARE - COCKPIT_RESERVE \
            - 2 * BODIES_MIN  # the floors of those two shares
        per = 1 + 1 / BODIES_SHARE + 1 / LINGERING_SHARE
        return max(16, int(room / per))
