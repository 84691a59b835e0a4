"""Metric names and a statsd client that never raises and never blocks a request.

Names (after the configured prefix, default ``edge``):
  ``route.<route>.requests.<1xx..5xx>``   counter, per response
  ``route.<route>.latency``               timer (ms), request start to last byte
  ``upstream.<pool>.<cause>``              counter, per upstream failure (connect_error, read_timeout, ...)
  ``plugin.<name>.<hook>.error``           counter, per isolated plugin failure
  ``internal_error``                       counter, per bug caught by the request path
gunicorn's own metrics (``gunicorn.requests``, ``gunicorn.workers``...) go to the same
statsd host under the same prefix (gunicorn.conf.py).

statsd speaks UDP: a send is one non-blocking datagram, and a full buffer or an
unreachable host loses the metric, never the request (counted in ``dropped``).
"""

from __future__ import annotations

import logging

log = logging.getLogger("edge.metrics")

_STATUS_CLASS = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Metrics:
    """Per-worker metrics client; all methods are no-ops when statsd is not configured."""

    def __init__(self, statsd_addr: str | None, prefix: str = "edge") -> None:
        self.dropped = 0
        self._client = None
        self._names: dict[str, tuple[tuple[str, ...], str]] = {}
        if statsd_addr:
            import statsd  # imported here: a node without metrics never loads it

            host, _, port = statsd_addr.rpartition(":")
            self._client = statsd.StatsClient(host.strip("[]") or "127.0.0.1", int(port), prefix=prefix)

    def incr(self, name: str, count: int = 1) -> None:
        if self._client is None:
            return
        try:
            self._client.incr(name, count)
        except OSError:
            self.dropped += 1

    def timing(self, name: str, seconds: float) -> None:
        if self._client is None:
            return
        try:
            self._client.timing(name, seconds * 1000.0)
        except OSError:
            self.dropped += 1

    def request(self, route: str, status: int, seconds: float) -> None:
        """One finished request: its status class counter and its latency."""
        if self._client is None:
            return
        names = self._names.get(route)
        if names is None:
            # Precomputed per route so the hot path does not format strings.
            names = self._names[route] = (
                tuple(f"route.{route}.requests.{c}" for c in _STATUS_CLASS),
                f"route.{route}.latency",
            )
        cls = status // 100 - 1
        try:
            if 0 <= cls < 5:
                self._client.incr(names[0][cls])
            self._client.timing(names[1], seconds * 1000.0)
        except OSError:
            self.dropped += 1
