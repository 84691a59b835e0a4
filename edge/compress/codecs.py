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

gzip and brotli encoders are created per response (their bindings have no reset);
zstd contexts are reused through a worker's ``Encoders`` (see there), never shared.

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
from edge.errors import BodyLengthMismatch

OUT_MIN_BYTES = 16384      # encoded bytes gathered before a chunk is yielded (fewer, larger writes)
BROTLI_LGWIN = 19          # 512 KiB window: ngx_brotli's default `brotli_window`; bounds memory per stream
GZIP_MEM_LEVEL = 8         # zlib's default: ~256 KiB of state per stream
ZSTD_MAX_LEVEL = 19        # RFC 9659 §3: windows up to 8 MB; level 19 uses 8 MB, 20+ more
ZSTD_IDLE_MAX = 64         # idle zstd contexts a worker keeps for reuse (~1-3 MiB each at level 3)


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...
    def close(self) -> None: ...   # give back what the encoder holds, also after finish


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

    def close(self) -> None:
        pass  # nothing reusable: the zlib stream is freed with the object


class BrotliEncoder:
    __slots__ = ("_b",)

    def __init__(self, quality: int) -> None:
        self._b = brotli.Compressor(quality=quality, lgwin=BROTLI_LGWIN)

    def compress(self, data: bytes) -> bytes:
        return self._b.process(data)

    def finish(self) -> bytes:
        return self._b.finish()

    def close(self) -> None:
        pass  # nothing reusable: the brotli state is freed with the object


class ZstdEncoder:
    __slots__ = ("_owner", "_c", "_z")

    def __init__(self, owner: "Encoders", size: int | None) -> None:
        self._owner = owner
        self._c = owner._take_zstd()
        # a known size goes in the frame header (RFC 8878 §3.1.1.1.4) and lets zstd size its tables to the body
        self._z = self._c.compressobj(size=size if size is not None else -1)

    def compress(self, data: bytes) -> bytes:
        try:
            return self._z.compress(data)
        except zstandard.ZstdError as e:
            raise _size_error(e) from e

    def finish(self) -> bytes:
        try:
            out = self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        except zstandard.ZstdError as e:
            raise _size_error(e) from e
        finally:
            self.close()
        return out

    def close(self) -> None:
        c, self._c = self._c, None
        if c is not None:
            self._owner._give_zstd(c)  # once only: two streams on one context would corrupt both


def _size_error(e: Exception) -> BodyLengthMismatch:
    # The only way a zstd stream fails on valid input: the body was not the size it announced
    # (a caller passed a wrong length). An EdgeError, so the writer cuts the reply cleanly.
    return BodyLengthMismatch(f"body did not match the length given to the zstd encoder: {e}")


class Encoders:
    """One worker's encoder maker, at the configured levels.

    A ``ZstdCompressor`` costs ~25 µs to set up, more than compressing 1 KiB with it, so
    idle ones are kept (at most ``ZSTD_IDLE_MAX``) and reused; one is only ever lent to
    one stream at a time, since its ``compressobj`` share the compressor's context.
    gzip and brotli have no reusable context in their Python bindings.
    """

    __slots__ = ("levels", "_zstd_idle")

    def __init__(self, levels: Levels) -> None:
        self.levels = levels
        self._zstd_idle: list[zstandard.ZstdCompressor] = []

    def new(self, coding: str, size: int | None = None) -> Encoder:
        """An encoder for one body; ``size`` is its length when known (a hint, zstd only)."""
        if coding == GZIP:
            return GzipEncoder(self.levels.gzip)
        if coding == BR:
            return BrotliEncoder(self.levels.br)
        if coding == ZSTD:
            return ZstdEncoder(self, size)
        raise ValueError(f"unknown content coding {coding!r}")

    def encode(self, data: bytes, coding: str) -> bytes:
        """A whole body, encoded at once (answers held in memory, e.g. a small cached object)."""
        enc = self.new(coding, len(data))
        return enc.compress(data) + enc.finish()

    def _take_zstd(self) -> zstandard.ZstdCompressor:
        idle = self._zstd_idle
        return idle.pop() if idle else zstandard.ZstdCompressor(level=self.levels.zstd)

    def _give_zstd(self, c: zstandard.ZstdCompressor) -> None:
        if len(self._zstd_idle) < ZSTD_IDLE_MAX:
            self._zstd_idle.append(c)


def new_encoder(coding: str, levels: Levels) -> Encoder:
    """A one-off encoder (tests, scripts); the request path uses a worker's ``Encoders``."""
    return Encoders(levels).new(coding)


def encode_bytes(data: bytes, coding: str, levels: Levels) -> bytes:
    return Encoders(levels).encode(data, coding)


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
        encoder.close()
        close_body(source)
