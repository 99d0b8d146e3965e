"""Request heads seen before, parsed once: what Waitress made of the same header lines, copied.

Waitress's HTTPRequestParser parses every request (its checks are the ones fazt
relies on), in pure Python: for a small GET it was about a quarter of the event
loop's time per answer under a flood of hot files (bench section 1; ~8 µs of
~30 in process). A client sends the same header lines again and again (a
browser or a load generator to every file of every site, a keep-alive client
polling an API, a health check); only the request line and the Host line
change. A parser's state is a function of the head's bytes and of the
listener's settings alone, and of the request line only through the method, the
version and the fields Waitress derives from the target. So a head is looked up
by its method, its version and its header lines less a leading Host line (the
"shape"), and a hit is a copy of the parser Waitress left after parsing a head
of that shape, with the parts that come from the target and the Host line worked
out again by Waitress's own functions (crack_first_line, split_uri, the header
field pattern), as parse_header works them out. Anything those find odd is a
miss, and the full parse gives Waitress's own answer.

Only a head that completes a bodiless request without an error is kept (no body,
no Transfer-Encoding, no Expect, no whitespace before it, a Host line that is the
only one), at most HEAD_BYTES long, and at most HEADS shapes, all forgotten when
full: a crowd that sends distinct shapes only misses (a few µs each), and what
is kept stays under HEADS x (HEAD_BYTES + a parser's state), about 2 MB.
"""

from waitress.adjustments import Adjustments
from waitress.parser import HTTPRequestParser, crack_first_line, split_uri
from waitress.rfc7230 import HEADER_FIELD_RE

HEADS = 512
HEAD_BYTES = 2048
LINES = 1024  # request lines worked out before, each of at most LINE_BYTES
LINE_BYTES = 256
_END = b"\r\n\r\n"
_EOL = b"\r\n"
_FOLDS = (b" ", b"\t")  # a line that starts so continues the line before it
# Bytes a Host value made only of is one HEADER_FIELD_RE takes whole: field-vchars, no space
_HOST_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.:[]_-"
_UNSEEN = object()


def _split(head: bytes) -> tuple[bytes, bytes | None, bytes] | None:
    """(request line, leading Host line or None, the header lines after them) of a whole
    head, or None when Waitress would strip whitespace before it."""
    if head[:1].isspace():  # received() lstrips the head: not a shape of its own
        return None
    eol = head.find(_EOL)
    first, rest = head[:eol], head[eol + 2:]
    if rest[:5].lower() == b"host:":
        eol = rest.find(_EOL)
        if rest[eol + 2:eol + 3] not in _FOLDS:  # a folded Host line stays in the shape
            return first, rest[:eol], rest[eol + 2:]
    return first, None, rest


def _request_line(first: bytes) -> tuple[bytes, bytes, dict] | None:
    """(method, version, the parser's fields that come from the target) as parse_header
    works them out of a request line; None for a line it would refuse, or Waitress would
    let an error out of."""
    first = first.rstrip()
    if b"\r" in first or b"\n" in first:
        return None
    try:
        command, uri, version = crack_first_line(first)
        parts = split_uri(uri)
    except Exception:  # noqa: BLE001 - ParsingError, or urlsplit's own errors: the full parse's
        return None
    if not command:
        return None
    names = ("proxy_scheme", "proxy_netloc", "path", "query", "fragment")
    fields = dict(zip(names, parts, strict=True), first_line=first,
                  request_uri=uri.decode("latin-1"))
    return command, version, fields


def _host_value(line: bytes) -> str | None:
    """The HOST header parse_header makes of a Host line alone; None when it would refuse it."""
    value = line[5:].strip(b" \t")
    if not value.translate(None, _HOST_BYTES):  # the usual host[:port]: the pattern's answer
        return value.decode("latin-1")
    if b"\r" in line or b"\n" in line:
        return None
    field = HEADER_FIELD_RE.match(line)
    return None if field is None else field.group("value").strip(b" \t").decode("latin-1")


class KnownHeads:
    def __init__(self, heads: int = HEADS):
        self.heads = heads
        self._parsed: dict[tuple, dict] = {}
        self._lines: dict[bytes, tuple | None] = {}  # request line: _request_line's answer
        self.hits = 0

    def _line(self, first: bytes) -> tuple[bytes, bytes, dict] | None:
        """_request_line's answer, remembered for short lines (a file asked for again)."""
        known = self._lines.get(first, _UNSEEN)
        if known is _UNSEEN:
            known = _request_line(first)
            if len(first) <= LINE_BYTES:
                if len(self._lines) >= LINES:
                    self._lines.clear()
                self._lines[first] = known
        return known

    def parser_for(self, adj: Adjustments, data: bytes) -> tuple[HTTPRequestParser, int] | None:
        """(a parser as Waitress leaves it after the head `data` begins with, the head's
        length), when a head of its shape was parsed before for a listener with `adj`;
        else None."""
        end = data.find(_END, 0, HEAD_BYTES)
        if end < 0:
            return None
        end += len(_END)
        if end >= adj.max_request_header_size:
            return None  # too long for this listener: Waitress's 431 (a longer target)
        split = _split(data[:end])
        if split is None:
            return None
        first, host_line, rest = split
        line = self._line(first)
        if line is None:
            return None
        command, version, fields = line
        state = self._parsed.get((adj, command, version, host_line is not None, rest))
        if state is None:
            return None
        host = None if host_line is None else _host_value(host_line)
        if host_line is not None and host is None:
            return None
        parser = HTTPRequestParser.__new__(HTTPRequestParser)
        parser.__dict__.update(state)
        parser.headers = dict(state["headers"])  # the one mutable part: each its own
        if host is not None:
            parser.headers["HOST"] = host
        parser.__dict__.update(fields)
        parser.header_bytes_received = end
        self.hits += 1
        return parser, end

    def remember(self, adj: Adjustments, data: bytes, consumed: int,
                 parser: HTTPRequestParser) -> None:
        """After Waitress's parser took `consumed` bytes of `data` in one go: keep its state
        if they were a whole head of a bodiless request it found nothing wrong with."""
        if (consumed > HEAD_BYTES or not parser.completed or parser.error is not None
                or parser.empty or parser.body_rcv is not None or parser.chunked
                or parser.content_length or parser.expect_continue):
            return
        head = data[:consumed]
        if not head.endswith(_END) or head.find(_END) != consumed - len(_END):
            return  # not exactly one head as parser_for finds it
        split = _split(head)
        if split is None:
            return
        _, host_line, rest = split
        if host_line is not None and _host_value(host_line) != parser.headers.get("HOST"):
            return  # another Host line added to it: the line alone does not make the header
        if len(self._parsed) >= self.heads:
            self._parsed.clear()
        state = dict(parser.__dict__)
        state["headers"] = dict(parser.headers)
        key = (adj, parser.command.encode("latin-1"), parser.version.encode("latin-1"),
               host_line is not None, rest)
        self._parsed[key] = state
