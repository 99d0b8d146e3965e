import io

from conftest import eventually

from fazt.requestlog import MAX_PENDING, RequestLog


def test_lines_are_batched_and_flushed_on_close():
    out = io.StringIO()
    log = RequestLog(out, every=3600).start()  # the flusher will not run during the test
    log.write("a\n")
    log.write("b\n")
    assert out.getvalue() == ""  # no write per request
    log.close()
    assert out.getvalue() == "a\nb\n"


def test_the_flusher_writes_on_its_own():
    out = io.StringIO()
    log = RequestLog(out, every=0.01).start()
    log.write("line\n")
    try:
        assert eventually(lambda: out.getvalue() == "line\n")
    finally:
        log.close()


def test_memory_is_bounded_when_nothing_flushes():
    out = io.StringIO()
    log = RequestLog(out, every=3600)  # not started: only the bound can write
    line = "x" * 1023 + "\n"
    for _ in range(MAX_PENDING // len(line) + 1):
        log.write(line)
    assert len(out.getvalue()) >= MAX_PENDING
    assert log._size < MAX_PENDING


def test_every_field_is_escaped_to_printable_ascii():
    from fazt.requestlog import line

    text = line("1.2.3.4", 'evil"host', "GET", '/a\nb"c\\d\xe9\u2028\x7f', "200", 1.0)
    assert text == ('1.2.3.4 evil\\x22host "GET /a\\x0Ab\\x22c\\x5Cd\\xE9\\xE2\\x80\\xA8\\x7F" '
                    "200 1.0ms\n")
    assert line(None, "", "GET", "/", "404", 0.5).startswith('- - "GET /" 404')
