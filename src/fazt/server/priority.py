"""CPU priority of fazt's threads: the cockpit's lane runs first, every other at normal.

A cockpit lane thread (lanes.py) asks the kernel for nice RAISED when the
process may have it (root, or CAP_SYS_NICE); otherwise it runs at the normal
priority and nothing else changes.

On Linux a thread starts with the nice value of the thread that creates it,
so a thread that a cockpit thread starts would run at RAISED too: the user
lane's threads a recalibration adds (it runs on a cockpit thread), a stream's
reader, a compaction (and the processes such a thread spawns, Litestream's).
So every thread started after `reset_new_threads()` puts itself back to the
process's own priority first (`threading.setprofile`: the hook runs once in
the new thread, before its target, and removes itself).

The event loop's thread stays at the normal priority. Measured at nice -10
(bench section 4, full load): a status read's p50 fell from 26 to 17 ms while
the loop still sent the cockpit's answers, but once the loop looked at the
cockpit's events first (loop.py) it no longer helped, and a sign-in's p50 rose
from 55-75 to 100-115 ms: under a flood the loop takes all the CPU it is
given, scrypt's included (at -5: 83-89 ms).
"""

import contextlib
import os
import sys
import threading

RAISED = -10
_normal: int | None = None  # the process's own nice value, read before anything was raised


def raise_this_thread() -> bool:
    """Ask for nice RAISED for the calling thread; False when not permitted."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RAISED)
    except (AttributeError, OSError):
        return False
    return True


def reset_new_threads() -> None:
    """From now on every new thread starts at the process's own priority, whatever the
    priority of the thread that started it."""
    global _normal
    if _normal is None:
        _normal = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    threading.setprofile(_start_normal)


def _start_normal(frame, event, arg) -> None:
    sys.setprofile(None)  # once per thread: it only ever runs before the thread's target
    with contextlib.suppress(AttributeError, OSError):
        if os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != _normal:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _normal)
