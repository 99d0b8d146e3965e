"""The one door from a script to Python: fazt.kv and console, for one site.

QuickJS calls it with JSON text and gets JSON text back, so only strings
cross the boundary (the binding cannot pass objects into a Python callable).
It never raises: a Python exception inside a callable leaves the `quickjs`
binding with an exception set (SystemError on the next call), so every
failure is returned as {"error", "type"} and the JS side (prelude.py) throws
it as a proper JS exception. The site is fixed here, by the runtime, never
named by the script.
"""

import json
import threading
from typing import Any

from fazt.errors import FaztError, ReadOnly
from fazt.runtime import env as site_env
from fazt.runtime.env import SiteEnv
from fazt.runtime.kv import KvError, KvStore
from fazt.runtime.logs import SiteLogs

_refusals = threading.local()  # a write a read-only follower refused, on this thread


def take_refusal() -> ReadOnly | None:
    """The write refused during the request running on this thread (a handler runs on
    its caller's thread, warm context or not), and forget it."""
    refused = getattr(_refusals, "exc", None)
    _refusals.exc = None
    return refused


class Bridge:
    """Called as `bridge(op, args_json) -> answer_json` from inside one request."""

    def __init__(self, site: str, kv: KvStore, logs: SiteLogs, env: SiteEnv | None = None):
        self.site = site
        self.kv = kv
        self.logs = logs
        self.env = env

    def redact(self, text: str) -> str:
        """`text` without the site's secret values: for its log and for visitors."""
        return self.env.redact(self.site, text) if self.env is not None else text

    def log(self, level: str, message: str) -> None:
        """A line in the site's log (console output, and failures the runtime saw)."""
        self.logs.add(self.site, level, self.redact(message))

    def __call__(self, op: str, args_json: str) -> str:
        try:
            args = json.loads(args_json)
            return json.dumps(self._dispatch(op, args))
        except KvError as exc:
            return json.dumps({"error": exc.message, "type": exc.js_type})
        except ReadOnly as exc:  # the request answers 503, whatever the script does next
            _refusals.exc = exc
            return json.dumps({"error": f"{op}: {exc.message}", "type": "Error"})
        except FaztError as exc:  # e.g. the database is busy
            return json.dumps({"error": f"{op}: {exc.message}", "type": "Error"})
        except Exception as exc:  # must never raise into QuickJS
            self.log("error", f"fazt internal error in {op}: {exc!r}")
            return json.dumps({"error": f"{op} failed inside fazt.", "type": "Error"})

    def _dispatch(self, op: str, args: list) -> Any:
        if op == "log":
            level, message = args
            self.log(str(level), str(message))
            return {}
        if op == "env":
            return {"value": self.env.get(self.site) if self.env is not None else {}}
        if op == "kv.get":
            found, value = self.kv.get(self.site, args[0])
            return {"value": value} if found else {}
        if op == "kv.set":
            key, value_json = args
            self.kv.set(self.site, key, value_json)
            return {}
        if op == "kv.delete":
            return {"value": self.kv.delete(self.site, args[0])}
        if op == "kv.list":
            return {"value": self.kv.list(self.site, args[0])}
        raise KvError(f"fazt: unknown operation {op!r}.")


class LoopBridge(Bridge):
    """The bridge of a context on the event loop's thread, which must never wait.

    fazt.kv reads and writes the database, so on the loop it is not done at all: the
    call marks the request `moved` and fails, and the runtime drops whatever the script
    did next and runs the request again from the start on a thread. For that to be
    invisible, nothing a run on the loop does may leave it before it is known to have
    stayed: console lines wait in `lines` until `end`, and `fazt.env` and the redaction
    of secrets use the values the runtime found in RAM when the request began."""

    MAX_LINES = 200  # a request's console lines kept until it ends (a site's ring holds 200)
    # ...and one more moves the request to a thread, which logs them all: the same handler
    # must log the same lines wherever it runs.

    def __init__(self, site: str, kv: KvStore, logs: SiteLogs, env: SiteEnv | None = None):
        super().__init__(site, kv, logs, env)
        self.moved = False
        self.lines: list[tuple[str, str]] = []
        self.values: dict[str, str] = {}

    def begin(self, values: dict[str, str]) -> None:
        """A request starts, with the site's secrets as they are in RAM now."""
        self.moved = False
        self.lines = []
        self.values = values

    def end(self) -> None:
        """The request stays on the loop: its console lines go to the site's log."""
        for level, message in self.lines:
            self.logs.add(self.site, level, message)
        self.lines = []

    def redact(self, text: str) -> str:
        return site_env.redact(self.values, text)

    def log(self, level: str, message: str) -> None:
        if len(self.lines) < self.MAX_LINES:
            self.lines.append((level, self.redact(message)))
        else:
            self.moved = True  # dropped with the run: the thread's run logs every line

    def __call__(self, op: str, args_json: str) -> str:
        if op != "log" and op != "env":
            self.moved = True  # never answered here: the request starts over on a thread
            return json.dumps({"error": f"{op}: not on this thread", "type": "Error"})
        return super().__call__(op, args_json)

    def _dispatch(self, op: str, args: list) -> Any:
        if op == "env":
            return {"value": self.values}
        return super()._dispatch(op, args)
