"""Memcached store (fleet-wide state): pymemcache's HashClient over several servers.

Theory of operation
-------------------
Keys are spread over ``StoreConfig.servers`` by rendezvous hashing (HashClient's
default), so adding or losing one server moves only that server's keys. Each
server gets a small connection pool (``use_pooling``), so the greenlets of a
worker do not share one socket. Connect and read timeouts are
``StoreConfig.timeout``.

Failure handling leans on HashClient's dead-server logic, tuned so that a call
never waits more than one timeout per command (plus at most two for a free
connection slot: ``CALL_TIMEOUTS`` in edge.store.base) and a server is retried
within a second:
``retry_timeout=0`` (a failing server is tried again on the next call instead of
being silently answered with a default value), ``retry_attempts=2`` (after that
it is removed from the hash ring; its keys go to the other servers, or with no
server left every call fails at once) and ``dead_timeout=1`` (then it is put
back). ``ignore_exc=False`` so that failures reach us: every server or network
error becomes ``StoreUnavailable``; a bad key or value (a client error) becomes
``ValueError``.

Atomic steps without scripting: ``incr`` is memcached's own ``incr`` (with
``add`` to create the key and its expiry; a negative amount uses ``decr``, which
stops at 0); ``cas`` and ``ratelimit_step`` are ``gets`` + ``cas`` loops. A
refused rate-limit step writes nothing (see edge.ratelimit), so contention is
only between admitted requests. Lock release is a ``cas`` to an already-expired
item (memcached has no compare-and-delete).

Hot keys (issue 8). In a gevent worker, the rate-limit steps of one key are
*combined*: the first greenlet to need the key runs a round itself (``gets``,
the step, ``cas``); the greenlets that need the same key while that round is in
flight queue on it, and the next round, run by a greenlet spawned for it
(``_combine``), applies all their steps in arrival order to the state it read,
in pure code (``edge.ratelimit.step_encoded``), and writes the result with ONE
``cas``. The decisions are exactly those of the same steps run one after the
other, and they are handed out only after the ``cas`` succeeded (a lost race
reruns the whole round on the fresh state), so a round is as atomic as a single
step. A hot key then costs two round trips per round, not per request, and CAS
races happen only between workers and nodes. A queued step waits at most
``CALL_TIMEOUTS`` store timeouts for its answer (edge.store.base), then raises
``StoreUnavailable`` so the caller's policy decides; before this, 200 greenlets per
worker queued behind each other's round trips and 10 % of requests overran the
plugin's budget at 400 connections (docs/benchmarks.md).

Connection slots are a ``gevent.lock.BoundedSemaphore`` (``MAX_CONNECTIONS`` per
worker): acquiring is the only wait, and a greenlet interrupted while waiting
(a plugin's time budget, a kill) leaves it without having taken a slot, while
one interrupted after acquiring gives the slot back in ``finally``. A
``threading.BoundedSemaphore`` (a ``Condition`` over a gevent lock once
monkey-patched) lost a slot for good at each interrupted wait, and sometimes
raised "released too many times".

Limits of memcached: TTLs are whole seconds (rounded up, plus one: see
``_exptime``), and ``now`` is this
host's clock, so edge nodes sharing a memcached must run NTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import re
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any

import gevent
import gevent.lock
from gevent import monkey
from gevent.hub import Waiter
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheClientError, MemcacheError, MemcacheIllegalInputError

from edge.errors import StoreUnavailable
from edge.ratelimit import Decision, Limit, step_encoded
from edge.store.base import CALL_TIMEOUTS, Health, Store
from edge.store.batching import deliver

CAS_ATTEMPTS = 64  # lost races after which a step keeps retrying only while within its time budget
CAS_BUDGET_TIMEOUTS = 2  # that budget, in store timeouts (a round's own cost stays within the plugin budget)
MAX_CONNECTIONS = 64  # per server and worker; more concurrent calls wait for a free one (see _call)
COMBINE_MAX = 512  # most rate-limit steps of one key that one round carries
_MAX_RELATIVE_TTL_S = 30 * 86400  # memcached reads larger exptimes as absolute Unix times
_SAFE_KEY = re.compile(rb"^[\x21-\x7e]{1,200}$")


def _exptime(ttl_s: float | None) -> int:
    if ttl_s is None:
        return 0
    # memcached's clock ticks in whole seconds, so "expire in 1 s" may mean a few ms
    # from now; +1 makes a TTL a lower bound (a lease or a rate-limit state must not
    # vanish early), at the price of keeping items up to 2 s longer
    secs = math.ceil(ttl_s) + 1
    return secs if secs <= _MAX_RELATIVE_TTL_S else int(time.time()) + secs


def _guard_pool(pool: Any) -> None:
    """Make a pymemcache ``ObjectPool`` drop a connection interrupted by a ``BaseException``.

    pymemcache's ``get_and_release`` handles only ``Exception``: a ``gevent.Timeout`` or
    edge's ``PluginTimeout`` thrown into a call (a plugin over its budget) left the
    connection neither released nor destroyed, so after ``MAX_CONNECTIONS`` such
    interruptions every call failed with ``RuntimeError: Too many objects`` (found by
    the issue 4 accuracy test). Here an interrupted connection, whose socket may be
    in the middle of a command, is destroyed (closed), never reused.
    """

    @contextlib.contextmanager
    def get_and_release(destroy_on_fail: bool = False) -> Any:
        obj = pool.get()
        try:
            yield obj
        except Exception:
            if destroy_on_fail:
                pool.destroy(obj)
            else:
                pool.release(obj)
            raise
        except BaseException:
            pool.destroy(obj)
            raise
        pool.release(obj)

    pool.get_and_release = get_and_release


class _FailedClients(dict):
    """HashClient's failing-server table, safe for concurrent greenlets.

    Two greenlets that both retry a failing server successfully both call
    ``_failed_clients.pop(server)``; the second raised ``KeyError`` (hash.py
    ``_safely_run_func``) and its successful answer was lost.
    """

    def pop(self, key: Any, *default: Any) -> Any:
        return super().pop(key, None)


class _HashClient(HashClient):
    """HashClient whose per-server pools survive interrupted calls (see ``_guard_pool``)
    and whose failure table tolerates concurrent recovery (``_FailedClients``);
    ``add_server`` also runs when a dead server is put back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failed_clients = _FailedClients(self._failed_clients)

    def add_server(self, server: Any, port: Any = None) -> None:
        super().add_server(server, port)
        client = self.clients[self._make_client_key(server if port is None else (server, port))]
        pool = getattr(client, "client_pool", None)
        if pool is not None:
            _guard_pool(pool)


def _copy(exc: Exception) -> Exception:
    """An exception of its own for each caller (one object raised in many greenlets would
    collect all their tracebacks)."""
    if isinstance(exc, StoreUnavailable):
        return StoreUnavailable(str(exc))
    return exc  # a bug (or ValueError on a bad key): every caller sees it as it is


def _server(spec: str) -> tuple[str, int] | str:
    if spec.startswith("/") or spec.startswith("unix:"):
        return spec.removeprefix("unix:")
    host, _, port = spec.rpartition(":")
    return (host.strip("[]"), int(port)) if host else (spec, 11211)


class MemcachedStore(Store):
    name = "memcached"

    def __init__(self, servers: Iterable[str], timeout_s: float = 0.05, key_prefix: str = "",
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self._servers = tuple(servers)
        self._prefix = key_prefix.encode()
        self.failures = 0
        self.available = True
        self.cas_exhausted = 0  # steps given up after losing CAS races for CAS_BUDGET_TIMEOUTS
        self.pool_exhausted = 0  # calls given up after waiting _wait_s for a free connection
        self.max_connections = max_connections
        # pymemcache's pool raises RuntimeError ("Too many objects") instead of waiting when
        # all its connections are in use, so calls wait here for a slot. In a gevent worker
        # the semaphore is gevent's, whose waits are safe against gevent.Timeout and kills
        # (see the module docstring); elsewhere (scripts, threads) it is threading's.
        self._gevent = monkey.is_module_patched("socket")
        semaphore = gevent.lock.BoundedSemaphore if self._gevent else threading.BoundedSemaphore
        self._slots = semaphore(max_connections)
        self._timeout_s = timeout_s
        # a busy pool is a queue in an overloaded worker, not a sick server; the wait is
        # bounded so that a whole call stays within the plugin's default budget
        self._wait_s = 2 * timeout_s
        # hot-key combining (gevent only): store key -> steps queued for the next round
        self._pending: dict[bytes, list[tuple[Limit, float, float | None, Waiter]]] = {}
        self._queue_wait_s = CALL_TIMEOUTS * timeout_s
        self.queue_timeouts = 0  # steps given up after waiting _queue_wait_s for their round
        self.rounds = 0  # rate-limit rounds written (tests, benchmarks)
        self.combined = 0  # steps those rounds carried
        self._health = Health(self, ",".join(self._servers))
        self._mc = _HashClient(
            [_server(s) for s in self._servers],
            connect_timeout=timeout_s, timeout=timeout_s, no_delay=True,
            use_pooling=True, max_pool_size=max_connections,
            retry_attempts=2, retry_timeout=0, dead_timeout=1.0,
            ignore_exc=False, default_noreply=False,
        )

    def _k(self, key: str) -> bytes:
        k = self._prefix + key.encode()
        if _SAFE_KEY.match(k):
            return k
        # memcached keys: at most 250 bytes, no spaces or control characters
        return self._prefix + b"#" + hashlib.sha256(k).hexdigest().encode()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if not self._slots.acquire(timeout=self._wait_s):
            # busy, not down: the server's health is not in question
            self.pool_exhausted += 1
            raise StoreUnavailable(f"memcached {method}: all {self.max_connections} connections busy for {self._wait_s}s")
        # nothing may switch between a successful acquire and this try (a gevent.Timeout
        # is only delivered where a greenlet waits), so the slot is always given back
        try:
            result = getattr(self._mc, method)(*args, **kwargs)
        except (MemcacheClientError, MemcacheIllegalInputError) as e:
            raise ValueError(f"memcached {method}: {e}") from e
        except (MemcacheError, OSError) as e:
            # OSError: refused/reset/timeout; MemcacheError: unexpected close, server error,
            # or "all servers seem to be down" while the ring is empty
            self._health.down(e)
            raise StoreUnavailable(f"memcached {method}: {e}") from e
        finally:
            self._slots.release()
        self._health.up()
        return result

    # -- Store -------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        return self._call("get", self._k(key))

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        by_mkey = {self._k(k): k for k in keys}
        if not by_mkey:
            return {}
        found = self._call("get_many", list(by_mkey))
        return {by_mkey[mk]: v for mk, v in found.items()}

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._call("set", self._k(key), value, expire=_exptime(ttl_s), noreply=False)

    def delete(self, key: str) -> bool:
        return bool(self._call("delete", self._k(key), noreply=False))

    def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        return bool(self._call("add", self._k(key), value, expire=_exptime(ttl_s), noreply=False))

    def cas(self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None) -> bool:
        if expected is None:
            return self.add(key, new, ttl_s)
        k = self._k(key)
        value, token = self._call("gets", k)
        if value != expected:
            return False
        return bool(self._call("cas", k, new, token, expire=_exptime(ttl_s), noreply=False))

    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        k = self._k(key)
        op, n = ("incr", amount) if amount >= 0 else ("decr", -amount)
        for _ in range(CAS_ATTEMPTS):
            value = self._call(op, k, n, noreply=False)
            if value is not None:
                return int(value)
            # absent: create it with its expiry; if another client won the race, incr again
            if self._call("add", k, b"%d" % max(amount, 0), expire=_exptime(ttl_s), noreply=False):
                return max(amount, 0)
        raise StoreUnavailable(f"memcached incr {key!r}: key vanished {CAS_ATTEMPTS} times")

    def ratelimit_step(self, key: str, limit: Limit, cost: float = 1, now: float | None = None) -> Decision:
        k = self._k(key)
        if not self._gevent:
            return self._round(k, [(limit, cost, now)])[0]
        queue = self._pending.get(k)
        if queue is not None:
            # a round of this key is in flight in this worker: join the next one
            waiter = Waiter()
            entry = (limit, cost, now, waiter)
            queue.append(entry)
            # the wait (the round in flight, then ours) is bounded like any store call
            # (edge.store.base.CALL_TIMEOUTS), so that in a starved worker the plugin's
            # policy decides rather than its time budget cutting the request off
            timer = gevent.Timeout(self._queue_wait_s)
            timer.start()
            try:
                return waiter.get()
            except BaseException as e:
                # interrupted (our bound, plugin budget, kill) before a round took the step:
                # withdraw it, so that no token is spent for a request that got no answer
                with contextlib.suppress(ValueError):
                    queue.remove(entry)
                if e is timer:
                    self.queue_timeouts += 1
                    raise StoreUnavailable(f"memcached ratelimit: no round for this key within {self._queue_wait_s}s "
                                           "(busy worker)") from None
                raise
            finally:
                timer.close()
        # no round in flight: run this one here (the uncontended case costs no hand-off)
        self._pending[k] = []
        try:
            return self._round(k, [(limit, cost, now)])[0]
        finally:
            self._next_round(k)

    def _next_round(self, k: bytes) -> None:
        """After a round: hand what queued meanwhile to a combining greenlet, or forget the key."""
        if self._pending.get(k):
            # a greenlet of its own, so that neither the request that ran this round nor
            # any waiter (each with its own time budget) has to stay for the others
            gevent.spawn(self._combine, k)
        else:
            self._pending.pop(k, None)

    def _combine(self, k: bytes) -> None:
        """Rounds for the steps queued on ``k`` until none is left; each waiter gets its own answer."""
        queue = self._pending.get(k)
        try:
            while queue:
                batch = queue[:COMBINE_MAX]
                del queue[:COMBINE_MAX]
                try:
                    decisions = self._round(k, [(lim, c, n) for lim, c, n, _ in batch])
                except BaseException as e:
                    # the store failed: this batch and every step queued behind it (each
                    # would wait its own timeout for the same server), each its own copy;
                    # killed (worker exit): the batch in flight is told so as well
                    failed = batch + queue[:]
                    queue.clear()
                    error = _copy(e) if isinstance(e, Exception) else StoreUnavailable("memcached ratelimit: stopped")
                    deliver([(w, False, _copy(error)) for *_, w in failed])
                    if isinstance(e, Exception):
                        return
                    raise
                deliver([(w, True, d) for (*_, w), d in zip(batch, decisions)])
        finally:
            # done, or killed (worker exit): nobody may keep waiting for a round
            rest = self._pending.pop(k, None) or []
            deliver([(w, False, StoreUnavailable("memcached ratelimit: round stopped")) for *_, w in rest])

    def _round(self, k: bytes, steps: list[tuple[Limit, float, float | None]]) -> list[Decision]:
        """``steps`` applied in order to the state of ``k``, written with one add/cas; their decisions."""
        attempt = 0
        give_up = None
        while True:
            raw, token = self._call("gets", k)
            t = time.time()
            state, ttl_s, changed = raw, 0.0, False
            decisions = []
            for limit, cost, now in steps:
                new_raw, step_ttl_s, d = step_encoded(state, t if now is None else now, limit, cost)
                if new_raw is not None:  # admitted: the next step sees this one's state
                    state, changed = new_raw, True
                    ttl_s = max(ttl_s, step_ttl_s)
                decisions.append(d)
            if not changed:
                return decisions  # all refused: nothing to write
            if raw is None:
                ok = self._call("add", k, state, expire=_exptime(ttl_s), noreply=False)
            else:
                ok = self._call("cas", k, state, token, expire=_exptime(ttl_s), noreply=False)
            if ok:
                self.rounds += 1
                self.combined += len(steps)
                return decisions
            attempt += 1
            if attempt >= CAS_ATTEMPTS:
                # Many lost races (other workers or nodes): contention, not failure. Keep
                # going within a time budget, then give up as unavailable.
                if give_up is None:
                    give_up = time.monotonic() + CAS_BUDGET_TIMEOUTS * self._timeout_s
                elif time.monotonic() > give_up:
                    self.cas_exhausted += 1
                    raise StoreUnavailable(f"memcached ratelimit {k!r}: lost {attempt} cas races")
            if attempt >= 4:
                # lost several races: spread the contenders out (cooperative under gevent)
                time.sleep(random.uniform(0, 0.0005 * min(attempt, 16)))

    def acquire_lock(self, key: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(16)
        return token if self.add(key, token.encode(), ttl_s) else None

    def release_lock(self, key: str, token: str) -> bool:
        k = self._k(key)
        value, cas_token = self._call("gets", k)
        if value != token.encode():
            return False
        # compare-and-delete: replace with an item that is already expired
        return bool(self._call("cas", k, b"", cas_token, expire=-1, noreply=False))

    def close(self) -> None:
        self._mc.close()
