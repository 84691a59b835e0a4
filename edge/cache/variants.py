"""Encoded variants of a stored response: the cache keeps gzip/br/zstd bodies beside the identity one.

Theory of operation
-------------------
Encoding a body costs far more than serving it from the store (docs/cache.md
"Compression", measured: a 100 KiB page costs 335-2,100 µs of codec work against a
hit's ~80 µs), so a hit of a compressible response is served from a stored encoded
variant rather than encoded again:

- the **origin's head is stored once**, with the identity body (``edge.cache.cache``,
  unchanged). Its strong ETag stays as the origin sent it, so the cache revalidates with
  it and a 304 merges into that one head (RFC 9111 §4.3.4): every variant is fresh again
  at once, because a variant has no head, freshness or validator of its own;
- the **bodies are stored per variant name** (``edge.compress.compressor.variant_of``:
  ``identity``, ``gzip``, ``br``, ``zstd``; not the raw ``Accept-Encoding``, which has
  thousands of spellings for four outcomes) under ``c:e:<h>:<version>:<coding>``, where
  ``version`` is the identity body's token: a new body (a 200 that replaces the object)
  has a new token, so the old variants are unreachable; a 304 keeps the token, so they
  stay. They are reached only through the identity object, so every purge (URL, prefix,
  tag; soft and hard) that hides the identity object hides its variants;
- the **client's head** is built on the way out with ``Compressor.head`` from the stored
  head (``Content-Encoding``, weak ETag, ``Vary: Accept-Encoding``), after the plugins'
  response phase, exactly as for an encoded backend response;
- on a **miss** that stores the response, the encoded stream that goes to the client
  (``Proxy.relay`` after the plugins) is teed into its variant, under the body token the
  identity body is about to be committed with (``Cache._store_tap`` sets ``tap.variants``);
- a hit whose variant is **not stored yet** encodes the stored identity body (the same
  ``Compressor.apply`` as the proxy path) and tees the encoded stream into the variant,
  committed only when it ended intact, in its own greenlet (the client never waits for
  the store). Best effort: two workers that miss the same variant at the same moment both
  encode and both write the same bytes;
- **small objects** (identity body under ``MIN_VARIANT_BYTES``) stay identity only and
  are encoded per hit: ~10 µs of zstd or gzip, less than the store round trip a variant
  lookup costs;
- the **size cap** (``max_object_size``) applies **per variant**: the identity body
  already fits it, an encoded variant is stored only when it fits too (an encoded body is
  almost always smaller). Variants larger than one store value (512 KiB) are chunked like
  identity bodies; a chunked variant is read whole before its head goes out (at most the
  cap in memory), so a chunk evicted under it means encoding again, never a body cut short.

HEAD, ranges and ``no-transform`` requests select identity (``Compressor.decide``) and
never look a variant up. A route without compression builds no ``VariantSource``
(``Cache._serve`` passes None), so it pays nothing. Plugins with body filters see
identity bytes: the proxy then encodes per hit as before (``Proxy.reply_stored``).

Metrics: ``cache.variant_hit`` (an encoded variant served from the store: no codec
work), ``cache.variant_encoded`` (a hit encoded the identity body), ``cache.variant_stored``
(an encoded variant was written).
"""

from __future__ import annotations

import logging
import marshal
import time
from typing import Any, Iterator

import gevent

from edge.cache.tee import tee
from edge.compress.compressor import Compressor
from edge.errors import StoreUnavailable

log = logging.getLogger("edge.cache")

#: identity bodies below this are encoded per hit, never stored encoded (docs/cache.md, measured)
MIN_VARIANT_BYTES = 1024
#: largest piece of an encoded body in one store value (memcached refuses items over 1 MB)
CHUNK_BYTES = 512 * 1024

_FORMAT = 1


def variant_key(h: str, version: str, coding: str) -> str:
    """Where the ``coding`` variant of the body ``version`` of URL hash ``h`` is stored."""
    return f"c:e:{h}:{version}:{coding}"


def variant_chunk_key(h: str, version: str, coding: str, n: int) -> str:
    return f"c:e:{h}:{version}:{coding}:{n}"


def encode_record(length: int, chunks: int, body: bytes | None) -> bytes:
    """A variant record: the encoded length, and the body inline or the number of its chunks."""
    return marshal.dumps((_FORMAT, length, chunks, body))


def decode_record(raw: bytes | None) -> tuple[int, int, bytes | None] | None:
    """``(length, chunks, inline body)``; None when absent or unreadable (encode again)."""
    if raw is None:
        return None
    try:
        t = marshal.loads(raw)
    except (ValueError, EOFError, TypeError):
        return None
    if type(t) is not tuple or len(t) != 4 or t[0] != _FORMAT:
        return None
    _, length, chunks, body = t
    if body is not None and len(body) != length:
        return None
    return length, chunks, body


def storable(version: str, length: int | None) -> bool:
    """Whether an identity body gets stored encoded variants (else: encoded per hit). A body of
    unknown length (a miss streaming a chunked response) counts as large: it may be."""
    return bool(version) and (length is None or length >= MIN_VARIANT_BYTES)


class VariantSource:
    """The encoded variants of one stored object, for one hit (built by ``Cache._serve``)."""

    __slots__ = ("cache", "h", "version", "length", "cap", "ttl_s", "filling")

    def __init__(self, cache, h: str, version: str, length: int | None, cap: int, expires_at: float,
                 filling: bool = False) -> None:
        self.cache = cache
        self.h = h
        self.version = version
        self.length = length
        self.cap = cap
        # a miss storing the identity body now: no variant can exist yet (no lookup); the
        # encoding is the miss's own, not a hit's (not counted as ``variant_encoded``)
        self.filling = filling
        # a variant lives no longer than the identity body it was made from
        self.ttl_s = expires_at - time.time()

    def compress(self, compressor: Compressor, ctx: Any, reply: Any) -> None:
        """Set ``reply``'s head and body to what this client gets: a stored variant when there is
        one, else the identity body encoded now (and stored for the next hit)."""
        metrics = self.cache.metrics
        d = compressor.decide(ctx, reply.status, reply.headers, reply.length)
        if d is None:
            return
        coding = d.coding
        if coding is None:
            reply.headers = compressor.head(reply.headers, d)
            return
        if storable(self.version, self.length) and self.ttl_s > 1.0:
            found = None if self.filling else self._load(coding)
            if found is not None:
                metrics.incr("cache.variant_hit")
                reply.headers = compressor.head(reply.headers, d)
                reply.body, reply.length = found
                reply.trailers_from = None
                return
            keep = True
        else:
            keep = False
        if not self.filling:
            metrics.incr("cache.variant_encoded")
        headers, body, length = compressor.apply(ctx, reply.status, reply.headers, reply.body, reply.length)
        reply.trailers_from = None
        reply.headers = headers
        if not keep or body is None:
            reply.body, reply.length = body, length
        elif isinstance(body, bytes):
            if len(body) <= self.cap:
                gevent.spawn(self._write, coding, [body], len(body))
            reply.body, reply.length = body, length
        else:
            reply.body, reply.length = self._tee(coding, body), None

    def _load(self, coding: str) -> tuple[bytes, int] | None:
        store = self.cache.store
        try:
            rec = decode_record(store.get(variant_key(self.h, self.version, coding)))
            if rec is None:
                return None
            length, chunks, body = rec
            if body is not None:
                return body, length
            names = [variant_chunk_key(self.h, self.version, coding, i) for i in range(chunks)]
            got = store.get_many(names)
        except StoreUnavailable as e:
            self.cache.health.failed(e)
            return None
        pieces = [got.get(n) for n in names]
        if any(p is None for p in pieces):
            return None  # a chunk was evicted: encode again (and store it again)
        data = b"".join(pieces)
        return (data, length) if len(data) == length else None

    def _tee(self, coding: str, body: Iterator[bytes]) -> Iterator[bytes]:
        """Stream the encoded body to the client, keeping a copy up to the cap; store it when intact."""
        def on_end(copy: list[bytes] | None, size: int, intact: bool) -> None:
            if intact and copy is not None:
                gevent.spawn(self._write, coding, copy, size)

        return tee(body, self.cap, on_end)

    def _write(self, coding: str, copy: list[bytes], size: int) -> None:
        """The chunks first, the record that points to them last (a reader never sees half)."""
        cache = self.cache
        try:
            ttl_s = self.ttl_s
            if ttl_s <= 1.0:
                return
            data = b"".join(copy)
            store = cache.store
            if size <= CHUNK_BYTES:
                store.set(variant_key(self.h, self.version, coding), encode_record(size, 0, data), ttl_s)
            else:
                n = (size + CHUNK_BYTES - 1) // CHUNK_BYTES
                for i in range(n):
                    store.set(variant_chunk_key(self.h, self.version, coding, i), data[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES],
                              ttl_s + 1.0)
                store.set(variant_key(self.h, self.version, coding), encode_record(size, n, None), ttl_s)
            cache.metrics.incr("cache.variant_stored")
        except StoreUnavailable as e:
            cache.health.failed(e)
        except Exception:  # a bug must not kill the worker's hub; the client already has its answer
            log.exception("storing the %s variant of %s failed", coding, self.h)
            cache.metrics.incr("cache.store_error")
