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
