"""The Waitress internals fazt relies on, checked one by one against the installed Waitress.

fazt's event loop (src/fazt/server/) keeps Waitress for its request parser, its
WSGI task and its thread pool, below their public API, so `pyproject.toml` pins
Waitress to a compatible release (`~=`) of the version tested. When an upgrade
changes one of these, this test names it in one sentence instead of the server
failing at run time. The same list, in prose, is the docstring of
`fazt.server`; a test keeps the two naming the same objects. To update: edit
one CONTRACT line (and that docstring).
"""

import importlib.metadata
import inspect
import re
from pathlib import Path

import pytest

import fazt.server

# (dotted name, what fazt needs of it): "params: a, b" for a callable's parameter
# names, "attrs: x, y" for attributes of the class or of its instances.
CONTRACT = [
    ("waitress.parser.HTTPRequestParser", "params: adj"),
    ("waitress.parser.HTTPRequestParser", "attrs: received, completed, headers_finished, "
     "empty, error, headers, command, path, request_uri, version, content_length, chunked, "
     "expect_continue, connection_close, body_rcv, close, first_line, proxy_scheme, "
     "proxy_netloc, query, fragment, header_bytes_received, header_plus, url_scheme"),
    ("waitress.parser.crack_first_line", "params: line"),
    ("waitress.parser.split_uri", "params: uri"),
    ("waitress.rfc7230.HEADER_FIELD_RE", "attrs: match, groupindex"),
    ("waitress.parser.HTTPRequestParser.received", "params: self, data"),
    ("waitress.receiver.FixedStreamReceiver", "attrs: buf"),
    ("waitress.receiver.ChunkedReceiver", "attrs: buf"),
    ("waitress.utilities.Error", "attrs: code, reason, body"),
    ("waitress.utilities.BadRequest", "params: body"),
    ("waitress.task.WSGITask", "params: channel, request"),
    ("waitress.task.WSGITask", "attrs: service, close_on_finish, wrote_header, version, "
     "has_body, request, set_close_on_finish"),
    ("waitress.buffers.ReadOnlyFileBasedBuffer", "attrs: get, remain, close"),
    ("waitress.buffers.ReadOnlyFileBasedBuffer.get", "params: self, numbytes, skip"),
    ("waitress.task.ThreadedTaskDispatcher", "attrs: set_thread_count, add_task, shutdown, "
     "handler_thread, threads, queue, active_count"),
    ("waitress.task.ThreadedTaskDispatcher.handler_thread", "params: self, thread_no"),
    ("waitress.adjustments.Adjustments", "attrs: url_scheme, ident, max_request_header_size, "
     "max_request_body_size, log_socket_errors, url_prefix"),
]
# What a WSGITask reads and calls on its channel: fazt's TaskChannel (server/bridge.py)
# offers exactly these.
CHANNEL_USES = {"addr", "adj.log_socket_errors", "check_client_disconnected", "server",
                "server.adj", "server.application", "write_soon"}
VERSION = importlib.metadata.version("waitress")


def resolve(dotted: str):
    module, _, rest = dotted.partition(".")
    obj = __import__(module)
    path = module
    for part in rest.split("."):
        path += "." + part
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = __import__(path, fromlist=["_"])
    return obj


def instance_attrs(cls) -> set[str]:
    """Attributes its methods use on an instance (`self.name`), bases included."""
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        if klass.__module__.startswith("waitress"):
            names |= set(re.findall(r"self\.(\w+)", inspect.getsource(klass)))
    return names


@pytest.mark.parametrize("dotted,need", CONTRACT, ids=[f"{d} {n[:5]}" for d, n in CONTRACT])
def test_waitress_still_has(dotted, need):
    try:
        obj = resolve(dotted)
    except (ImportError, AttributeError):
        pytest.fail(f"Waitress {VERSION} has no {dotted}, which fazt relies on.")
    kind, _, names = need.partition(": ")
    wanted = [n.strip() for n in names.split(",")]
    if kind == "params":
        have = set(inspect.signature(obj).parameters)
        missing = [n for n in wanted if n not in have]
        assert not missing, (f"Waitress {VERSION} changed {dotted}: it no longer takes "
                             f"{', '.join(missing)}, which fazt passes.")
    else:
        have = set(dir(obj)) | (instance_attrs(obj) if inspect.isclass(obj) else set())
        missing = [n for n in wanted if n not in have]
        assert not missing, (f"Waitress {VERSION} changed {dotted}: it no longer has "
                             f"{', '.join(missing)}, which fazt uses.")


def test_a_task_asks_nothing_new_of_its_channel():
    from waitress.task import Task, WSGITask

    source = inspect.getsource(Task) + inspect.getsource(WSGITask)
    used = set(re.findall(r"channel\.(\w+(?:\.\w+)?)", source)) - {"py"}
    new = sorted(used - CHANNEL_USES)
    assert not new, (f"Waitress {VERSION}'s WSGITask now uses channel.{', channel.'.join(new)}, "
                     "which fazt's TaskChannel (src/fazt/server/bridge.py) does not provide.")


def test_the_docstring_names_what_the_contract_checks():
    named = set(re.findall(r"`(waitress\.[\w.]+?)[`(]", fazt.server.__doc__ or ""))
    unchecked = sorted(named - {dotted for dotted, _ in CONTRACT})
    assert named and not unchecked, (
        f"{unchecked} are named in {Path(fazt.server.__file__)} but not checked here: "
        "add them to CONTRACT")
