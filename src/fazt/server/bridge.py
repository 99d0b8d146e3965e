"""A request on a lane thread: Waitress's WSGITask, writing into a connection of the loop.

Waitress's `WSGITask` builds the WSGI environ, calls the application and
frames its answer (status line, headers, Content-Length or chunked, the
keep-alive rules). It only asks its "channel" for a few things, which
`TaskChannel` provides: `server` (the application, `adj`, `effective_port`,
`server_name`), `adj`, `addr`, `write_soon(data)` and
`check_client_disconnected()`. `write_soon` never touches the socket: it
queues bytes (or a `wsgi.file_wrapper` buffer, which the loop drains piece by
piece as the client reads) and rings the loop. A thread never waits on its client
once its answer is queued; it waits only before writing more while more than OUT_HIGH
bytes of it wait for the loop (Connection.queue_from_thread).
"""

import logging
import sys
import traceback

from waitress.task import WSGITask

from fazt.server import responses

log = logging.getLogger("fazt")


class Task(WSGITask):
    """Waitress's WSGITask, keeping the connection open after a 304 or 204.

    Waitress closes an HTTP/1.1 connection after any answer without a
    Content-Length, a body-less 304 included, so every revalidation of a page
    cost the browser a new connection (and the fast path, which keeps it open,
    would answer differently). An answer with no body needs no length to end.
    """

    def set_close_on_finish(self) -> None:
        if self.has_body or self.version != "1.1" or self.request.connection_close:
            super().set_close_on_finish()


class ServerInfo:
    """What WSGITask reads from `channel.server`: one per listening socket."""

    def __init__(self, application, adj, port: int, name: str):
        self.application = application
        self.adj = adj
        self.effective_port = port
        self.server_name = name


class ClientGone(ConnectionError):
    """The connection closed while its request was running (an OSError: Waitress's
    task stops quietly on it)."""


class TaskChannel:
    __slots__ = ("conn", "server", "adj", "addr")

    def __init__(self, conn, server: ServerInfo):
        self.conn = conn
        self.server = server
        self.adj = server.adj
        self.addr = conn.addr

    def write_soon(self, data) -> int:
        if self.conn.closed:
            raise ClientGone("the client went away")
        self.conn.queue_from_thread(data)
        return len(data) if isinstance(data, bytes) else 0

    def check_client_disconnected(self) -> bool:
        return self.conn.closed


class Job:
    """One request's turn on a lane thread."""

    __slots__ = ("conn", "request", "server")

    def __init__(self, conn, request, server: ServerInfo):
        self.conn = conn
        self.request = request
        self.server = server

    def service(self) -> None:
        task = Task(TaskChannel(self.conn, self.server), self.request)
        close = False
        try:
            task.service()
            close = task.close_on_finish
        except ClientGone:
            close = True
        except Exception as exc:  # the app failed outside Falcon's handlers: answer, log
            close = True
            sys.stderr.write("fazt: unexpected error serving a request\n"
                             + "".join(traceback.format_exception(exc)))
            if not task.wrote_header and not self.conn.closed:
                self.conn.queue_from_thread(responses.error(
                    500, "internal_error", "Something went wrong on the server; it is logged.",
                    path=self.request.path, version=task.version))
        finally:
            self.request.close()  # the spooled body, if any
            try:
                if self.conn.admin:  # the owner's answer does not wait for the loop's turn
                    self.conn.send_from_thread()
            finally:
                self.conn.loop.call_soon_threadsafe(self.conn.task_done, close)

    def cancel(self) -> None:
        """Shutdown with the request still queued: it gets no thread."""
        self.request.close()
        self.conn.loop.call_soon_threadsafe(self.conn.abort)

    def __repr__(self) -> str:
        return f"<request {self.request.command} {self.request.path} from {self.conn.ip}>"
