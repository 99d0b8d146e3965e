"""Litestream as fazt's child: started with fazt, restarted with backoff, stopped with fazt.

The child reads what it needs from a pipe and its environment, logs to a pipe
that a thread reads (warnings and errors go on to fazt's own log; the last error
is kept for the status), and dies with fazt: the kernel sends it SIGTERM when
the thread that started it goes away (PR_SET_PDEATHSIG), so a SIGKILLed fazt
leaves no Litestream behind.
"""

import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable

BACKOFF_FIRST = 1.0  # seconds before the first restart
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0  # a child that ran this long starts the backoff afresh
_PR_SET_PDEATHSIG = 1
_LINE = re.compile(r'(\w[\w.]*)=("(?:[^"\\]|\\.)*"|\S*)')
log = logging.getLogger("fazt.litestream")


def parse_line(line: str) -> dict[str, str]:
    """One logfmt line of Litestream's (`time=... level=INFO msg="..." key=value`)."""
    fields = {}
    for key, value in _LINE.findall(line):
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        fields.setdefault(key, value)  # the first wins: Litestream repeats `level`
    return fields


def die_with_parent(parent: int) -> Callable[[], None]:
    """A `preexec_fn`: in the child, before exec, ask the kernel for SIGTERM when the
    thread that started it goes away; and end at once if `parent` (the starting
    process's pid) died already, before it asked (no signal would ever come)."""
    def ask() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return ask


class Child:
    """One supervised Litestream process (`replicate` on a primary, `restore -f` on a
    follower). `on_line` sees every parsed log line, on the reader's thread."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], *,
                 stdin: str | None = None, cwd: str | None = None,
                 on_line: Callable[[dict[str, str]], None] | None = None,
                 prepare: Callable[[], None] | None = None,
                 on_error: Callable[[], None] | None = None,
                 restart: Callable[[], bool] | None = None):
        self.name = name
        self.argv = argv
        self.env = env
        self.stdin = stdin
        self.cwd = cwd
        self.on_line = on_line
        self.prepare = prepare  # runs before each start
        self.on_error = on_error  # after last_error changed
        self.restart = restart  # asked after a child died: start another? (None: always)
        self.restarts = 0
        self.started_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.exits: list[int] = []  # return codes of children that died, newest last
        self.said: str | None = None  # the last error the newest child printed itself
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> "Child":
        self._thread = threading.Thread(target=self._run, name=f"fazt-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, umask=0o077,
                                stdin=subprocess.PIPE if self.stdin is not None
                                else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent(os.getpid()), text=True, bufsize=1)
        if self.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.write(self.stdin)
                proc.stdin.close()
        return proc

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                if self.prepare is not None:
                    self.prepare()
                self.said = None
                self._proc = self._spawn()
            except OSError as exc:
                self._error(f"cannot start {self.argv[0]}: {exc.strerror}")
            else:
                if self._stopping.is_set():  # stop() came while it was starting
                    self._proc.terminate()
                self.started_at = time.time()
                for raw in self._proc.stdout:
                    self._read(raw.rstrip("\n"))
                code = self._proc.wait()
                if self._stopping.is_set():
                    break
                self.exits.append(code)
                if self.restart is not None and not self.restart():
                    self._error(f"litestream {self.argv[1]} exited ({describe_exit(code)})")
                    break
                self._error(f"litestream {self.argv[1]} exited ({describe_exit(code)}); "
                            "fazt restarts it")
            if time.monotonic() - began > HEALTHY_AFTER:
                delay = BACKOFF_FIRST
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_MAX)
            self.restarts += 1

    def _read(self, line: str) -> None:
        fields = parse_line(line)
        level = fields.get("level", "")
        if level in ("ERROR", "WARN"):
            message = fields.get("msg", line)
            detail = fields.get("error") or fields.get("err")
            text = f"{message}: {detail}" if detail else message
            log.warning("%s", text)
            if level == "ERROR":
                self._failed(text)
                self.said = text
        elif not fields.get("level") and line.strip():
            log.warning("%s", line)  # not logfmt: a usage message, a Go panic
            self._failed(line.strip())
            self.said = line.strip().removeprefix("Error: ")
        if self.on_line is not None:
            self.on_line(fields)

    def _error(self, text: str) -> None:
        log.warning("%s", text)
        self._failed(text)

    def _failed(self, text: str) -> None:
        self.last_error, self.last_error_at = text, time.time()
        if self.on_error is not None:
            self.on_error()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Litestream then finishes its current sync), SIGKILL past `timeout`."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"status {code}"

