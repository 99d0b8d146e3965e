"""Request heads seen before, parsed once: what Waitress made of the same bytes, copied.

Waitress's HTTPRequestParser parses every request (its checks are the ones fazt
relies on), in pure Python: for a small GET it was about a quarter of the event
loop's time per answer under a flood of hot files (bench section 1; ~8 µs of
~30 in process). A client that asks again often sends the very same bytes (a
keep-alive client polling an API, a revalidation, a health check, a load
generator), and a parser's state is a function of those bytes and of the
listener's settings alone. So a head, from the request line to the blank line,
is looked up by its exact bytes, and a hit is a copy of the parser Waitress left
after parsing them: the same command, path, query and headers, by construction.

Only a head that completes a bodiless request without an error is kept (no body,
no Transfer-Encoding, no Expect, no blank lines before it), at most HEAD_BYTES
long, and at most HEADS of them, all forgotten when full: a crowd that sends
distinct heads only misses (about 1 µs each), and what is kept stays under
HEADS x (HEAD_BYTES + a parser's state), about 2 MB.
"""

from waitress.adjustments import Adjustments
from waitress.parser import HTTPRequestParser

HEADS = 512
HEAD_BYTES = 2048
_END = b"\r\n\r\n"


class KnownHeads:
    def __init__(self, heads: int = HEADS):
        self.heads = heads
        self._parsed: dict[tuple[Adjustments, bytes], dict] = {}
        self.hits = 0

    def parser_for(self, adj: Adjustments, data: bytes) -> tuple[HTTPRequestParser, int] | None:
        """(a parser as Waitress leaves it after the head `data` begins with, the head's
        length), when that head was parsed before for a listener with `adj`; else None."""
        end = data.find(_END, 0, HEAD_BYTES)
        if end < 0:
            return None
        end += len(_END)
        state = self._parsed.get((adj, data[:end]))
        if state is None:
            return None
        parser = HTTPRequestParser.__new__(HTTPRequestParser)
        parser.__dict__.update(state)
        parser.headers = dict(state["headers"])  # the one mutable part: each its own
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
        if not head.endswith(_END) or head.find(_END) != consumed - len(_END) \
                or head[:1] in (b"\r", b"\n"):
            return  # not exactly one head as parser_for finds it
        if len(self._parsed) >= self.heads:
            self._parsed.clear()
        state = dict(parser.__dict__)
        state["headers"] = dict(parser.headers)
        self._parsed[(adj, head)] = state
