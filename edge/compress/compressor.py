"""Response compression on the request path: one call per reply, after the plugins' response phase.

Theory of operation. ``Compressor.from_config(cfg)`` is built once per worker; it is
None when no route has compression on, so the request path pays nothing then.
``Compressor.apply(ctx, status, headers, body, length)`` takes a reply head (the
fields as the client will get them, framing excluded) and its body (an iterator of
chunks, bytes, or None) and returns the head, body and length to send:

- not eligible (see ``edge.compress.negotiate``): everything unchanged, except
  ``Vary: Accept-Encoding`` when the answer depended on the request, and the weak
  ETag of a 304 that confirms an encoded copy;
- encoded: ``Content-Encoding`` set, the ETag weakened, ``Accept-Ranges`` and the
  digests of the identity bytes dropped, ``Vary`` merged; a streamed body becomes a
  streamed encoded body with an unknown length (HTTP/1.1 chunked, HTTP/2 DATA frames,
  HTTP/1.0 close-delimited), bytes become bytes with their new length.

The proxy path (``edge.app.Proxy._forward``) calls it after the body filters of the
plugins, so plugins see and filter identity bytes. For the cache, ``decide`` and
``head`` split the same work without a body: the cache picks the stored variant
named ``variant_of(decision)`` (one per coding: measured cheaper than encoding on
every hit, docs/cache.md "Compression"), serves it under ``head(...)``, and on a miss
stores the encoded stream ``apply`` returned.
"""

from __future__ import annotations

from typing import Any

from edge.compress.codecs import Encoders, Levels, encode_stream
from edge.compress.negotiate import IDENTITY, Decision, Rules, TypeFilter, decide, encoded_headers, identity_headers


class Compressor:
    """Per worker: the rules, the levels and which routes compress (by route index)."""

    __slots__ = ("rules", "encoders", "_on")

    def __init__(self, rules: Rules, levels: Levels, route_on: tuple[bool, ...]) -> None:
        self.rules = rules
        self.encoders = Encoders(levels)
        self._on = route_on

    @classmethod
    def from_config(cls, cfg: Any) -> "Compressor | None":
        """The compressor of a configuration, or None when no route compresses."""
        c = cfg.compression
        on = tuple(c.enabled if r.compression is None else r.compression for r in cfg.routes)
        if not any(on):
            return None
        rules = Rules(tuple(c.codecs), c.min_size, TypeFilter.parse(c.types, c.exclude_types))
        return cls(rules, Levels(c.gzip_level, c.br_quality, c.zstd_level), on)

    def enabled_for(self, route: Any) -> bool:
        return route is not None and self._on[route.index]

    def decide(self, ctx: Any, status: int, headers: list[tuple[str, str]], length: int | None) -> Decision | None:
        """The decision for one reply (None: the route does not compress). Cheap (no codec work):
        the cache uses it to pick the stored variant (``variant_of``) before it has a body."""
        route = ctx.route
        if route is None or not self._on[route.index]:
            return None
        return decide(ctx.method, ctx.headers.items(), status, headers, length, self.rules)

    @staticmethod
    def head(headers: list[tuple[str, str]], d: Decision) -> list[tuple[str, str]]:
        """The reply head the client gets for ``headers`` under ``d`` (no body work)."""
        if d.coding is not None:
            return encoded_headers(headers, d.coding)
        return identity_headers(headers, d) if d.vary or d.weaken_etag else headers

    def apply(self, ctx: Any, status: int, headers: list[tuple[str, str]], body: Any,
              length: int | None) -> tuple[list[tuple[str, str]], Any, int | None]:
        """The reply head, body and length the client gets (see the module text)."""
        if isinstance(body, bytes):
            length = len(body)
        d = self.decide(ctx, status, headers, length)
        if d is None:
            return headers, body, length
        if d.coding is None or body is None:
            return self.head(headers, d), body, length
        headers = encoded_headers(headers, d.coding)
        if isinstance(body, bytes):
            out = self.encoders.encode(body, d.coding)
            return headers, out, len(out)
        return headers, encode_stream(body, self.encoders.new(d.coding, length)), None


def variant_of(d: Decision | None) -> str:
    """The name of the stored variant a decision selects: the coding, or ``identity``."""
    return d.coding if d is not None and d.coding is not None else IDENTITY
