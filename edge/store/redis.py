"""Redis store (fleet-wide state): redis-py with hiredis, one pool per worker.

Theory of operation
-------------------
``RedisStore`` is built per worker after fork; its connection pool therefore
belongs to that worker. Under gevent the pool's sockets are cooperative, and
several greenlets each borrow their own connection.

URLs: ``redis://``, ``rediss://``, ``unix://`` (``redis.from_url``),
``redis+sentinel://host:port[,host:port]/service_name[/db]`` (the master is
discovered through the sentinels on every reconnect, so a failover is followed),
and ``redis+cluster://host:port`` (``RedisCluster``, other nodes discovered).

Timeouts: connect and read timeouts are ``StoreConfig.timeout``, and redis-py's
own retries are switched off (it retries 3 times with backoff by default), so a
down store costs at most one timeout per call. Every server or network failure
becomes ``StoreUnavailable``; redis-py drops the broken connection and the next
call reconnects, so a server that comes back is used at once.

Atomic steps are Lua scripts registered once (``register_script``): they run by
SHA and fall back to loading the script on ``NOSCRIPT`` (after a restart or a
failover). The rate-limit script is a line-by-line transcription of
``edge.ratelimit.gcra_step`` / ``window_step`` and reads the server's clock
(``TIME``) so every edge node agrees on ``now``; a caller may pass ``now``
instead (used by the test that checks Lua and Python agree). Floats cross the
Lua boundary as ``%.17g`` strings: Redis truncates Lua numbers to integers.

The rate-limit step is the ``ratelimit`` plugin's per-request call, so it skips
redis-py's command layers (``_DirectConnections``) and, in a gevent worker, the
steps that concurrent greenlets issue at the same moment travel as one pipeline
(``_Pipeliner``: one send and one read for the batch, each step still one atomic
``EVALSHA``).

CPU-starved workers (issue 8). The store timeout is a gevent timer; when the
worker's greenlets keep the CPU for longer than the timeout between two polls
of the event loop (a busy worker, a CPU-bound neighbour, a reload starting new
workers beside the old ones), the timer and the socket become ready in the same
loop iteration, and libev runs the timer first: the call timed out although
Redis had answered long before. Measured with ``scripts/bench_store_pressure.py
cpu``: hundreds of ``closed`` 503s in ten seconds with a healthy Redis. So the
pipeline waits for its answer itself (``_wait_answer``): when the timer fires,
a non-blocking poll of the socket decides; an answer that is there is read, and
only an answer that is not there after the timeout is a timeout of the store
(granted one more timeout when the timer itself fired late). The ``ratelimit``
plugin, for its part, switches to its fallback only after the store has failed
for a while, not at one failed call (plugins/ratelimit.py).
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.exceptions as rexc
from gevent import monkey
from gevent.hub import Waiter
from gevent.socket import wait_read
from redis.backoff import NoBackoff
from redis.retry import Retry

from edge.errors import StoreUnavailable
from edge.ratelimit import Algorithm, Decision, Limit
from edge.store.base import Health, Store
from edge.store.batching import Answer, GreenletBatcher, deliver

# Failures of the server or the network. OutOfMemoryError: the server is full (maxmemory
# with noeviction). ReadOnlyError: we are talking to a replica
# during a failover; ClusterDownError/TryAgain: the cluster is resharding or broken.
_DOWN = (
    rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, rexc.ClusterError,
    rexc.TryAgainError, rexc.RedisClusterException, rexc.BusyLoadingError, rexc.OutOfMemoryError, OSError,
)

_INCR = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
"""

_CAS = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if cur then return 0 end
elseif cur ~= ARGV[2] then
  return 0
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# ARGV: algorithm ('gcra'|'window'), period_s, count, burst, cost, now ('' = server clock)
# Returns {allowed, remaining, retry_after_s, reset_after_s} with floats as strings.
_RATELIMIT = """
local algo = ARGV[1]
local period = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local now
if ARGV[6] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[6])
end
local EPS = 1e-6
local function f(x) return string.format('%.17g', x) end
local function ttl_ms(s) return math.floor(s * 1000) + 1 end
local raw = redis.call('GET', KEYS[1])

if algo == 'gcra' then
  local t = period / count
  local tau = burst * t
  local tat = nil
  if raw then tat = tonumber(raw) end
  local base = now
  if tat ~= nil and tat >= now then base = tat end
  local new_tat = base + cost * t
  local allow_at = new_tat - tau
  if now + EPS < allow_at then
    local remaining = math.max(0, math.floor((now + tau - base + EPS) / t))
    return {0, remaining, f(allow_at - now), f(base - now)}
  end
  local remaining = math.max(0, math.floor((now + tau - new_tat + EPS) / t))
  redis.call('SET', KEYS[1], f(new_tat), 'PX', ttl_ms(new_tat - now + EPS))
  return {1, remaining, '0', f(new_tat - now)}
end

-- sliding window: state 'w:prev:curr'
local w = math.floor(now / period)
local prev, curr = 0, 0
local sw, sp, sc = nil, nil, nil
if raw then
  local a, b, c = string.match(raw, '^([^:]+):([^:]+):([^:]+)$')
  sw, sp, sc = tonumber(a), tonumber(b), tonumber(c)
  if sw == w then prev, curr = sp, sc elseif sw == w - 1 then prev = sc end
end
local elapsed = now - w * period
local estimate = prev * (1 - elapsed / period) + curr
if estimate + cost <= count + 1e-9 then
  curr = curr + cost
  local remaining = math.max(0, math.floor(count - estimate - cost + 1e-9))
  redis.call('SET', KEYS[1], string.format('%d', w) .. ':' .. f(prev) .. ':' .. f(curr), 'PX', ttl_ms(2 * period))
  return {1, remaining, '0', f((w + 2) * period - now)}
end
local retry
if curr + cost <= count then
  local needed = period * (1 - (count - cost - curr) / prev)
  retry = math.max(0, needed - elapsed)
elseif cost <= count then
  local needed = period * (1 - (count - cost) / curr)
  retry = (w + 1) * period - now + math.max(0, needed)
else
  retry = 1/0
end
local reset = 0
if curr > 0 then reset = (w + 2) * period - now elseif prev > 0 then reset = (w + 1) * period - now end
local remaining = math.max(0, math.floor(count - estimate + 1e-9))
return {0, remaining, f(retry), f(reset)}
"""


def _ms(ttl_s: float | None) -> int:
    """Milliseconds for PX, at least 1 (0 would mean 'no expiry' in our scripts)."""
    return 0 if ttl_s is None else max(1, int(ttl_s * 1000))


def _hostport(s: str, default_port: int) -> tuple[str, int]:
    host, _, port = s.rpartition(":") if ":" in s else (s, "", "")
    return (host or s).strip("[]"), int(port) if port else default_port


def build_client(url: str, timeout_s: float) -> Any:
    """A redis-py client for any supported URL, with our timeouts and no hidden retries."""
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    parts = urlsplit(url)
    if parts.scheme == "redis+sentinel":
        from redis.sentinel import Sentinel

        hosts = [_hostport(h, 26379) for h in parts.netloc.rpartition("@")[2].split(",")]
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError(f"sentinel URL needs a service name: {url!r}")
        service, db = path[0], int(path[1]) if len(path) > 1 else 0
        password = unquote(parts.password) if parts.password else None
        sentinel = Sentinel(hosts, sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s},
                            password=password, db=db, **common)
        return sentinel.master_for(service, **common)
    if parts.scheme == "redis+cluster":
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(*_hostport(h, 6379)) for h in parts.netloc.rpartition("@")[2].split(",")]
        password = unquote(parts.password) if parts.password else None
        q = parse_qs(parts.query)
        return RedisCluster(startup_nodes=nodes, password=password,
                            require_full_coverage=q.get("require_full_coverage", ["false"])[0] == "true",
                            **common)
    return redis.Redis.from_url(url, **common)


class _DirectConnections:
    """The rate-limit step's own connections: EVALSHA written and read directly.

    redis-py 8 wraps every command in layers that cost more than the round trip on
    loopback: a deprecation-checking decorator, pool bookkeeping, observability
    recorders and, on every checkout, a ``poll()`` to see whether the idle socket has
    unread data. With 64 concurrent requests on one worker that was a third of the
    worker's time (py-spy, issue 4 benchmark). Here a free list (LIFO, so few sockets
    stay warm) of plain redis-py ``Connection`` objects, built with the client's own
    settings (URL, timeouts, TLS), sends one command and reads its answer. A connection
    that fails or is interrupted (a plugin's time budget) is closed, never reused: its
    socket may hold half an answer; the idle ones are closed with it. Used for plain ``redis://``/``rediss://``/``unix://``
    URLs; Sentinel and Cluster keep redis-py's routing.
    """

    def __init__(self, pool: Any) -> None:
        self.cls = pool.connection_class
        self.kwargs = dict(pool.connection_kwargs)
        self._free: list[Any] = []

    def execute(self, *args: Any) -> Any:
        free = self._free
        conn = free.pop() if free else self.cls(**self.kwargs)
        try:
            conn.send_command(*args)
            result = conn.read_response()
        except rexc.ResponseError:
            free.append(conn)  # an error answer (NOSCRIPT): the connection is in step
            raise
        except BaseException:
            conn.disconnect()
            # the idle ones most likely point at the same dead server: drop them too, or a
            # restarted server is only used again after each stale one has failed a call
            # (one per STORE_RETRY_S of the ratelimit plugin: 3.5 s in the failure test)
            self.close()
            raise
        free.append(conn)
        return result

    def close(self) -> None:
        while self._free:
            self._free.pop().disconnect()


# the unpatched select.select: a poll with timeout 0 that never yields to the hub
_select_now = monkey.get_original("select", "select")


def _wait_answer(conn: Any) -> None:
    """Wait until ``conn`` has an answer to read, for at most its socket timeout of waiting.

    See the module docstring (CPU-starved workers): a timer that fires while the answer
    is already in the socket says that this worker was late, not that Redis was. And a
    timer that fires late (by half a timeout or more) says that the worker was busy for
    part of the wait, when Redis (on the same busy machine) may have been starved too:
    the wait is granted once more, so a call waits at most two timeouts for its answer.
    """
    sock = conn._sock
    if sock is None:
        return  # not connected: read_response reports it
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return  # TLS: decrypted bytes wait in the SSL object, not in the socket
    timeout_s = conn.socket_timeout
    fd = sock.fileno()
    for attempt in (1, 2):
        started = time.monotonic()
        try:
            wait_read(fd, timeout=timeout_s, timeout_exc=socket.timeout("timed out"))
            return
        except socket.timeout:
            readable, _, _ = _select_now([fd], [], [], 0)
            if readable:
                return
            if attempt == 2 or timeout_s is None or time.monotonic() - started < 1.5 * timeout_s:
                raise rexc.TimeoutError(f"no answer after waiting {timeout_s}s") from None


#: most rate-limit steps one pipeline carries (the rest wait for the next one)
PIPELINE_MAX = 256


class _Pipeliner(GreenletBatcher):
    """Automatic pipelining of the rate-limit step within a worker (gevent only).

    Under load, many greenlets of a worker need a step at about the same moment, and
    each one's own round trip (a ``send``, a ``recv`` that first finds nothing and
    parks the greenlet, a wake-up, a second ``recv``) cost more worker time than the
    request it guarded (issue 4 benchmark). Batched (``edge.store.batching``), the
    commands queued at one moment go out as ONE pipeline on the batcher's one
    connection, and the answers are read in order.

    Each command stays one ``EVALSHA``: Redis runs each script atomically whether it
    arrives alone or in a pipeline, so decisions are as exact as without pipelining.
    An error answer (``NOSCRIPT``) goes to its own caller only. A failure of the
    connection (connect, write or read error, or the store timeout, which is the
    socket timeout) fails the batch in flight *and* every step queued behind it, so no
    caller waits longer than one store timeout for a batch that cannot be answered;
    the connection is closed and the next batch opens a new one.
    """

    max_batch = PIPELINE_MAX

    def __init__(self, conn_cls: Any, conn_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self._cls = conn_cls
        self._kwargs = conn_kwargs
        self._conn: Any = None

    def execute(self, *args: Any) -> Any:
        """Send one command in the next pipeline; its answer (or its error, raised)."""
        return self.submit(args)

    def stopped_error(self) -> BaseException:
        return rexc.ConnectionError("redis pipeline stopped")

    def process(self, batch: list[tuple[tuple[Any, ...], Waiter]]) -> None:
        answers: list[Answer] = []
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._cls(**self._kwargs)
            conn.send_packed_command(conn.pack_commands([args for args, _ in batch]), check_health=False)
            _wait_answer(conn)
            for _, waiter in batch:
                try:
                    answers.append((waiter, True, conn.read_response()))
                except rexc.ResponseError as e:  # an error answer (NOSCRIPT): the connection is in step
                    answers.append((waiter, False, e))
        except BaseException as e:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.disconnect()  # it may hold half an answer
            failed = batch[len(answers):] + self.take_queued()
            deliver(answers)
            self.fail(failed, e)
            if not isinstance(e, Exception):
                raise  # GreenletExit and the like: stop the batcher (which fails the rest)
            return
        deliver(answers)

    def fail(self, items: list[tuple[Any, Waiter]], exc: BaseException) -> None:
        # each caller gets its own exception object (one raised in many greenlets would
        # collect all their tracebacks); StoreUnavailable names the original
        deliver([(w, False, _copy_error(exc)) for _, w in items])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None


def _copy_error(exc: BaseException) -> BaseException:
    if isinstance(exc, rexc.TimeoutError | TimeoutError):
        return rexc.TimeoutError(str(exc))
    if isinstance(exc, _DOWN):
        return rexc.ConnectionError(str(exc))
    return exc  # not a store failure but a bug: every caller sees it as it is


class RedisStore(Store):
    name = "redis"

    def __init__(self, url: str, timeout_s: float = 0.05, key_prefix: str = "") -> None:
        self._url = url
        self._prefix = key_prefix
        self.failures = 0
        self.available = True
        parts = urlsplit(url)
        # never log a password: the target is the URL without its user info
        self._health = Health(self, parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
        try:
            self._r = build_client(url, timeout_s)
        except _DOWN as e:  # RedisCluster connects at construction
            self._health.down(e)
            raise StoreUnavailable(f"redis {url}: {e}") from e
        self._cluster = parts.scheme == "redis+cluster"
        self._incr = self._r.register_script(_INCR)
        self._cas = self._r.register_script(_CAS)
        self._release = self._r.register_script(_RELEASE)
        self._ratelimit = self._r.register_script(_RATELIMIT)
        self._direct = _DirectConnections(self._r.connection_pool) if parts.scheme in ("redis", "rediss", "unix") else None
        # under gevent (a worker), steps of concurrent greenlets share pipelines; without
        # it (scripts, threads) each step is its own round trip on a direct connection
        self._pipe = (_Pipeliner(self._direct.cls, self._direct.kwargs)
                      if self._direct is not None and monkey.is_module_patched("socket") else None)
        self._limit_args: dict[Limit, tuple[Any, ...]] = {}  # precomputed ARGV[1..5] per limit

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one command; map server/network failures to StoreUnavailable and track health."""
        try:
            result = fn(*args, **kwargs)
        except _DOWN as e:
            self._health.down(e)
            raise StoreUnavailable(f"redis: {e}") from e
        self._health.up()
        return result

    # -- Store -------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        # the cache's per-hit read (issue 10): pipelined like the rate-limit step when it can be
        runner = self._pipe or self._direct
        if runner is not None:
            return self._call(runner.execute, "GET", self._prefix + key)
        return self._call(self._r.get, self._prefix + key)

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        keys = list(keys)
        if not keys:
            return {}
        full = [self._prefix + k for k in keys]
        # keys of one MGET must share a slot on a cluster; mget_nonatomic splits them
        values = self._call(self._r.mget_nonatomic if self._cluster else self._r.mget, full)
        return {k: v for k, v in zip(keys, values) if v is not None}

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._call(self._r.set, self._prefix + key, value, px=_ms(ttl_s) or None)

    def delete(self, key: str) -> bool:
        return bool(self._call(self._r.delete, self._prefix + key))

    def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        return bool(self._call(self._r.set, self._prefix + key, value, px=_ms(ttl_s) or None, nx=True))

    def cas(self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None) -> bool:
        args = ["0", b"", new, _ms(ttl_s)] if expected is None else ["1", expected, new, _ms(ttl_s)]
        return bool(self._call(self._cas, keys=[self._prefix + key], args=args))

    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        try:
            return int(self._call(self._incr, keys=[self._prefix + key], args=[amount, _ms(ttl_s)]))
        except rexc.ResponseError as e:  # "value is not an integer": the caller's bug, as on other backends
            raise ValueError(str(e)) from e

    def ratelimit_step(self, key: str, limit: Limit, cost: float = 1, now: float | None = None) -> Decision:
        largs = self._limit_args.get(limit)
        if largs is None:
            algo = "gcra" if limit.algorithm is Algorithm.GCRA else "window"
            largs = (algo, repr(float(limit.period_s)), repr(float(limit.count)), limit.burst)
            if len(self._limit_args) > 1024:  # limits come from the config: a handful
                self._limit_args.clear()
            self._limit_args[limit] = largs
        args = (*largs, "1.0" if cost == 1 else repr(float(cost)), "" if now is None else repr(float(now)))
        k = self._prefix + key
        if self._direct is not None:
            allowed, remaining, retry, reset = self._call(self._evalsha, k, args)
        else:
            allowed, remaining, retry, reset = self._call(self._ratelimit, keys=[k], args=args)
        lim = limit.burst if limit.algorithm is Algorithm.GCRA else int(limit.count)
        return Decision(bool(allowed), int(remaining), float(retry), float(reset), lim)

    def _evalsha(self, k: str, args: tuple[Any, ...]) -> Any:
        """The rate-limit script by SHA, pipelined or on a direct connection; loads it on NOSCRIPT."""
        execute = self._pipe.execute if self._pipe is not None else self._direct.execute  # type: ignore[union-attr]
        try:
            return execute("EVALSHA", self._ratelimit.sha, 1, k, *args)
        except rexc.NoScriptError:
            # a restarted (or failed-over) server has an empty script cache: EVAL loads it
            return execute("EVAL", _RATELIMIT, 1, k, *args)

    def acquire_lock(self, key: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(16)
        return token if self.add(key, token.encode(), ttl_s) else None

    def release_lock(self, key: str, token: str) -> bool:
        return bool(self._call(self._release, keys=[self._prefix + key], args=[token.encode()]))

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
        if self._direct is not None:
            self._direct.close()
        self._r.close()
