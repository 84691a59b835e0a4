"""The access log: one JSON object per request, written after the last byte.

Fields: ``time`` (ISO 8601, UTC), ``client`` (after trusted-proxy resolution),
``method``, ``path`` (as the client sent it, with the query), ``status``,
``bytes`` (body bytes sent), ``bytes_received`` (request body bytes read), ``duration_ms``, ``route``, ``upstream`` (server that
answered, if any), ``upstream_ms``, ``request_id``, ``protocol``, ``error`` (cause of
a failure, if any). One line per request, so ``jq`` and log shippers read it as is.

The file is opened per worker in append mode; lines are short single writes, so
workers writing the same file do not interleave within a line. ``-`` is stdout.
``reopen`` (on ``USR1``, with gunicorn's own logs) opens the path again, so that
logrotate can move the file away and signal, as for nginx.
"""

from __future__ import annotations

import json
import sys
import time

from edge.context import RequestContext


class AccessLog:
    def __init__(self, target: str) -> None:
        self._target = target
        self._stream = sys.stdout if target == "-" else self._open()
        self._second = 0
        self._stamp = ""

    def _open(self):
        return open(self._target, "a", buffering=1, encoding="utf-8")

    def reopen(self) -> None:
        """Open the file again (after a rotation moved it); on failure keep the old stream."""
        if self._stream is sys.stdout:
            return
        try:
            fresh = self._open()
        except OSError:
            return  # e.g. the directory is gone: keep writing where we were rather than lose lines
        old, self._stream = self._stream, fresh
        old.close()

    def write(self, ctx: RequestContext, duration_s: float) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        route = ctx.route
        error = ctx.error
        entry = {
            "time": f"{self._stamp}.{int((now - second) * 1000):03d}Z",
            "client": ctx.client_ip,
            "method": ctx.method,
            "path": ctx.raw_path + ("?" + ctx.query if ctx.query else ""),
            "status": ctx.status,
            "bytes": ctx.bytes_sent,
            "bytes_received": ctx.bytes_received,
            "duration_ms": round(duration_s * 1000, 3),
            "route": route.name if route is not None else None,
            "upstream": ctx.upstream_addr,
            "upstream_ms": round(ctx.upstream_time * 1000, 3) if ctx.upstream_time is not None else None,
            "request_id": ctx.request_id,
            "protocol": "HTTP/2" if ctx.http2 else f"HTTP/{ctx.version}",
            "error": getattr(error, "metric", type(error).__name__) if error is not None else None,
        }
        try:
            self._stream.write(json.dumps(entry, separators=(",", ":")) + "\n")
        except (OSError, ValueError):
            pass  # a full disk or closed stream must not fail requests; the error log says why elsewhere

    def close(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()
