"""The ratelimit plugin end to end: real gunicorn edges (2 workers each), real Redis and
memcached, real load from keep-alive clients in this process.

The load generator is ``Load``: N greenlets (gevent sockets, no monkey-patching), each
with one keep-alive connection to 127.0.0.1, sending ``GET`` until a deadline and
recording ``(t_done, status, latency)`` per response. Every loop is bounded by time
and the record by count.

Accuracy (issue 4): against ``100/s burst 20`` on one key, the admissions must lie within
the bounds a correct GCRA limiter obeys given the instants the workers decided (their
access-log lines; tests/fixtures/admission.py): at most ``burst + rate × span`` overall,
and at least ``rate ×`` the time the limit was saturated. A wall-clock window of the
test's choosing failed on a busy machine (issue 8): descheduled workers leave the bucket
idle, and a correct limiter does not make that up.
Failure: the store is killed (SIGKILL, by PID) during load and started again on the
same port; every request decided while it was down follows the policy, the fallback is
counted (statsd, received here over UDP) and logged once per state change, and the store
is used again without a restart. How fast (worst latency while down, time to recover)
is measured by ``scripts/bench_store_outage``, not asserted.
"""

from __future__ import annotations

import calendar
import json
import socket as stdsocket
import time
import uuid
from collections import Counter

import gevent
import pytest
from gevent import socket as gsocket

from tests.fixtures.admission import gcra_bounds
from tests.fixtures.statsd import StatsdSink, statsd  # noqa: F401  (the fixture)


RATE, BURST = 100, 20
MAX_RECORDS = 2_000_000  # bound on recorded responses per load run
STORE_TIMEOUT_S = 0.1  # the failure tests' store.timeout (default 50 ms; doubled against this box's load)
# The accuracy runs saturate both CPUs (200 clients, 4 workers, the store, this process):
# a CPU-starved worker then reads a store reply later than 50 ms, the call counts as a
# store failure and the fallback policy (here `open`) decides. That is the failure
# behaviour, tested below; for accuracy the store timeout is raised so that only the
# limit decides.
ACCURACY_STORE_TIMEOUT = "2s"  # only a hung store should ever reach the policy here
WORKERS = 2
PAD_S = 0.002  # access-log timestamps: millisecond rounding, and the instant between two clock reads


# --------------------------------------------------------------------------- load


class ConnectionClosed(Exception):
    pass


def _read_response(sock, buf: bytes) -> tuple[int, bytes, bool]:
    """Read one response (Content-Length or chunked); returns (status, leftover bytes, connection closes)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionClosed()
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    if chunked:
        while True:
            while b"\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionClosed()
                buf += data
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionClosed()
                buf += data
            buf = buf[size + 2:]
            if size == 0:
                break
    else:
        while len(buf) < length:
            data = sock.recv(65536)
            if not data:
                raise ConnectionClosed()
            buf += data
        buf = buf[length:]
    return status, buf, close


class Load:
    """``clients`` keep-alive greenlets spread over ``ports``, until ``stop()`` or ``duration_s``."""

    def __init__(self, ports: list[int], clients: int, duration_s: float, path: str = "/") -> None:
        self.ports = ports
        self.clients = clients
        self.deadline = time.monotonic() + duration_s
        self.request = f"GET {path} HTTP/1.1\r\nHost: edge.test\r\n\r\n".encode()
        self.records: list[tuple[float, int, float]] = []
        self.errors = 0
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> "Load":
        self._greenlets = [gevent.spawn(self._client, self.ports[i % len(self.ports)]) for i in range(self.clients)]
        return self

    def stop_at(self, t: float) -> None:
        self.deadline = min(self.deadline, t)

    def join(self) -> "Load":
        gevent.joinall(self._greenlets, timeout=max(0.0, self.deadline - time.monotonic()) + 15)
        gevent.killall(self._greenlets, block=True, timeout=5)
        return self

    def _client(self, port: int) -> None:
        sock, buf = None, b""
        records = self.records
        while time.monotonic() < self.deadline and len(records) < MAX_RECORDS:
            try:
                if sock is None:
                    sock = gsocket.create_connection(("127.0.0.1", port), timeout=10)
                    sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
                    buf = b""
                t = time.monotonic()
                sock.sendall(self.request)
                status, buf, close = _read_response(sock, buf)
                done = time.monotonic()
                records.append((done, status, done - t))
                if close:
                    sock.close()
                    sock = None
            except (ConnectionClosed, OSError):
                self.errors += 1
                if sock is not None:
                    sock.close()
                sock = None
                gevent.sleep(0.005)
        if sock is not None:
            sock.close()

    def statuses(self, t0: float = 0.0, t1: float = float("inf")) -> Counter:
        return Counter(s for t, s, _ in self.records if t0 <= t < t1)

    def max_latency(self, t0: float, t1: float) -> float:
        return max((lat for t, _, lat in self.records if t0 <= t < t1), default=0.0)


# --------------------------------------------------------------------------- statsd




# --------------------------------------------------------------------------- helpers


def store_section(kind: str, server, prefix: str, tmp_path) -> dict:
    # path: the node-local fallback store lives at <path>-fallback, inside this test's directory
    base = {"key_prefix": prefix, "timeout": f"{int(STORE_TIMEOUT_S * 1000)}ms", "path": str(tmp_path / "node-store")}
    if kind == "redis":
        return {"backend": "redis", "url": server.url, **base}
    if kind == "memcached":
        return {"backend": "memcached", "servers": [server.address], **base}
    return {"backend": "local", **base}


def rl_config(origin, store: dict, plugin: dict, statsd_addr: str | None = None) -> dict:
    cfg = {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [{"name": "api", "match": {"path": "/"}, "upstream": "app"}],
        "store": store,
        "plugins": {"ratelimit": plugin},
    }
    if statsd_addr:
        cfg["metrics"] = {"statsd": statsd_addr}
    return cfg


def has_key(kind: str, server, key: str) -> bool:
    """Whether the store server holds ``key`` (raw protocol, so this works while edge is down)."""
    try:
        with stdsocket.create_connection(("127.0.0.1", server.port), timeout=0.5) as s:
            if kind == "redis":
                s.sendall(f"EXISTS {key}\r\n".encode())
                return s.recv(64).startswith(b":1")
            s.sendall(f"get {key}\r\n".encode())
            return s.recv(256).startswith(b"VALUE")
    except OSError:
        return False


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("kind, instances, duration_s", [
    ("redis", 2, 10.0),
    ("memcached", 2, 10.0),
    ("local", 1, 5.0),
])
def test_accuracy_across_workers_and_instances(kind, instances, duration_s, origin, edge_factory, tmp_path, request):
    server = request.getfixturevalue(f"{kind}_server") if kind != "local" else None
    store = {**store_section(kind, server, unique_prefix(), tmp_path), "timeout": ACCURACY_STORE_TIMEOUT}
    cfg = rl_config(origin, store, {"limits": [{"rate": f"{RATE}/s", "burst": BURST}], "key": "client_ip",
                                    "timeout": "2s", "on_store_error": "closed"})
    logs = [tmp_path / f"access{i}.log" for i in range(instances)]
    edges = [edge_factory({**cfg, "server": {"accesslog": str(log)}}, workers=WORKERS) for log in logs]
    load = Load([e.port for e in edges], clients=200, duration_s=duration_s).start().join()
    for e in edges:
        e.stop(graceful=True)  # every access-log line is written
    admitted, refused = [], []
    for log in logs:
        for bracket, status in decisions(log):
            (admitted if status == 200 else refused).append(bracket)
    b = gcra_bounds(admitted, refused, RATE, BURST)
    statuses = load.statuses()
    print(f"\n{kind}: {instances} instance(s) x {WORKERS} workers, {duration_s:g} s: admitted {b.admitted} "
          f"(at most {b.high:.0f}), {b.admitted_in_chain} while saturated for {b.saturated_s:.2f} s "
          f"(at least {b.low:.0f}), statuses {dict(statuses)}, {len(load.records) / duration_s:.0f} req/s offered, "
          f"{load.errors} connection errors")
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] <= b.admitted and statuses[429] <= len(refused)  # the logs hold every decision
    # the limit was under pressure long enough for the lower bound to say something
    assert b.saturated_s >= min(1.0, duration_s / 5), b
    assert b.holds(slack=0.01 * b.admitted + 3), b


def decisions(access_log) -> list[tuple[tuple[float, float], int]]:
    """``((earliest, latest), status)`` of each limiter decision, from one edge's access log.

    The line's ``time`` is the worker's wall clock when it was written (rounded down to the
    millisecond) and ``duration_ms`` the time since the request started: the decision lies
    between. ``PAD_S`` covers the rounding and the instant between the two clock reads.
    """
    out = []
    for line in access_log.read_text().splitlines():
        entry = json.loads(line)
        if entry["path"] != "/" or entry["status"] not in (200, 429):
            continue  # edge's start-up probe
        stamp, _, ms = entry["time"].rstrip("Z").partition(".")
        end = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000
        out.append(((end - entry["duration_ms"] / 1000 - PAD_S, end + 0.001 + PAD_S), entry["status"]))
    return out


# --------------------------------------------------------------------------- store failure


FAIL_RATE = 50  # /s, burst 10: well below what 10 clients offer
DOWN_DECISIONS = 60  # requests decided while the store is down, before it is started again
BOUND_S = 30.0  # every wait below gives up after this


def wait_for(cond, timeout_s: float = BOUND_S, step_s: float = 0.02) -> bool:
    """Poll ``cond`` (yielding to the load greenlets) until true; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(step_s)
    return True


def outage(kind: str, policy: str, origin, edge_factory, tmp_path, statsd, server) -> dict:
    """Run load, kill the store, start it again; what was observed, by client timestamps.

    Shared with ``scripts/bench_store_outage``, which reports the latency figures this
    test does not assert. A request belongs to the outage when it was sent after the
    store was killed and answered before it was started again: it was decided while the
    store was down, however slow the machine. The outage lasts until ``DOWN_DECISIONS``
    such requests were answered (at least 1 s).
    """
    prefix = unique_prefix()
    cfg = rl_config(origin, store_section(kind, server, prefix, tmp_path),
                    {"limits": [{"rate": f"{FAIL_RATE}/s", "burst": 10}], "on_store_error": policy, "local_share": 0.5,
                     "timeout": "1s"},
                    statsd.address)
    edge = edge_factory(cfg, workers=WORKERS)
    key = f"{prefix}rl:default:{FAIL_RATE}/1g:127.0.0.1"

    load = Load([edge.port], clients=10, duration_s=4 * BOUND_S).start()  # stopped below
    shared = wait_for(lambda: load.statuses()[429] > 0 and has_key(kind, server, key))

    def sent_after(t0: float, t1: float = float("inf")) -> list[tuple[float, int, float]]:
        return [r for r in load.records if r[0] - r[2] >= t0 and r[0] < t1]

    t_stop = time.monotonic()
    server.stop()
    gevent.sleep(1.0)
    wait_for(lambda: len(sent_after(t_stop)) >= DOWN_DECISIONS)
    t_start = time.monotonic()
    server.start()
    # the store is used again as soon as edge writes the limit's key into the new, empty server
    t_used = time.monotonic() if wait_for(lambda: has_key(kind, server, key)) else None
    # ... by one worker; each worker comes back on its own (memcached's client retries a
    # dead server after a pause), and says so once in the log
    log_count = edge.log().count
    wait_for(lambda: log_count("ratelimit: store available again") >= log_count("ratelimit: store unavailable"))
    t_back = time.monotonic()

    def after_window_ok() -> bool:
        # enough requests, sent over at least 0.5 s: a correct limiter must admit some in that
        # span (25 tokens at 50/s) even if the burst was spent just before t_back (issue 8)
        sent = [r[0] - r[2] for r in sent_after(t_back)]
        return len(sent) >= DOWN_DECISIONS and max(sent) - min(sent) >= 0.5

    wait_for(after_window_ok)
    t_end = time.monotonic()
    load.stop_at(t_end)
    load.join()

    down_records = sent_after(t_stop, t_start)
    down = Counter(s for _, s, _ in down_records)
    wait_for(lambda: statsd.counts[f"edge.plugin.ratelimit.fallback.{policy}"] >= sum(down.values()),
             timeout_s=10)  # the last statsd datagrams may still be on their way
    log = edge.log()
    return {
        "shared_before": shared,
        "down": down,
        "down_span_s": t_start - t_stop,
        "worst_down_latency_s": max((lat for _, _, lat in down_records), default=0.0),
        "recovered_in_s": (t_used - t_start) if t_used is not None else None,
        "all_back_in_s": t_back - t_start,
        "after": Counter(s for _, s, _ in sent_after(t_back)),
        "went_down": log.count("ratelimit: store unavailable"),
        "came_back": log.count("ratelimit: store available again"),
        "fallbacks": statsd.counts[f"edge.plugin.ratelimit.fallback.{policy}"],
    }


@pytest.mark.parametrize("kind", ["redis", "memcached"])
@pytest.mark.parametrize("policy", ["open", "closed", "local"])
def test_store_down_applies_policy_at_once_and_recovers(kind, policy, origin, edge_factory, tmp_path, statsd,
                                                         make_redis_server, make_memcached_server):
    server = make_redis_server() if kind == "redis" else make_memcached_server()
    o = outage(kind, policy, origin, edge_factory, tmp_path, statsd, server)
    down, after = o["down"], o["after"]
    print(f"\n{kind}/{policy}: {o}")

    assert o["shared_before"]
    # every request decided while the store was down follows the policy, from the first one
    assert sum(down.values()) >= DOWN_DECISIONS
    if policy == "open":
        assert set(down) == {200}
    elif policy == "closed":
        assert set(down) == {503}
    else:  # local: half of 50/s per node (burst 5), on the node's own store
        assert set(down) == {200, 429}
        assert down[200] <= 5 + FAIL_RATE * 0.5 * o["down_span_s"] + 2
    assert o["fallbacks"] >= sum(down.values())
    # logged once per state change, not per request: each worker logs the switch to the
    # fallback and back (a healthy store call that times out on a starved worker is a
    # shorter outage of its own, logged the same way, and may not be over yet)
    assert 1 <= o["came_back"] <= o["went_down"] <= o["came_back"] + WORKERS
    assert o["went_down"] * 5 <= o["fallbacks"]
    # recovers without a restart: the store holds the limit's key again, every worker that
    # switched to the fallback switched back, limits are shared again
    assert o["recovered_in_s"] is not None
    assert after[429] > after[200] > 0, after
    assert after[200] + after[429] >= 0.9 * sum(after.values()), after


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("kind, status", [("local", 429), ("redis", 503)])
def test_concurrency_cap_across_workers(kind, status, origin, edge_factory, tmp_path, request):
    server = request.getfixturevalue("redis_server") if kind == "redis" else None
    cap = 3
    cfg = rl_config(origin, store_section(kind, server, unique_prefix(), tmp_path),
                    {"concurrency": {"max": cap, "status": status}})
    edge = edge_factory(cfg, workers=WORKERS)

    def one(path: str) -> tuple[float, float, int]:
        with gsocket.create_connection(("127.0.0.1", edge.port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".encode())
            sent = time.monotonic()
            try:
                status = _read_response(s, b"")[0]
            except (ConnectionClosed, OSError):
                status = -1
            return sent, time.monotonic(), status

    def batch(n: int) -> tuple[Counter, bool]:
        """Statuses of n concurrent 1 s requests, and whether all n really were in flight at once."""
        gs = gevent.joinall([gevent.spawn(one, "/delay/1") for _ in range(n)], timeout=30)
        results = [g.value for g in gs if g.value is not None]
        together = len(results) == n and max(r[0] for r in results) < min(r[1] for r in results)
        return Counter(r[2] for r in results), together

    # an attempt in which this process stalled for longer than the 1 s requests (so they
    # were not all in flight together) proves nothing either way: it is made again (issue 8)
    for _ in range(3):
        first, together = batch(10)
        if together:
            break
    assert together, "requests never overlapped"
    assert first == Counter({200: cap, status: 10 - cap}), first
    # every slot came back, including those of the refused requests
    second, _ = batch(cap)
    assert second == Counter({200: cap}), second
