"""The Waitress internals fazt relies on, checked one by one against the installed Waitress.

fazt uses Waitress below its public API (see the list in
`src/fazt/server/__init__.py`), so `pyproject.toml` pins it to a compatible
release (`~=`) of the version tested. When an upgrade changes one of these, this
test names it in one sentence instead of the server failing at run time. Keep
CONTRACT in step with that docstring: one line per internal.
"""

import importlib.metadata
import inspect
import re

import pytest

# (dotted name, what fazt needs of it): "params: a, b" for a callable's parameter
# names, "attrs: x, y" for attributes of the class (or of a fresh instance).
CONTRACT = [
    ("waitress.parser.HTTPRequestParser", "params: adj"),
    ("waitress.parser.HTTPRequestParser", "attrs: received, completed, headers_finished, "
     "empty, error, headers, command, path, version, content_length, chunked, "
     "expect_continue, connection_close, body_rcv, close"),
    ("waitress.parser.HTTPRequestParser.received", "params: self, data"),
    ("waitress.task.WSGITask", "params: channel, request"),
    ("waitress.task.WSGITask", "attrs: service, close_on_finish, wrote_header, version, "
     "has_body, request, set_close_on_finish, channel"),
    ("waitress.buffers.ReadOnlyFileBasedBuffer", "attrs: get, remain, close"),
    ("waitress.buffers.ReadOnlyFileBasedBuffer.get", "params: self, numbytes, skip"),
    ("waitress.task.ThreadedTaskDispatcher", "attrs: set_thread_count, add_task, shutdown, "
     "handler_thread, threads, queue, active_count"),
    ("waitress.task.ThreadedTaskDispatcher.handler_thread", "params: self, thread_no"),
    ("waitress.task.ThreadedTaskDispatcher.shutdown", "params: self, cancel_pending, timeout"),
    ("waitress.adjustments.Adjustments", "attrs: url_scheme, ident, max_request_header_size, "
     "max_request_body_size, log_socket_errors, url_prefix, connection_limit, channel_timeout, "
     "cleanup_interval, inbuf_overflow, outbuf_overflow, outbuf_high_watermark, "
     "asyncore_loop_timeout, threads"),
    ("waitress.channel.HTTPChannel", "attrs: received, writable, will_close, "
     "close_when_flushed, total_outbufs_len, outbufs, request, requests, last_activity, "
     "handle_close, service, cancel, write_soon, check_client_disconnected"),
    ("waitress.server.TcpWSGIServer", "params: application, map, _start, _sock, dispatcher, "
     "adj, sockinfo, bind_socket"),
    ("waitress.server.TcpWSGIServer", "attrs: run, maintenance, handle_accept, active_channels, "
     "channel_class, task_dispatcher, pull_trigger, _map, adj, close"),
    ("waitress.wasyncore.poll2", "params: timeout, map"),
]


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
    version = importlib.metadata.version("waitress")
    try:
        obj = resolve(dotted)
    except (ImportError, AttributeError):
        pytest.fail(f"Waitress {version} has no {dotted}, which fazt relies on.")
    kind, _, names = need.partition(": ")
    wanted = [n.strip() for n in names.split(",")]
    if kind == "params":
        have = set(inspect.signature(obj).parameters)
        missing = [n for n in wanted if n not in have]
        assert not missing, (f"Waitress {version} changed {dotted}: it no longer takes "
                             f"{', '.join(missing)}, which fazt passes.")
    else:
        have = set(dir(obj)) | (instance_attrs(obj) if inspect.isclass(obj) else set())
        missing = [n for n in wanted if n not in have]
        assert not missing, (f"Waitress {version} changed {dotted}: it no longer has "
                             f"{', '.join(missing)}, which fazt uses.")
