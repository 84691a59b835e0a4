"""The ratelimit plugin end to end: real gunicorn edges (2 workers each), real Redis and
memcached, real load from keep-alive clients in this process.

The load generator is ``Load``: N greenlets (gevent sockets, no monkey-patching), each
with one keep-alive connection to 127.0.0.1, sending ``GET`` until a deadline and
recording ``(t_done, status, latency)`` per response. Every loop is bounded by time
and the record by count.

Accuracy (issue 4): against ``100/s burst 20`` on one key, the admitted count from the
first admitted response over ``D`` seconds must be ``100 × D + 20`` within ±2%.
Failure: the store is killed (SIGKILL, by PID) during load and started again on the
same port; the policy must apply at once, every request stays within the store timeout
plus a margin, the fallback is counted (statsd, received here over UDP) and logged once
per worker, and the store is used again within 2 s.
"""

from __future__ import annotations

import socket as stdsocket
import time
import uuid
from collections import Counter

import gevent
import pytest
from gevent import socket as gsocket


RATE, BURST = 100, 20
MAX_RECORDS = 2_000_000  # bound on recorded responses per load run
STORE_TIMEOUT_S = 0.1  # the failure tests' store.timeout (default 50 ms; doubled against this box's load)
# The accuracy runs saturate both CPUs (200 clients, 4 workers, the store, this process):
# a CPU-starved worker then reads a store reply later than 50 ms, the call counts as a
# store failure and the fallback policy (here `open`) decides. That is the failure
# behaviour, tested below; for accuracy the store timeout is raised so that only the
# limit decides.
ACCURACY_STORE_TIMEOUT = "2s"  # only a hung store should ever reach the policy here
# a request during the outage may take the store timeout, plus scheduling on a shared 2-CPU box
LATENCY_MARGIN_S = 0.20
WORKERS = 2


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


def admitted_in_window(load: Load, duration_s: float) -> tuple[int, Counter]:
    """Admitted responses from the first admitted one over ``duration_s``; and all statuses."""
    first = min(t for t, s, _ in load.records if s == 200)
    admitted = sum(1 for t, s, _ in load.records if s == 200 and first <= t <= first + duration_s)
    return admitted, load.statuses()


# --------------------------------------------------------------------------- statsd


class StatsdSink:
    """A UDP statsd server on 127.0.0.1 that counts counter increments by name."""

    def __init__(self) -> None:
        self.sock = gsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.counts: Counter[str] = Counter()
        self._g = gevent.spawn(self._run)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        while True:
            data = self.sock.recv(65536)
            for line in data.decode(errors="replace").splitlines():
                name, _, rest = line.partition(":")
                value, _, kind = rest.partition("|")
                if kind.startswith("c"):
                    self.counts[name] += int(float(value))

    def close(self) -> None:
        self._g.kill()
        self.sock.close()


@pytest.fixture
def statsd():
    sink = StatsdSink()
    yield sink
    sink.close()


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
    edges = [edge_factory(cfg, workers=WORKERS) for _ in range(instances)]
    load = Load([e.port for e in edges], clients=200, duration_s=duration_s + 2.0).start()
    # stop a little after the measured window (the first admitted response + duration)
    while not any(s == 200 for _, s, _ in load.records[:2000]) and time.monotonic() < load.deadline:
        gevent.sleep(0.01)
    load.stop_at(time.monotonic() + duration_s + 0.3)
    load.join()
    admitted, statuses = admitted_in_window(load, duration_s)
    expected = RATE * duration_s + BURST
    print(f"\n{kind}: {instances} instance(s) x {WORKERS} workers, {duration_s:g} s: admitted {admitted} "
          f"(expected {expected:g}, {100 * (admitted - expected) / expected:+.2f}%), statuses {dict(statuses)}, "
          f"{len(load.records) / (duration_s + 0.3):.0f} req/s offered, {load.errors} connection errors")
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 10 * admitted  # the limit was really under pressure
    assert abs(admitted - expected) <= 0.02 * expected


# --------------------------------------------------------------------------- store failure


FAIL_RATE = 50  # /s, burst 10: well below what 10 clients offer


@pytest.mark.parametrize("kind", ["redis", "memcached"])
@pytest.mark.parametrize("policy", ["open", "closed", "local"])
def test_store_down_applies_policy_at_once_and_recovers(kind, policy, origin, edge_factory, tmp_path, statsd,
                                                         make_redis_server, make_memcached_server):
    server = make_redis_server() if kind == "redis" else make_memcached_server()
    prefix = unique_prefix()
    cfg = rl_config(origin, store_section(kind, server, prefix, tmp_path),
                    {"limits": [{"rate": f"{FAIL_RATE}/s", "burst": 10}], "on_store_error": policy, "local_share": 0.5,
                     "timeout": "1s"},
                    statsd.address)
    edge = edge_factory(cfg, workers=WORKERS)
    key = f"{prefix}rl:default:{FAIL_RATE}/1g:127.0.0.1"

    load = Load([edge.port], clients=10, duration_s=30.0).start()  # stopped below; 30 s is the bound
    gevent.sleep(1.0)
    assert load.statuses()[429] > 0 and has_key(kind, server, key)

    t_stop = time.monotonic()
    server.stop()
    gevent.sleep(1.5)
    t_start = time.monotonic()
    server.start()
    # the store is used again as soon as edge writes the limit's key into the new, empty server
    t_used = None
    while time.monotonic() - t_start < 5.0:
        if has_key(kind, server, key):
            t_used = time.monotonic()
            break
        gevent.sleep(0.02)
    gevent.sleep(1.0)
    t_end = time.monotonic()
    load.stop_at(t_end)
    load.join()

    down = load.statuses(t_stop + STORE_TIMEOUT_S + LATENCY_MARGIN_S, t_start)
    worst = load.max_latency(t_stop, t_start)
    after = load.statuses(t_used + 0.5 if t_used else t_end, t_end)
    log = edge.log()
    went_down = log.count("ratelimit: store unavailable")
    came_back = log.count("ratelimit: store available again")
    fallbacks = statsd.counts[f"edge.plugin.ratelimit.fallback.{policy}"]
    recovered_in = (t_used - t_start) if t_used else None
    print(f"\n{kind}/{policy}: down {dict(down)}, worst latency while down {worst * 1000:.0f} ms, "
          f"fallbacks counted {fallbacks}, logged down {went_down}x up {came_back}x, "
          f"store used again after {recovered_in}, after: {dict(after)}")

    assert sum(down.values()) > 20
    if policy == "open":
        assert set(down) == {200}
    elif policy == "closed":
        assert set(down) == {503}
    else:  # local: half of 50/s per node, on the node's own store
        span = t_start - (t_stop + STORE_TIMEOUT_S + LATENCY_MARGIN_S)
        assert set(down) == {200, 429}
        assert down[200] <= 5 + FAIL_RATE * 0.5 * span + 5
    assert worst <= STORE_TIMEOUT_S + LATENCY_MARGIN_S
    assert fallbacks >= sum(down.values())
    # logged once per state change, not per request: each worker logs the switch to the
    # fallback and back once for the outage (a store call that times out on this shared
    # machine before or after it is a real, shorter outage of its own, logged the same way)
    assert 1 <= went_down == came_back <= 2 * WORKERS and went_down * 100 < fallbacks
    assert recovered_in is not None and recovered_in <= 2.0
    assert set(after) == {200, 429} and after[429] > after[200]  # shared limits again


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("kind, status", [("local", 429), ("redis", 503)])
def test_concurrency_cap_across_workers(kind, status, origin, edge_factory, tmp_path, request):
    server = request.getfixturevalue("redis_server") if kind == "redis" else None
    cap = 3
    cfg = rl_config(origin, store_section(kind, server, unique_prefix(), tmp_path),
                    {"concurrency": {"max": cap, "status": status}})
    edge = edge_factory(cfg, workers=WORKERS)

    def one(path: str) -> int:
        with gsocket.create_connection(("127.0.0.1", edge.port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".encode())
            try:
                return _read_response(s, b"")[0]
            except (ConnectionClosed, OSError):
                return -1

    def batch(n: int) -> Counter:
        return Counter(g.value for g in gevent.joinall([gevent.spawn(one, "/delay/1") for _ in range(n)], timeout=20))

    first = batch(10)
    assert first == Counter({200: cap, status: 10 - cap}), first
    # every slot came back, including those of the refused requests
    second = batch(cap)
    assert second == Counter({200: cap}), second
