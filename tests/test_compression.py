"""Variants at deploy: made once per content, kept with it, dropped with it, cached by bytes."""

import gzip
import sqlite3

import brotli
from conftest import deploy_dir

from fazt import compression
from fazt.deploy import deploy
from fazt.store.files import variants_decided
from fazt.store.schema import MIGRATIONS, migrate
from fazt.store.sites import NewFile, find_file

JS = "".join(f"function f{i}(x) {{ return x * {i}; }}\n" for i in range(500)).encode()
CSS = "".join(f".c{i} {{ margin: {i}px }}\n" for i in range(500)).encode()


def js(path="app.js", data=JS):
    return NewFile(path, "text/javascript; charset=utf-8", [data])


def blob_count(db) -> int:
    with db.read() as conn:
        return conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]


def test_variants_decode_to_the_content_and_only_when_worth_it(instance):
    db = instance.db
    deploy(db, "shop", [js(), NewFile("tiny.js", "text/javascript", [b"x = 1;" * 100]),
                        NewFile("noise.bin", "application/octet-stream", [bytes(range(256)) * 64])])
    with db.read() as conn:
        info = find_file(conn, "shop", "app.js")
        assert [v.encoding for v in info.variants] == ["br", "gzip"]
        assert not find_file(conn, "shop", "tiny.js").variants  # 600 bytes: under 1 KiB
        assert not find_file(conn, "shop", "noise.bin").variants  # not a compressible type
    assert brotli.decompress(instance.vfs.content("shop", info, info.variants[0])) == JS
    assert gzip.decompress(instance.vfs.content("shop", info, info.variants[1])) == JS


def test_a_text_file_past_the_cap_is_stored_as_it_is(instance, monkeypatch):
    monkeypatch.setattr(compression, "COMPRESS_MAX", 4096)
    pieces = [JS[i:i + 1000] for i in range(0, len(JS), 1000)]
    deploy(instance.db, "shop", [NewFile("big.js", "text/javascript", iter(pieces))])
    with instance.db.read() as conn:
        info = find_file(conn, "shop", "big.js")
    assert not info.variants and instance.vfs.content("shop", info) == JS


def test_redeploying_the_same_content_does_not_compress_again(instance, monkeypatch):
    deploy(instance.db, "shop", [js()])

    def refuse(*args):
        raise AssertionError("compressed again")

    monkeypatch.setattr(compression, "_Compressor", refuse)
    deploy(instance.db, "shop", [js(), js("copy.js")])  # same bytes, a new path
    with instance.db.read() as conn:
        assert len(find_file(conn, "shop", "copy.js").variants) == 2


def test_variants_go_with_their_content(instance):
    before = blob_count(instance.db)
    deploy(instance.db, "shop", [js(), NewFile("app.css", "text/css", [CSS])])
    assert blob_count(instance.db) == before + 6  # two contents, two variants each
    instance.remove_site("shop")  # and collects what no kept version uses
    assert blob_count(instance.db) == before
    with instance.db.read() as conn:
        orphans = conn.execute("SELECT COUNT(*) FROM variants"
                               " WHERE blob_id NOT IN (SELECT blob_id FROM files)").fetchone()[0]
        assert orphans == 0


def test_a_file_equal_to_a_variant_keeps_it(instance):
    deploy(instance.db, "shop", [js()])
    with instance.db.read() as conn:
        br = find_file(conn, "shop", "app.js").variants[0]
        packed = instance.vfs.content("shop", find_file(conn, "shop", "app.js"), br)
    deploy(instance.db, "other", [NewFile("app.js.br", "application/octet-stream", [packed])])
    instance.remove_site("shop")
    with instance.db.read() as conn:
        assert find_file(conn, "other", "app.js.br").sha256 == br.sha256
        assert conn.execute("SELECT 1 FROM blobs WHERE id = ?", (br.blob_id,)).fetchone()


def test_a_database_from_before_variants_gets_them_at_the_next_deploy(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    saved = MIGRATIONS[:]
    try:
        MIGRATIONS[:] = saved[:1]
        migrate(conn)
        conn.execute("INSERT INTO blobs (sha256, size) VALUES ('x', 1)")
    finally:
        MIGRATIONS[:] = saved
    assert migrate(conn) == len(MIGRATIONS)
    assert not variants_decided(conn, "x")
    assert conn.execute("SELECT COUNT(*) FROM variants").fetchone()[0] == 0
    conn.close()


def test_the_cache_holds_the_bodies_it_serves_counted_in_bytes(client, instance, tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / "app.js").write_bytes(JS)
    deploy_dir(instance, "shop", root)
    instance.vfs.cache.resize(10 * 2**20)
    sizes = {}
    for accept in ("br", "gzip", "identity"):
        r = client.simulate_get("/app.js", headers={"Host": "shop.localhost",
                                                    "Accept-Encoding": accept})
        sizes[accept] = len(r.content)
        assert instance.vfs.cache.bytes == sum(sizes.values())
    assert sizes["br"] < sizes["gzip"] < sizes["identity"] == len(JS)


def test_a_tie_in_accept_encoding_goes_to_the_smaller_variant(instance, client):
    """Above BEST_UNTIL Brotli runs at a faster level and can lose to gzip: a client
    taking both gets whichever is smaller."""
    import random

    from fazt.negotiation import pick

    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    text = " ".join(rng.choice(words) for _ in range(120_000)).encode()
    assert len(text) > compression.BEST_UNTIL
    deploy(instance.db, "words", [NewFile("words.txt", "text/plain; charset=utf-8", [text])])
    with instance.db.read() as conn:
        info = find_file(conn, "words", "words.txt")
    sizes = {v.encoding: v.size for v in info.variants}
    assert sizes["gzip"] < sizes["br"]
    assert pick(info, "br, gzip").encoding == "gzip"
    answer = client.simulate_get("/words.txt", headers={"Host": "words.localhost",
                                                        "Accept-Encoding": "gzip, br"})
    assert answer.headers["content-encoding"] == "gzip"
    assert gzip.decompress(answer.content) == text
