"""dist/fazt for the tests that run it, built in the background while the others run.

A fresh checkout (CI) has no binary and PyInstaller takes about a minute here. The
build starts once collection is done, if a selected test asks for the `binary`
fixture and dist/fazt is older than a file it is made from (a binary newer than
all of them is used as it is); those tests are moved to the end of the run, so the
build overlaps the rest of the suite instead of adding to it.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "dist" / "fazt"
LOG = ROOT / "build" / "work" / "test-build.log"
_build: subprocess.Popen | None = None


def _newest_source() -> float:
    sources = [ROOT / "fazt.spec", ROOT / "build" / "fazt_main.py", ROOT / "build" / "binary.sh"]
    sources += [p for p in (ROOT / "src").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts]
    return max(p.stat().st_mtime for p in sources)


def _stale() -> bool:
    return not BINARY.exists() or BINARY.stat().st_mtime < _newest_source()


def _start_build() -> subprocess.Popen:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "wb") as log:
        return subprocess.Popen([str(ROOT / "build" / "binary.sh")], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


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
    if _build is not None and _build.poll() is None:
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
