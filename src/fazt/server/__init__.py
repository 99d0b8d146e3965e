"""fazt's HTTP server: its own event loop, with Waitress kept for what it is good at.

    loop.py        epoll (selectors) loop, timers, a doorbell for threads; listeners
    transport.py   the byte transport under a connection (plain; TLS in tls.py)
    connection.py  one connection's states: handshake -> headers -> body -> task -> writing
    admission.py   who gets in: connection limit, each address's share, the cockpit's
                   reserve, body limits per route; 503/429/413/411/405 with reasons
    heads.py       request heads of a shape seen before: Waitress's parse of it, copied
    fastpath.py    cache hits answered from the loop with pre-rendered headers
    statuspath.py  the owner's status read answered from the loop (RAM only)
    bridge.py      a request on a lane thread (Waitress's WSGITask into a connection)
    jspath.py      a site's back-end request on a lane thread without WSGI or Falcon
    lanes.py       the cockpit's and the sites' thread pools
    priority.py    the cockpit's threads run first; every new thread at the normal one
    responses.py   the answers the loop writes itself, shaped like the threads'
    http.py        listeners + connections + the once-a-second sweep of timeouts
    logstream.py   the server's standard error: a full disk drops lines, never the server
    descriptors.py connections no more than `ulimit -n` allows (the smaller limit wins)
    boot.py        `fazt server start`: the quiet window, then bind and run

Waitress internals this package touches (pinned by a contract test; check them
when Waitress is upgraded):

- `waitress.parser.HTTPRequestParser(adj)`: `received(data) -> consumed`,
  `completed`, `headers_finished`, `empty`, `error` (with `.code`, `.reason`,
  `.body`; fazt sets a `waitress.utilities.BadRequest(body)` there itself for two
  framings), `headers` (upper-case, `_` for `-`; an HTTP/1.1 `TRANSFER_ENCODING`
  is taken out, an HTTP/1.0 one stays), `command`, `path` (missing, with
  `request_uri` set, when the target was refused; `received` may then raise
  ValueError from `urlsplit`), `query`, `version`, `get_body_stream()`,
  `content_length`, `chunked`, `expect_continue`, `connection_close`,
  `body_rcv` (its `.buf` is replaced by our Spool, which offers `append`,
  `getfile`, `__len__`, `close`), `close()`, `adj`, `header_bytes_received`, and
  its whole state in the instance's `__dict__` once a bodiless head is parsed
  (heads.py copies it for a head of the same shape, and works out again the fields
  from the target and the Host line with `waitress.parser.crack_first_line`,
  `waitress.parser.split_uri` and `waitress.rfc7230.HEADER_FIELD_RE`;
  tests/test_heads.py checks the copy against Waitress's own parse).
- `waitress.task.WSGITask(channel, request)`: `service()`, `close_on_finish`,
  `wrote_header`, `version`, `has_body`, `request`, and `set_close_on_finish()`
  (overridden: no close after a 304/204 on HTTP/1.1); it reads `channel.server.application`,
  `channel.server.adj` (`url_prefix`, `ident`), `channel.server.effective_port`,
  `channel.server.server_name`, `channel.adj.log_socket_errors`, `channel.addr`,
  and calls `channel.write_soon(data)` and `channel.check_client_disconnected()`.
- `waitress.buffers.ReadOnlyFileBasedBuffer` (the `wsgi.file_wrapper` a task
  queues for a stream): `get(n, skip=True)`, `remain`, `close()`.
- `waitress.task.ThreadedTaskDispatcher`: `set_thread_count(n)`,
  `add_task(task)` (a task has `service()` and `cancel()`), `shutdown()`,
  `handler_thread(n)` (overridden to set a thread's priority), and the fields
  `threads`, `queue`, `active_count`.
- `waitress.adjustments.Adjustments(url_scheme, ident, max_request_header_size,
  max_request_body_size, log_socket_errors)`.
"""
