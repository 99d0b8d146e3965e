"""dist/fazt for the tests that run it, built in the background while the others run.

A fresh checkout (CI) has no binary and PyInstaller takes about a minute here. The
build starts once collection is done, if a selected test asks for the `binary`
fixture and dist/fazt is older than a file it is made from (a binary newer than
all of them is used as it is); those tests are moved to the end of the run, so the
build overlaps the rest of the suite instead of adding to it.
"""

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "dist" / "fazt"
LOG = ROOT / "build" / "work" / "test-build.log"
LOCK = ROOT / "build" / "work" / "test-build.lock"
_build: subprocess.Popen | None = None


def _newest_source() -> float:
    sources = [ROOT / "fazt.spec", ROOT / "build" / "fazt_main.py", ROOT / "build" / "binary.sh"]
    sources += [p for p in (ROOT / "src").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts]
    return max(p.stat().st_mtime for p in sources)


def _stale() -> bool:
    return not BINARY.exists() or BINARY.stat().st_mtime < _newest_source()


def _start_build() -> subprocess.Popen:
    """This file as a script: it builds under a lock, so that parallel workers (xdist)
    build once and the later ones find the binary fresh."""
    LOG.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, __file__], start_new_session=True)


def _build_once() -> int:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _stale():
            return 0
        with open(LOG, "wb") as log:
            return subprocess.call([str(ROOT / "build" / "binary.sh")], stdout=log,
                                   stderr=subprocess.STDOUT)


@pytest.hookimpl(trylast=True)  # after `-m`/`-k` have deselected what they deselect
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    global _build
    wanting = [item for item in items if "binary" in getattr(item, "fixturenames", ())]
    if not wanting:
        return
    items[:] = [item for item in items if item not in wanting] + wanting
    if _stale() and not config.option.collectonly:
        _build = _start_build()


def pytest_sessionfinish() -> None:
    """A run that ended before the binary tests (-x, Ctrl-C) stops the build, and removes
    what it may have half written (the binary it replaces was stale anyway)."""
    if _build is not None and _build.poll() is None and os.environ.get("PYTEST_XDIST_WORKER"):
        _build.wait()  # another worker may be waiting for this build
    elif _build is not None and _build.poll() is None:
        os.killpg(_build.pid, signal.SIGTERM)  # the script and PyInstaller under it
        _build.wait()
        BINARY.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def binary() -> Path:
    """dist/fazt, once the background build (if one was needed) has finished."""
    global _build
    if _build is None and _stale():
        _build = _start_build()
    if _build is not None:
        code = _build.wait(timeout=900)
        assert code == 0, f"build failed:\n{LOG.read_text(errors='replace')}"
    return BINARY


if __name__ == "__main__":
    sys.exit(_build_once())
