"""Memcached store (fleet-wide state): pymemcache's HashClient over several servers.

Theory of operation
-------------------
Keys are spread over ``StoreConfig.servers`` by rendezvous hashing (HashClient's
default), so adding or losing one server moves only that server's keys. Each
server gets a small connection pool (``use_pooling``), so the greenlets of a
worker do not share one socket. Connect and read timeouts are
``StoreConfig.timeout``.

Failure handling leans on HashClient's dead-server logic, tuned so that a call
never waits more than one timeout and a server is retried within a second:
``retry_timeout=0`` (a failing server is tried again on the next call instead of
being silently answered with a default value), ``retry_attempts=2`` (after that
it is removed from the hash ring; its keys go to the other servers, or with no
server left every call fails at once) and ``dead_timeout=1`` (then it is put
back). ``ignore_exc=False`` so that failures reach us: every server or network
error becomes ``StoreUnavailable``; a bad key or value (a client error) becomes
``ValueError``.

Atomic steps without scripting: ``incr`` is memcached's own ``incr`` (with
``add`` to create the key and its expiry; a negative amount uses ``decr``, which
stops at 0); ``cas`` and ``ratelimit_step`` are ``gets`` + ``cas`` loops with
a bounded number of attempts. A refused rate-limit step writes nothing (see
edge.ratelimit), so contention is only between admitted requests. Lock release
is a ``cas`` to an already-expired item (memcached has no compare-and-delete).

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

from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheClientError, MemcacheError, MemcacheIllegalInputError

from edge.errors import StoreUnavailable
from edge.ratelimit import Decision, Limit, step_encoded
from edge.store.base import Health, Store

CAS_ATTEMPTS = 64  # lost races after which a step keeps retrying only while within its time budget
KEY_LOCK_STRIPES = 64  # per-worker locks that serialise rate-limit steps of the same key
CAS_BUDGET_TIMEOUTS = 10  # that budget, in store timeouts: a hot key under heavy contention waits a little, it does not fail
MAX_CONNECTIONS = 64  # per server and worker; more concurrent calls wait for a free one (see _call)
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


def _server(spec: str) -> tuple[str, int] | str:
    if spec.startswith("/") or spec.startswith("unix:"):
        return spec.removeprefix("unix:")
    host, _, port = spec.rpartition(":")
    return (host.strip("[]"), int(port)) if host else (spec, 11211)


class MemcachedStore(Store):
    name = "memcached"

    def __init__(self, servers: Iterable[str], timeout_s: float = 0.05, key_prefix: str = "") -> None:
        self._servers = tuple(servers)
        self._prefix = key_prefix.encode()
        self.failures = 0
        self.available = True
        self.cas_exhausted = 0  # steps given up after CAS_ATTEMPTS lost races
        self.pool_exhausted = 0  # calls given up after waiting _wait_s for a free connection
        # pymemcache's pool raises RuntimeError ("Too many objects") instead of waiting when
        # all its connections are in use, which 200 concurrent requests per worker reach (issue 4
        # accuracy test); so calls wait here for a slot (cooperatively: threading is gevent's
        # under the worker's monkey-patching). A busy pool is a queue in an overloaded
        # worker, not a sick server: the wait is long (a plugin's own budget cuts it first),
        # and only then the call counts as unavailable
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._timeout_s = timeout_s
        self._key_locks = tuple(threading.Lock() for _ in range(KEY_LOCK_STRIPES))
        self._wait_s = max(20 * timeout_s, 1.0)
        self._health = Health(self, ",".join(self._servers))
        self._mc = _HashClient(
            [_server(s) for s in self._servers],
            connect_timeout=timeout_s, timeout=timeout_s, no_delay=True,
            use_pooling=True, max_pool_size=MAX_CONNECTIONS,
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
            raise StoreUnavailable(f"memcached {method}: all {MAX_CONNECTIONS} connections busy for {self._wait_s}s")
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
        # One step per key at a time within this worker: the other greenlets on a hot key
        # queue here (FIFO, cooperative under gevent) instead of all racing gets/cas, so CAS
        # races only happen between workers and nodes, and no greenlet starves losing them.
        # The wait is bounded by one store timeout: behind a hung server the queue must not
        # add up timeouts, so a greenlet that waited that long goes ahead and races.
        lock = self._key_locks[hash(key) % KEY_LOCK_STRIPES]
        locked = lock.acquire(timeout=self._timeout_s)
        try:
            return self._ratelimit_step(key, limit, cost, now)
        finally:
            if locked:
                lock.release()

    def _ratelimit_step(self, key: str, limit: Limit, cost: float, now: float | None) -> Decision:
        k = self._k(key)
        attempt = 0
        give_up = None
        while True:
            raw, token = self._call("gets", k)
            t = time.time() if now is None else now
            new_raw, ttl_s, decision = step_encoded(raw, t, limit, cost)
            if new_raw is None:
                return decision  # refused: nothing to write
            if raw is None:
                ok = self._call("add", k, new_raw, expire=_exptime(ttl_s), noreply=False)
            else:
                ok = self._call("cas", k, new_raw, token, expire=_exptime(ttl_s), noreply=False)
            if ok:
                return decision
            attempt += 1
            if attempt >= CAS_ATTEMPTS:
                # Many lost races: contention, not failure. Keep going within a time budget
                # (a hot key over 4 workers and 200 clients, tests/integration/test_ratelimit.py).
                if give_up is None:
                    give_up = time.monotonic() + CAS_BUDGET_TIMEOUTS * self._timeout_s
                elif time.monotonic() > give_up:
                    self.cas_exhausted += 1
                    raise StoreUnavailable(f"memcached ratelimit {key!r}: lost {attempt} cas races")
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
