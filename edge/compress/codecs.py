"""Streaming encoders for gzip, brotli and zstd: chunks in, chunks out, bounded memory.

Theory of operation. ``new_encoder(coding, levels)`` returns an object with
``compress(data) -> bytes`` and ``finish() -> bytes``; ``encode_stream`` drives one
over a body iterator and ``encode_bytes`` over a whole body held in memory.

Each encoder keeps only its own window and tables (gzip 32 KiB window + ~256 KiB of
deflate state at memLevel 8; brotli a 512 KiB ring buffer at ``lgwin=19``; zstd at
level 3 a 2 MiB window at most), never the body: memory per response is bounded
whatever the body's size. Codecs buffer input until they have a block worth
emitting, so small upstream chunks do not each become a tiny write; what they emit
is gathered up to ``OUT_MIN_BYTES`` before it is yielded, and the rest is flushed
once at the end (``finish``). No sync flush happens mid-stream: it would cost
ratio on every chunk, and a body that must arrive as it is produced (Server-Sent
Events) is excluded by type (``text/event-stream``) rather than flushed per event.

Objects are created per response (zlib and brotli have no reset; a
``ZstdCompressor`` shares one context among the ``compressobj`` it creates, so two
greenlets must never use one: creating it costs ~10 µs).

RFC 9110 §8.4.1.3 (gzip is the gzip file format, RFC 1952: zlib ``wbits=31``),
RFC 7932 (brotli, registered as ``br``), RFC 8878 and RFC 9659 (zstd; §3 of RFC 9659:
the encoder must not need a window over 8 MB to decode, so levels above 19 are refused).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

import brotli
import zstandard

from edge.compress.negotiate import BR, GZIP, ZSTD
from edge.context import close_body

OUT_MIN_BYTES = 16384      # encoded bytes gathered before a chunk is yielded (fewer, larger writes)
BROTLI_LGWIN = 19          # 512 KiB window: ngx_brotli's default `brotli_window`; bounds memory per stream
GZIP_MEM_LEVEL = 8         # zlib's default: ~256 KiB of state per stream
ZSTD_MAX_LEVEL = 19        # RFC 9659 §3: windows up to 8 MB; level 19 uses 8 MB, 20+ more


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Levels:
    """Compression levels per coding; the defaults are the fast end, as nginx's
    ``gzip_comp_level 1``: on a proxy the CPU spent per byte is the cost that scales."""

    gzip: int = 1
    br: int = 4
    zstd: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.gzip <= 9:
            raise ValueError(f"gzip: level must be 1-9 (got {self.gzip})")
        if not 0 <= self.br <= 11:
            raise ValueError(f"br: quality must be 0-11 (got {self.br})")
        if not 1 <= self.zstd <= ZSTD_MAX_LEVEL:
            raise ValueError(f"zstd: level must be 1-{ZSTD_MAX_LEVEL} (got {self.zstd})")


class GzipEncoder:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        # wbits 16+15: the gzip container (RFC 1952) around a 32 KiB-window deflate stream
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31, GZIP_MEM_LEVEL)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class BrotliEncoder:
    __slots__ = ("_b",)

    def __init__(self, quality: int) -> None:
        self._b = brotli.Compressor(quality=quality, lgwin=BROTLI_LGWIN)

    def compress(self, data: bytes) -> bytes:
        return self._b.process(data)

    def finish(self) -> bytes:
        return self._b.finish()


class ZstdEncoder:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        self._z = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def finish(self) -> bytes:
        return self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def new_encoder(coding: str, levels: Levels) -> Encoder:
    if coding == GZIP:
        return GzipEncoder(levels.gzip)
    if coding == BR:
        return BrotliEncoder(levels.br)
    if coding == ZSTD:
        return ZstdEncoder(levels.zstd)
    raise ValueError(f"unknown content coding {coding!r}")


def encode_bytes(data: bytes, coding: str, levels: Levels) -> bytes:
    """A whole body, encoded at once (answers held in memory, e.g. a small cached object)."""
    enc = new_encoder(coding, levels)
    return enc.compress(data) + enc.finish()


def encode_stream(source: Iterable[bytes], encoder: Encoder, out_min_bytes: int = OUT_MIN_BYTES) -> Iterator[bytes]:
    """``source`` encoded chunk by chunk. Closing this iterator early (the client went away)
    closes ``source`` too, so the backend connection is released, not left to the GC."""
    pending: list[bytes] = []
    size = 0
    compress = encoder.compress
    try:
        for chunk in source:
            out = compress(chunk)
            if out:
                pending.append(out)
                size += len(out)
                if size >= out_min_bytes:
                    yield pending[0] if len(pending) == 1 else b"".join(pending)
                    pending = []
                    size = 0
        pending.append(encoder.finish())
        yield b"".join(pending)
    finally:
        close_body(source)
