"""Metric names and a statsd client that never raises and never blocks a request.

Names (after the configured prefix, default ``edge``):
  ``route.<route>.requests.<1xx..5xx>``   counter, per response
  ``route.<route>.latency``               timer (ms), request start to last byte
  ``upstream.<pool>.<cause>``              counter, per upstream failure (connect_error, read_timeout, ...)
  ``upstream.<pool>.<server>.up``         counter, the prober marked the server up (docs/upstreams.md)
  ``upstream.<pool>.<server>.down``       counter, the prober marked the server down
  ``upstream.<pool>.<server>.probe_failed``  counter, per failing health probe
  ``upstream.<pool>.<server>.ejected``     counter, per outlier ejection or Retry-After hold
  ``upstream.<pool>.retry``                counter, per retry on another server; ``.retry.<cause>`` per cause
                                           (connect_error, connect_timeout, reset, read_timeout, 502, 503, 504)
  ``upstream.<pool>.retry_budget_exhausted`` counter, per retry refused by the pool's retry budget
  ``upstream.<pool>.retry_after_hold``     counter, per 503 whose Retry-After held its server out of rotation
  ``plugin.<name>.<hook>.error``           counter, per isolated plugin failure
  ``plugin.<name>.<hook>.timeout``         counter, per overrun of the plugin's time budget
  ``plugin.<name>.<hook>.unavailable``     counter, per hook call while the plugin is not built (below)
  ``plugin.<name>.init_error``             counter, per failed ``__init__`` in a worker (retried with backoff)
  ``plugin.<name>.init_ok``                counter, a plugin built on a retry
  ``plugin.<name>.unknown_upstream``       counter, the plugin chose a pool that does not exist
  ``internal_error``                       counter, per bug caught by the request path
  ``tls.cert.<first name>.days_left``      gauge, whole days to a certificate's expiry (hourly, one worker per node)
  ``cache.<event>``                        counter, per cache event (hit, miss, stored, store_unavailable...: docs/cache.md)
gunicorn's own metrics (``gunicorn.requests``, ``gunicorn.workers``...) go to the same
statsd host under the same prefix (gunicorn.conf.py).

statsd speaks UDP: a send is one non-blocking datagram, and a full buffer or an
unreachable host loses the metric, never the request (counted in ``dropped``).
A statsd host name that does not resolve when the worker starts is one warning
line, not a worker that fails to boot (gunicorn would halt the master): the client
is created again on a later metric, at most once per ``RESOLVE_RETRY_S``.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("edge.metrics")

#: A statsd address that could not be resolved is tried again after this long.
RESOLVE_RETRY_S = 30.0

_STATUS_CLASS = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Metrics:
    """Per-worker metrics client; all methods are no-ops when statsd is not configured."""

    def __init__(self, statsd_addr: str | None, prefix: str = "edge") -> None:
        self.dropped = 0
        self._client = None
        self._names: dict[str, tuple[tuple[str, ...], str]] = {}
        self._addr = statsd_addr or None
        self._prefix = prefix
        self._retry_at = 0.0   # when to try creating the client again (an unresolvable host)
        self._warned = False
        if statsd_addr:
            self._connect()

    def _connect(self) -> None:
        import statsd  # imported here: a node without metrics never loads it

        host, _, port = (self._addr or "").rpartition(":")
        try:
            self._client = statsd.StatsClient(host.strip("[]") or "127.0.0.1", int(port), prefix=self._prefix)
        except OSError as e:  # name resolution: getaddrinfo in the client's constructor
            self._retry_at = time.monotonic() + RESOLVE_RETRY_S
            if not self._warned:
                self._warned = True
                log.warning("statsd %s unusable, metrics are dropped until it resolves: %s", self._addr, e)
            return
        if self._warned:
            log.info("statsd %s resolves again; %d metrics were dropped", self._addr, self.dropped)
            self._warned = False

    def _retry(self) -> bool:
        # only reached while the client is missing; a node without statsd returns at once
        if self._addr is None or time.monotonic() < self._retry_at:
            self.dropped += self._addr is not None
            return False
        self._connect()
        if self._client is None:
            self.dropped += 1
            return False
        return True

    def incr(self, name: str, count: int = 1) -> None:
        if self._client is None and not self._retry():
            return
        try:
            self._client.incr(name, count)
        except OSError:
            self.dropped += 1

    def gauge(self, name: str, value: float) -> None:
        if self._client is None and not self._retry():
            return
        try:
            self._client.gauge(name, value)
        except OSError:
            self.dropped += 1

    def timing(self, name: str, seconds: float) -> None:
        if self._client is None and not self._retry():
            return
        try:
            self._client.timing(name, seconds * 1000.0)
        except OSError:
            self.dropped += 1

    def request(self, route: str, status: int, seconds: float) -> None:
        """One finished request: its status class counter and its latency."""
        if self._client is None and not self._retry():
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
