"""The I/O half of upstream health: the node's prober, and each worker's sync with the store.

Theory of operation
-------------------
``HealthService`` is built per worker, after fork (``edge.runtime.build_worker_state``),
and runs two kinds of greenlets, stopped by ``close()`` (``WorkerState.close``):

*The sync loop* (every worker). Every refresh period (``health.refresh``, at most the
probe interval) it writes the outlier changes this worker queued
(``PoolHealth.changes``; it is also woken at once when one is queued), reads every
pool's shared state in one ``get_many`` (``edge.upstream.shared_state``) and hands it
to ``PoolHealth.apply_shared``, and publishes this worker's row (in-flight attempts,
EWMA latency, last error per server) for ``python -m edge status``. So every worker
sees a probe verdict, a drain or another worker's ejection within one refresh period,
and the request path never waits on the store. When the store fails, the worker keeps
the last state it read, its own outlier detection keeps working, its queued changes
wait for the store, and one line is logged per change of the store's availability.

*The prober* (one per node). Every worker tries to take the lease
``upstream:lease`` (``Store.acquire_lock`` with a TTL); the holder renews it (a
``cas`` of its own token with a fresh TTL) every quarter of the TTL and runs one
greenlet per probed server. So a backend receives one probe per interval whatever
the number of workers; if the holder dies, its lease expires and another worker
takes over within one TTL (``lease_ttl_s``). On a fleet store (redis, memcached) the
lease is shared by every node with the same ``key_prefix``: one prober for the fleet.
The prober writes a server's verdict (``upstream:<pool>:active``) when its state
changes (and every ``REWRITE_EVERY`` probes, in case the store lost it), emits ``upstream.<pool>.<server>.up`` / ``.down`` and
``upstream.<pool>.<server>.probe_failed``, and logs each transition.

A probe is one HTTP/1.1 request on a fresh connection (``Connection: close``): the
configured method, path and Host (checked when the configuration was loaded), passing
when the status is in ``expect_status`` and, if ``expect_body`` is set, the body
holds that text within its first ``max_body_bytes`` (read no further). The whole
probe, connect included, must finish within ``timeout``. A TLS server (``https://``) is
probed over TLS with the pool's client context, SNI and verification name
(``edge.upstream.tls.handshake``, as for requests): a handshake that fails (wrong name,
unknown CA, refused client certificate) is a failing probe whose reason says why.
"""

from __future__ import annotations

import logging
import os
import random
import socket as _pysocket
import time
from typing import Any

import gevent
import httptools
from gevent import socket as _gsocket
from gevent.event import Event

from edge.errors import ConnectTimeout, StoreUnavailable, TLSHandshakeError
from edge.upstream import shared_state as shared
from edge.upstream import tls as backend_tls
from edge.upstream.health import Active, ActiveStatus, active_step, metric_label

log = logging.getLogger("edge.upstream.health")

#: a worker row lives this many refresh periods unless rewritten
ROW_PERIODS = 4
#: the worker list is re-checked every this many refresh periods
REGISTER_EVERY = 10
#: the prober rewrites a server's verdict every this many probes even without a change
REWRITE_EVERY = 10


def lease_ttl_s(intervals: list[float]) -> float:
    """The prober lease's TTL: two of the longest probe intervals, within 1-30 s."""
    return min(30.0, max(1.0, 2.0 * max(intervals, default=0.0)))


# ---------------------------------------------------------------------------- one probe


class _ProbeParse:
    __slots__ = ("head_done", "done", "body", "max_body")

    def __init__(self, max_body: int) -> None:
        self.head_done = False
        self.done = False
        self.body = b""
        self.max_body = max_body

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        room = self.max_body - len(self.body)
        if room > 0:
            self.body += data[:room]

    def on_message_complete(self) -> None:
        self.done = True


def probe(host: str, port: int, check, authority: str, tls=None, tls_name: str | None = None) -> tuple[bool, str]:
    """Run one probe of ``check`` (``ActiveHealthConfig``) against host:port: (passed, why not).
    ``tls`` is the pool's client context for a TLS server (``Server.tls``, checked against
    ``tls_name``): the probe then speaks HTTPS as requests do, and a failed handshake fails it."""
    timer = gevent.Timeout(check.timeout)
    timer.start()
    sock = raw = None
    try:
        sock = _gsocket.create_connection((host, port))
        if tls is not None:
            # the same handshake (verification, SNI, client certificate) as a proxied request,
            # so a server a request could not reach is down, and a TLS server is not probed in
            # plain HTTP it would refuse; it closes the socket itself when it fails
            raw, sock = sock, None
            sock = backend_tls.handshake(raw, tls, tls_name or host, authority, time.monotonic() + check.timeout)
            sock.settimeout(None)  # blocking reads, bounded by the probe's timer
        head = (f"{check.method} {check.path} HTTP/1.1\r\nHost: {check.host or authority}\r\n"
                f"User-Agent: edge-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        sock.sendall(head.encode("latin-1"))
        p = _ProbeParse(check.max_body_bytes)
        parser = httptools.HttpResponseParser(p)
        want_body = check.expect_body is not None
        needle = (check.expect_body or "").encode()
        while True:
            data = sock.recv(65536)
            if not data:
                if not p.head_done:
                    return False, "connection closed before a response"
                break
            parser.feed_data(data)
            if p.head_done and (not want_body or p.done or needle in p.body or len(p.body) >= p.max_body):
                break
        status = parser.get_status_code()
        if status not in check.expect_status:
            return False, f"status {status}"
        if want_body and needle not in p.body:
            return False, "expected body text not found"
        return True, ""
    except gevent.Timeout as e:
        if e is not timer:
            raise
        return False, f"no answer within {check.timeout:g}s"
    except httptools.HttpParserError as e:
        return False, f"invalid response: {e}"
    except (TLSHandshakeError, ConnectTimeout) as e:
        return False, str(e)
    except OSError as e:
        return False, f"connect/read failed: {e.strerror or e}"
    finally:
        timer.close()
        if sock is not None:
            sock.close()
        if raw is not None:
            raw.close()  # the TCP socket, in case the timer stopped its handshake (a no-op once wrapped)


# ---------------------------------------------------------------------------- the service


class HealthService:
    """Per worker: the sync loop, and the prober while this worker holds the lease."""

    def __init__(self, cfg, pools: dict[str, Any], store, metrics, worker_id: str | None = None,
                 wall=time.time, mono=time.monotonic) -> None:
        self.pools = pools
        self.store = store
        self.metrics = metrics
        self.worker_id = worker_id or f"{_pysocket.gethostname()}:{os.getpid()}"
        self.wall, self.mono = wall, mono
        self.labels = {name: pool.health.labels for name, pool in pools.items()}
        self.checks = {name: u.health.active for name, u in cfg.upstreams.items() if u.health.active is not None}
        refresh = [u.health.refresh for u in cfg.upstreams.values()]
        refresh += [c.interval for c in self.checks.values()]
        self.refresh_s = min(refresh, default=1.0)
        self.lease_ttl_s = lease_ttl_s([c.interval for c in self.checks.values()])
        self.max_ejection = {name: u.health.passive.max_ejection for name, u in cfg.upstreams.items()}
        self.store_ok = True
        self.lease: str | None = None
        self._wake = Event()
        self._greenlets: list[gevent.Greenlet] = []
        self._probers: list[gevent.Greenlet] = []
        self._loops = 0
        for pool in pools.values():
            pool.health.metrics = metrics
            pool.health.notify = self._wake.set

    def start(self) -> None:
        self._greenlets.append(gevent.spawn(self._sync_loop))
        if self.checks:
            self._greenlets.append(gevent.spawn(self._lease_loop))

    def close(self) -> None:
        self._stop_probers()
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []
        if self.lease is not None:
            try:
                self.store.release_lock(shared.LEASE_KEY, self.lease)
            except StoreUnavailable:
                pass  # the TTL frees it
            self.lease = None

    # -- store availability --------------------------------------------------------

    def _store_failed(self, e: BaseException) -> None:
        if self.store_ok:
            self.store_ok = False
            log.warning("upstream health: store unavailable, keeping the last known state: %s", e)

    def _store_back(self) -> None:
        if not self.store_ok:
            self.store_ok = True
            log.warning("upstream health: store available again")

    # -- sync loop -----------------------------------------------------------------

    def _sync_loop(self) -> None:
        while True:
            try:
                self.sync_once()
            except StoreUnavailable as e:
                self._store_failed(e)
            except Exception:
                # a bug must not end health sharing in this worker for good: logged, and the loop goes on
                log.exception("upstream health: sync failed")
            self._wake.clear()
            self._wake.wait(self.refresh_s)

    def sync_once(self) -> None:
        """Write queued changes, read the shared state, publish this worker's row."""
        self._write_changes()
        snaps = shared.read_pools(self.store, self.labels)
        now_m, now_w = self.mono(), self.wall()
        for name, pool in self.pools.items():
            self._apply(pool.health, snaps[name], now_m, now_w)
        self._publish(now_m, now_w)
        self._store_back()

    def _write_changes(self) -> None:
        for name, pool in self.pools.items():
            h = pool.health
            changes = h.take_changes()
            now_m, now_w = self.mono(), self.wall()
            for i, c in enumerate(changes):
                until_w = now_w + (c.until - now_m) if c.until else 0.0
                rec = {"until": until_w, "count": c.count, "at": now_w + (c.at - now_m), "reason": c.reason, "by": self.worker_id}
                ttl = max(until_w - now_w, 0.0) + 2 * self.max_ejection[name]
                try:
                    self.store.set(shared.eject_key(name, h.labels[c.index]), shared.encode(rec), ttl)
                except StoreUnavailable:
                    for later in changes[i:]:   # kept for the next round, unless a newer change came meanwhile
                        h.changes.setdefault(later.index, later)
                    raise

    def _apply(self, h, snap: shared.PoolSnapshot, now_m: float, now_w: float) -> None:
        index = h.index_of
        down = [index[lb] for lb, rec in snap.active.items() if lb in index and rec.get("state") == Active.UNHEALTHY.value]
        drained = [index[lb] for lb in snap.drained if lb in index]
        ejections = {}
        for lb, rec in snap.ejections.items():
            if lb not in index or rec.get("by") == self.worker_id:
                continue
            until_w = float(rec.get("until") or 0.0)
            until = now_m + (until_w - now_w) if until_w else 0.0
            if until_w and until <= now_m:
                continue  # over already: each worker opens its own half-open trial
            ejections[index[lb]] = (until, int(rec.get("count") or 0), now_m + (float(rec.get("at") or 0.0) - now_w))
        h.apply_shared(down, drained, ejections, now_m)

    def _publish(self, now_m: float, now_w: float) -> None:
        row = {}
        for name, pool in self.pools.items():
            h = pool.health
            servers = {}
            for i, lb in enumerate(h.labels):
                err, at = h.last_error[i]
                servers[lb] = {"inflight": h.inflight[i], "ewma_ms": round(h.ewma_s[i] * 1000.0, 3),
                               "error": err, "error_at": now_w + (at - now_m) if err else 0.0}
            row[name] = servers
        self.store.set(shared.worker_key(self.worker_id), shared.encode(row), ROW_PERIODS * self.refresh_s + 2.0)
        if self._loops % REGISTER_EVERY == 0:
            shared.register_worker(self.store, self.worker_id)
        self._loops += 1

    # -- prober ----------------------------------------------------------------------

    def _lease_loop(self) -> None:
        ttl = self.lease_ttl_s
        while True:
            try:
                if self.lease is None:
                    self.lease = self.store.acquire_lock(shared.LEASE_KEY, ttl)
                    if self.lease is not None:
                        log.info("upstream health: this worker (%s) probes the backends", self.worker_id)
                        self._start_probers()
                elif not self.store.cas(shared.LEASE_KEY, self.lease.encode(), self.lease.encode(), ttl):
                    log.warning("upstream health: prober lease lost; another worker probes now")
                    self.lease = None
                    self._stop_probers()
                self._store_back()
            except StoreUnavailable as e:
                self._store_failed(e)
                if self.lease is not None:
                    # cannot renew it: stop before the TTL hands it to someone else
                    self.lease = None
                    self._stop_probers()
            except Exception:
                log.exception("upstream health: prober lease step failed")
            gevent.sleep(ttl / 4)

    def _start_probers(self) -> None:
        try:
            snaps = shared.read_pools(self.store, {n: self.labels[n] for n in self.checks})
        except StoreUnavailable:
            snaps = {n: shared.PoolSnapshot() for n in self.checks}
        for name, check in self.checks.items():
            pool = self.pools[name]
            for server in pool.servers:
                rec = snaps[name].active.get(server.authority) or {}
                state = Active.UNHEALTHY if rec.get("state") == Active.UNHEALTHY.value else Active.HEALTHY
                start = ActiveStatus(state, 0, float(rec.get("since") or 0.0), str(rec.get("error") or ""))
                self._probers.append(gevent.spawn(self._probe_loop, name, check, server, start))

    def _stop_probers(self) -> None:
        gevent.killall(self._probers, block=False)
        self._probers = []

    def _probe_loop(self, pool: str, check, server, status: ActiveStatus) -> None:
        label = server.authority
        names = {s: f"upstream.{pool}.{metric_label(label)}.{s}" for s in ("up", "down", "probe_failed")}
        written = status.state
        probes = 0
        rnd = random.Random()
        gevent.sleep(rnd.uniform(0, check.interval))   # spread the servers' probes over the interval
        while True:
            passed, error = probe(server.host, server.port, check, label, server.tls, server.tls_name)
            new = active_step(status, passed, check.rise, check.fall, self.wall(), error)
            if not passed:
                self.metrics.incr(names["probe_failed"])
            if new.state is not status.state:
                self.metrics.incr(names["up" if new.state is Active.HEALTHY else "down"])
                if new.state is Active.HEALTHY:
                    log.warning("upstream %s: %s is up (%d probes passed)", pool, label, check.rise)
                else:
                    log.warning("upstream %s: %s is down (%d probes failed, last: %s)", pool, label, check.fall, error)
            status = new
            probes += 1
            # written on a change, and again now and then: a store that lost its data (a Redis
            # restarted without persistence) must not keep a down server in rotation for good
            if status.state is not written or probes % REWRITE_EVERY == 0:
                written = self._write_active(pool, label, status, written)
            gevent.sleep(check.interval * (1.0 + rnd.uniform(-check.jitter, check.jitter)))

    def _write_active(self, pool: str, label: str, status: ActiveStatus, written: Active) -> Active:
        def change(value: dict) -> dict:
            value = dict(value)
            value[label] = {"state": status.state.value, "since": status.since, "error": status.error}
            return value

        try:
            shared.update(self.store, shared.active_key(pool), change, {})
        except StoreUnavailable as e:
            self._store_failed(e)
            return written  # tried again after the next probe
        return status.state


def start_health(cfg, pools: dict[str, Any], store, metrics) -> HealthService | None:
    """Build and start the worker's health service (None without pools)."""
    if not pools or store is None:
        return None
    service = HealthService(cfg, pools, store, metrics)
    service.start()
    return service
