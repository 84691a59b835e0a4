"""Encoded variants of stored responses (edge.cache.variants; issue 10, item 5): keys, records,
which bodies get variants, and one hit's choice between a stored variant and encoding now,
against a real MemoryStore and a real Compressor."""

from __future__ import annotations

import gzip
import time

import brotli
import gevent
import pytest

from edge.cache import keys, variants
from edge.cache.variants import VariantSource, decode_record, encode_record, storable, variant_chunk_key, variant_key
from edge.compress.compressor import Compressor
from edge.config import parse_config
from edge.context import Reply
from edge.store.memory import MemoryStore
from tests.unit.test_compress import CONF, _ctx


class Counts:
    def __init__(self) -> None:
        self.c: dict[str, int] = {}

    def incr(self, name: str, n: int = 1) -> None:
        self.c[name] = self.c.get(name, 0) + n


class Health:
    def failed(self, e) -> None:
        raise AssertionError(e)


class FakeCache:
    """What VariantSource uses of ``Cache``: its store, metrics and store health."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.metrics = Counts()
        self.health = Health()


def test_variant_keys_are_per_url_body_and_coding_and_memcached_safe():
    h = keys.digest("http://example.com/a")
    k = variant_key(h, "abc123", "gzip")
    assert k == f"c:e:{h}:abc123:gzip"
    assert len({variant_key(h, v, c) for v in ("a", "b") for c in ("gzip", "br", "zstd")}) == 6
    assert variant_key(h, "a", "gzip") != variant_key(keys.digest("http://example.com/b"), "a", "gzip")
    for key in (k, variant_chunk_key(h, "abc123", "zstd", 3)):
        assert len(key) < 250 and " " not in key  # memcached's key rules


@pytest.mark.parametrize("length, chunks, body", [(5, 0, b"hello"), (0, 0, b""), (2_000_000, 4, None)])
def test_record_round_trip(length, chunks, body):
    assert decode_record(encode_record(length, chunks, body)) == (length, chunks, body)


@pytest.mark.parametrize("raw", [None, b"", b"\x00garbage", encode_record(6, 0, b"hello")[:-1],
                                 encode_record(9, 0, b"hello")])  # truncated; length that does not match
def test_unreadable_records_are_misses(raw):
    assert decode_record(raw) is None


@pytest.mark.parametrize("version, length, expected", [
    ("v", variants.MIN_VARIANT_BYTES, True),
    ("v", variants.MIN_VARIANT_BYTES - 1, False),   # small: encoded per hit (docs/cache.md, measured)
    ("v", None, True),                              # a chunked miss: may be large
    ("", 100_000, False),                           # a record stored before body tokens
])
def test_which_bodies_get_variants(version, length, expected):
    assert storable(version, length) is expected


BODY = b"The quick brown fox jumps over the lazy dog. " * 100


def _hit(cache, compressor, accept, body=BODY, length=None, filling=False, method="GET"):
    src = VariantSource(cache, "h" * 32, "ver1", len(body) if length is None else length, 1 << 20, time.time() + 60,
                        filling=filling)
    reply = Reply(200, "OK", [("Content-Type", "text/plain"), ("ETag", '"v1"')], body, len(body))
    src.compress(compressor, _ctx(0, [("Accept-Encoding", accept)], method), reply)
    if not isinstance(reply.body, (bytes, type(None))):
        reply.body = b"".join(reply.body)
    gevent.sleep(0)  # the spawned store write
    return reply


def test_first_hit_encodes_and_stores_the_second_is_served_from_the_store():
    cache, c = FakeCache(), Compressor.from_config(parse_config(CONF))
    first = _hit(cache, c, "gzip")
    assert dict(first.headers)["Content-Encoding"] == "gzip" and dict(first.headers)["ETag"] == 'W/"v1"'
    assert gzip.decompress(first.body) == BODY
    assert cache.metrics.c == {"cache.variant_encoded": 1, "cache.variant_stored": 1}
    second = _hit(cache, c, "gzip")
    assert second.body == first.body and second.length == len(first.body)
    assert dict(second.headers)["Content-Encoding"] == "gzip" and "accept-encoding" in dict(second.headers)["Vary"].lower()
    assert cache.metrics.c == {"cache.variant_encoded": 1, "cache.variant_stored": 1, "cache.variant_hit": 1}
    br = _hit(cache, c, "br")  # another coding: its own variant
    assert brotli.decompress(br.body) == BODY and cache.metrics.c["cache.variant_encoded"] == 2


def test_streamed_bodies_are_teed_and_large_variants_chunked(monkeypatch):
    monkeypatch.setattr(variants, "CHUNK_BYTES", 100)  # small pieces: several chunk keys
    cache, c = FakeCache(), Compressor.from_config(parse_config(CONF))
    body = bytes(range(256)) * 40  # compresses poorly: several chunks
    src = VariantSource(cache, "h" * 32, "ver1", len(body), 1 << 20, time.time() + 60)
    reply = Reply(200, "OK", [("Content-Type", "text/plain")], iter([body[:5000], body[5000:]]), len(body))
    src.compress(c, _ctx(0, [("Accept-Encoding", "gzip")]), reply)
    assert reply.length is None
    sent = b"".join(reply.body)
    gevent.sleep(0)
    length, chunks, inline = decode_record(cache.store.get(variant_key("h" * 32, "ver1", "gzip")))
    assert inline is None and chunks > 1 and length == len(sent)
    again = Reply(200, "OK", [("Content-Type", "text/plain")], iter([body]), len(body))
    src.compress(c, _ctx(0, [("Accept-Encoding", "gzip")]), again)
    assert again.body == sent and gzip.decompress(sent) == body
    # a lost chunk: the variant is encoded again rather than served short
    cache.store.delete(variant_chunk_key("h" * 32, "ver1", "gzip", 0))
    third = Reply(200, "OK", [("Content-Type", "text/plain")], iter([body]), len(body))
    src.compress(c, _ctx(0, [("Accept-Encoding", "gzip")]), third)
    assert gzip.decompress(b"".join(third.body)) == body and cache.metrics.c["cache.variant_encoded"] == 2


def test_an_abandoned_stream_stores_nothing():
    cache, c = FakeCache(), Compressor.from_config(parse_config(CONF))
    src = VariantSource(cache, "h" * 32, "ver1", len(BODY), 1 << 20, time.time() + 60)
    reply = Reply(200, "OK", [("Content-Type", "text/plain")], iter([BODY, BODY]), 2 * len(BODY))
    src.compress(c, _ctx(0, [("Accept-Encoding", "gzip")]), reply)
    it = iter(reply.body)
    next(it)
    it.close()  # the client went away
    gevent.sleep(0)
    assert cache.store.get(variant_key("h" * 32, "ver1", "gzip")) is None


def test_small_bodies_and_identity_clients_store_nothing():
    cache, c = FakeCache(), Compressor.from_config(parse_config(CONF))
    small = b"x" * 600  # above min_size (100), below MIN_VARIANT_BYTES
    r = _hit(cache, c, "gzip", small)
    assert gzip.decompress(r.body) == small and "cache.variant_stored" not in cache.metrics.c
    ident = _hit(cache, c, "identity")
    assert ident.body == BODY and "Content-Encoding" not in dict(ident.headers)
    assert "accept-encoding" in dict(ident.headers)["Vary"].lower()  # a downstream cache must not reuse it blindly
    head = _hit(cache, c, "gzip", method="HEAD")
    assert "Content-Encoding" not in dict(head.headers)
    assert cache.metrics.c == {"cache.variant_encoded": 1}


def test_a_miss_tees_without_looking_up_or_counting_an_encoding():
    cache, c = FakeCache(), Compressor.from_config(parse_config(CONF))
    miss = _hit(cache, c, "gzip", length=None, filling=True)
    assert gzip.decompress(miss.body) == BODY
    assert cache.metrics.c == {"cache.variant_stored": 1}
    hit = _hit(cache, c, "gzip")
    assert hit.body == miss.body and cache.metrics.c == {"cache.variant_stored": 1, "cache.variant_hit": 1}


def test_a_route_without_compression_is_untouched():
    cache, c = FakeCache(), Compressor.from_config(parse_config(CONF))
    src = VariantSource(cache, "h" * 32, "ver1", len(BODY), 1 << 20, time.time() + 60)
    headers = [("Content-Type", "text/plain")]
    reply = Reply(200, "OK", headers, BODY, len(BODY))
    src.compress(c, _ctx(1, [("Accept-Encoding", "gzip")]), reply)
    assert reply.headers is headers and reply.body is BODY and cache.metrics.c == {}
