"""Site back ends: `api/main.js` on QuickJS, behind the slot semaphore, with fazt.kv."""

from fazt.runtime.check import compile_check
from fazt.runtime.response import JsResponse
from fazt.runtime.runtime import JsBusy, Runtime

__all__ = ["JsBusy", "JsResponse", "Runtime", "compile_check"]
