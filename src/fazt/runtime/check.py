"""The deploy-time check of a site's back end: `api/main.js` must compile.

It runs before the deploy's transaction, so a script with a syntax error
fails the deploy with its line and message and the old version keeps serving.
"""

from fazt.constants import MB, SCRIPT
from fazt.errors import FaztError
from fazt.runtime.engine import syntax_error
from fazt.store.sites import NewFile

MAX_SCRIPT_BYTES = MB


def compile_check(files: list[NewFile]) -> list[NewFile]:
    """The same files, with `api/main.js` read into memory once it is known to compile.

    Its pieces may be a single-use iterator, so the checked bytes replace them.
    """
    out = []
    for f in files:
        if f.path == SCRIPT:
            source, f = f.read_text(MAX_SCRIPT_BYTES, "js_syntax")
            problem = syntax_error(source)
            if problem:
                line, message = problem
                where = f"line {line}: " if line else ""
                raise FaztError(f"{SCRIPT} does not compile: {where}{message}", code="js_syntax")
        out.append(f)
    return out

