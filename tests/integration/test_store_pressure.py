"""Stores under load and CPU pressure (issue 8, part 3), against real servers.

- Memcached connection slots survive interrupted waiters: a store in a monkey-patched
  process (as in a worker) is hammered by greenlets cut off by ``gevent.Timeout`` and
  ``kill`` at random points, many times; afterwards every slot is free and a full set of
  concurrent calls succeeds. Run in a child process so that monkey-patching stays out of
  pytest's.
- A hot key on memcached with the DEFAULT settings (store timeout, plugin budget) through
  a real edge: a few seconds of load from many keep-alive clients; the count of failed
  responses is compared with the count of responses (no latency bound).
- Redis beside CPU-bound neighbours (bounded busy loops pinned with edge's workers to
  CPU 0, started and stopped by PID here) during reloads: a healthy Redis is not
  treated as failed, so with ``on_store_error: closed`` (almost) no request is decided
  by the fallback. Before issue 8 one late answer switched a worker to the fallback for
  0.5 s: hundreds of 503s per run (not every run: it needs a late answer; the switch
  rule itself is tested deterministically in tests/unit/plugins/test_ratelimit_store_down.py).
- The default plugin budget outlasts a store call: a plugin's own ``StoreUnavailable``
  handling runs against a hung (SIGSTOPped) Redis instead of an overrun 503.
"""

from __future__ import annotations

import json
import os
import signal
import socket as stdsocket
import subprocess
import sys
import textwrap
import time
from collections import Counter

import gevent
import pytest
from gevent import socket as gsocket

from tests.fixtures.services import suspend
from tests.fixtures.statsd import statsd  # noqa: F401  (the fixture)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# --------------------------------------------------------------------------- memcached slots

_SLOTS_CHILD = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, random, sys
    import gevent
    from edge.errors import StoreUnavailable
    from edge.store.memcached import MemcachedStore

    SLOTS = 8
    store = MemcachedStore([sys.argv[1]], timeout_s=0.05, max_connections=SLOTS)
    store.set("k", b"v")
    rng = random.Random(8)
    outcome = {"ok": 0, "interrupted": 0, "killed": 0, "unavailable": 0, "other": []}

    def call(budget_s):
        try:
            with gevent.Timeout(budget_s):
                for _ in range(5):
                    store.get("k")
            outcome["ok"] += 1
        except gevent.Timeout:
            outcome["interrupted"] += 1
        except StoreUnavailable:
            outcome["unavailable"] += 1
        except gevent.GreenletExit:
            outcome["killed"] += 1
            raise
        except BaseException as e:  # "released too many times" and the like: the bug
            outcome["other"].append(repr(e))

    for round_ in range({rounds}):
        # 4x more callers than slots, so most of them wait on the semaphore; budgets of
        # 0 to 2 ms cut them while waiting, while holding a slot, or inside a command
        # (one caller in ten gets a budget no machine load can exhaust, so some calls succeed
        # however slow the machine is)
        gs = [gevent.spawn(call, rng.uniform(0, 0.002) if rng.random() < 0.9 else 5.0) for _ in range(4 * SLOTS)]
        gevent.sleep(rng.uniform(0, 0.001))
        gevent.killall([g for g in gs if rng.random() < 0.25], block=False)
        gevent.joinall(gs, timeout=10)
    slots = store._slots  # gevent's semaphore counts in .counter, threading's in ._value
    free_after = slots.counter if hasattr(slots, "counter") else slots._value
    # every slot usable at once: SLOTS concurrent calls, none may wait for a slot
    results = gevent.joinall([gevent.spawn(store.get, "k") for _ in range(SLOTS)], timeout=10)
    print(json.dumps({{"free_after": free_after, "slots": SLOTS, "outcome": outcome,
                      "after_ok": sum(1 for g in results if g.successful() and g.value == b"v"),
                      "pool_exhausted": store.pool_exhausted}}))
""")


def test_memcached_slots_all_come_back_after_interrupted_waiters(memcached_server):
    code = _SLOTS_CHILD.replace("{rounds}", "200").replace("{{", "{").replace("}}", "}")
    out = subprocess.run([sys.executable, "-c", code, memcached_server.address], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    o = r["outcome"]
    assert o["other"] == [], o["other"]
    # the test must have interrupted and killed callers for real, and some calls must pass
    assert o["interrupted"] > 50 and o["killed"] > 50 and o["ok"] > 0, o
    assert r["free_after"] == r["slots"], r
    assert r["after_ok"] == r["slots"], r


_COMBINE_CHILD = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys, time
    import gevent
    from edge.ratelimit import Limit
    from edge.store.memcached import MemcachedStore

    # two stores (two workers' worth of clients) racing on one key, 300 greenlets each,
    # some cut off by a budget while queued; a limit that no refill changes during the run
    # a generous store timeout: this checks exactness, not the timeout (a busy machine)
    stores = [MemcachedStore([sys.argv[1]], timeout_s=2.0) for _ in range(2)]
    key = "hot:%f" % time.time()
    limit = Limit.parse("500/h", burst=500)
    T0 = time.time()
    admitted, refused, cut = [], [], []

    def one(store, i):
        try:
            with gevent.Timeout(0.0005 if i % 10 == 0 else 30):
                d = store.ratelimit_step(key, limit, now=T0)  # no refill during the run
        except gevent.Timeout:
            cut.append(i)
            return
        (admitted if d.allowed else refused).append(d.remaining)

    gs = [gevent.spawn(one, stores[i % 2], i) for i in range(600)]
    gevent.joinall(gs, timeout=60)
    # the state in memcached after all of it: how many tokens were really spent
    probe = stores[0].ratelimit_step(key, limit, cost=0, now=T0)
    print(json.dumps({"admitted": len(admitted), "refused": len(refused), "cut": len(cut),
                      "remaining_after": probe.remaining, "steps": sum(s.combined for s in stores),
                      "rounds": sum(s.rounds for s in stores),
                      "remaining_seen": sorted(admitted)}))
""")


def test_memcached_combined_hot_key_steps_are_exact(memcached_server):
    out = subprocess.run([sys.executable, "-c", _COMBINE_CHILD, memcached_server.address], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["admitted"] + r["refused"] + r["cut"] == 600
    # every admitted step spent exactly one token, and no token was spent by anyone else:
    # a step cut off while queued was withdrawn, one cut off inside a round may have spent one
    spent = 500 - r["remaining_after"]
    assert r["admitted"] <= spent <= r["admitted"] + r["cut"], r
    assert r["admitted"] >= 500 - r["cut"], r
    # the remaining counts handed out are those of one-after-the-other steps: all distinct
    assert len(set(r["remaining_seen"])) == len(r["remaining_seen"]), r
    # and they were combined: fewer writes than steps
    assert r["rounds"] < r["steps"], r


# --------------------------------------------------------------------------- load through edge


class Load:
    """``clients`` keep-alive greenlets (gevent sockets, no monkey-patching) until ``duration_s``."""

    def __init__(self, port: int, clients: int, duration_s: float) -> None:
        self.deadline = time.monotonic() + duration_s
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self._port = port
        self._greenlets = [gevent.spawn(self._client) for _ in range(clients)]

    def join(self) -> "Load":
        gevent.joinall(self._greenlets, timeout=max(0.0, self.deadline - time.monotonic()) + 15)
        gevent.killall(self._greenlets, block=True, timeout=5)
        return self

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def _client(self) -> None:
        request = b"GET / HTTP/1.1\r\nHost: edge.test\r\n\r\n"
        sock, buf = None, b""
        while time.monotonic() < self.deadline and self.total < 1_000_000:
            try:
                if sock is None:
                    sock = gsocket.create_connection(("127.0.0.1", self._port), timeout=10)
                    sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
                    buf = b""
                sock.sendall(request)
                status, buf = _read_response(sock, buf)
                self.statuses[status] += 1
            except OSError:
                self.errors += 1
                if sock is not None:
                    sock.close()
                sock = None
                gevent.sleep(0.005)
        if sock is not None:
            sock.close()


def _read_response(sock, buf: bytes) -> tuple[int, bytes]:
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("closed")
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("closed")
        buf += data
    return int(lines[0].split(b" ", 2)[1]), buf[length:]


def _hot_key_config(store: dict, **plugin) -> dict:
    # one route answered by edge itself, one key (every client is 127.0.0.1), a limit that
    # admits everything: every step writes (the worst case for CAS); all else default
    return {
        "store": store,
        "routes": [{"match": {"path": "/"}, "respond": {"status": 200, "body": "ok"}}],
        "plugins": {"ratelimit": {"limits": [{"rate": "1000000/s"}], **plugin}},
    }


def test_memcached_hot_key_with_defaults_under_400_connections(edge_factory, memcached_server):
    edge = edge_factory(_hot_key_config({"backend": "memcached", "servers": [memcached_server.address]}))
    load = Load(edge.port, 400, 4.0).join()
    failed = load.total - load.statuses[200]
    assert load.total > 1000, (load.statuses, load.errors)
    # issue 8: before, 10 % of these were 503 (plugin overruns) and some 500; now < 0.1 %
    assert failed <= load.total / 1000, (load.statuses, load.errors)
    assert load.errors == 0


# --------------------------------------------------------------------------- redis under CPU pressure


def _busy_neighbours(duration_s: float, cpus: set[int] | None = None) -> list[subprocess.Popen]:
    """CPU-bound processes, each ending by itself after ``duration_s``: one per core, or
    two pinned to ``cpus``."""
    code = f"import time\nend = time.monotonic() + {duration_s}\nwhile time.monotonic() < end: pass\n"
    n = 2 if cpus else (os.cpu_count() or 1)
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    if cpus:
        for p in procs:
            os.sched_setaffinity(p.pid, cpus)
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(timeout=10)




def test_healthy_redis_is_not_declared_down_by_a_cpu_starved_worker(edge_factory, make_redis_server, origin, statsd):
    redis = make_redis_server()
    config = _hot_key_config({"backend": "redis", "url": redis.url}, on_store_error="closed")
    config["metrics"] = {"statsd": f"127.0.0.1:{statsd.port}", "prefix": "edge"}
    # proxied to an origin: more work per request, so the workers' loops run late (the
    # respond route alone rarely starves them enough to show the bug)
    config["upstreams"] = {"app": {"servers": [f"127.0.0.1:{origin.port}"]}}
    route = config["routes"][0]
    del route["respond"]
    route["upstream"] = "app"
    edge = edge_factory(config)
    # On two cores or more: edge (master, hence every worker it forks) and two busy
    # neighbours share CPU 0: the workers are starved. Redis may run anywhere, before
    # other processes where allowed (nice -10): a Redis starved by a busy machine is
    # slow for real, a store timeout, which is not what this test is about.
    pinned = {0} if (os.cpu_count() or 1) >= 2 else None
    if pinned:
        for pid in [edge.pid, *edge.worker_pids()]:
            os.sched_setaffinity(pid, pinned)
    try:
        os.setpriority(os.PRIO_PROCESS, redis.pid, -10)
    except PermissionError:
        pass  # not allowed here: Redis competes like the rest
    neighbours = _busy_neighbours(20.0, pinned)
    try:
        load = Load(edge.port, 200, 8.0)
        for _ in range(3):
            gevent.sleep(2.0)
            edge.reload()  # new workers start under pressure, beside the old ones draining
        load.join()
    finally:
        _stop(neighbours)
    gevent.sleep(0.5)  # the last statsd packets
    fallbacks = statsd.counts["edge.plugin.ratelimit.fallback.closed"]
    overruns = statsd.counts["edge.plugin.ratelimit.on_request.timeout"]
    assert load.total > 500, (load.statuses, load.errors)
    # a fallback decision (`closed`: a 503) is a healthy Redis treated as failed: hundreds
    # per run before the fix; an overrun is the starved worker itself, not the store
    assert fallbacks <= load.total / 1000, (fallbacks, load.statuses)
    assert load.statuses[503] <= fallbacks + overruns, (fallbacks, overruns, load.statuses)
    assert load.total == load.statuses[200] + load.statuses[503], load.statuses


# --------------------------------------------------------------------------- default plugin budget

_DEGRADING_PLUGIN = '''
from edge.context import Response
from edge.errors import StoreUnavailable
from edge.plugins import Plugin


class Degrading(Plugin):
    """Reads a flag from the store; answers a degraded 200 itself when the store fails."""

    name = "degrading"

    def __init__(self, config, services):
        self._store = services.store

    def on_request(self, ctx):
        try:
            self._store.get("flag")
        except StoreUnavailable:
            return Response(200, [("X-Degraded", "1")], b"degraded\\n")
        return None
'''


def test_default_budget_lets_a_plugin_handle_its_own_store_timeout(edge_factory, make_redis_server, tmp_path):
    # issue 8: with a budget equal to store.timeout, the hook was cut off (503) before its
    # own StoreUnavailable handling ran; the default budget now outlasts a store call
    redis = make_redis_server()
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "degrading.py").write_text(_DEGRADING_PLUGIN)
    edge = edge_factory({
        "store": {"backend": "redis", "url": redis.url},  # default store.timeout
        "plugin_dirs": [str(d)],
        "plugins": {"degrading": {}},  # default timeout and on_failure
        "routes": [{"match": {"path": "/"}, "respond": {"status": 200, "body": "ok"}}],
    })
    import requests

    assert requests.get(edge.url + "/", timeout=10).text == "ok"
    suspend(redis.pid)  # hung: connections accepted, nothing answered
    try:
        answers = [requests.get(edge.url + "/", timeout=10) for _ in range(20)]
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    assert [(r.status_code, r.headers.get("X-Degraded")) for r in answers] == [(200, "1")] * 20
