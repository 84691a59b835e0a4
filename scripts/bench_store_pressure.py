#!/usr/bin/env python3
"""Stores under load and CPU pressure (issue 8, part 3): failure counts with default settings.

Usage (from the repository root)::

    .venv/bin/python scripts/bench_store_pressure.py hotkey                 # memcached, redis, local x 100, 400 connections
    .venv/bin/python scripts/bench_store_pressure.py hotkey --backends memcached --conns 400 --duration 10
    .venv/bin/python scripts/bench_store_pressure.py cpu                    # redis + busy neighbours + reloads
    .venv/bin/python scripts/bench_store_pressure.py cpu --reloads 5 --duration 15

Theory of operation
-------------------
Each run starts its own store server (redis-server or memcached on a free port), a
real edge (gunicorn master + 2 workers) with the ``ratelimit`` plugin on one route
that answers by itself (``respond``: no origin in the way), keyed on ``client_ip``:
every request of the run hits ONE key (the hot key). The limit is high enough
(1,000,000/s) that every step is admitted and writes, the worst case for a CAS
store. Nothing else is configured: ``store.timeout``, the plugin's time budget and
``on_store_error`` are the defaults unless a flag says otherwise.

The load is ``--conns`` keep-alive clients (greenlets with gevent sockets in this
process) for ``--duration`` seconds. The failure rate is responses that are not 200
(503 from a plugin overrun or ``closed``, 500 from an exception) over all responses;
connection errors are counted apart, and so are the requests that the default
``on_store_error: open`` admitted without the store (``fallback``, from statsd).

``cpu``: the same on redis (100 clients; ``--upstream`` proxies to a demo origin, more
work per request), while ``--neighbours`` CPU-bound processes
(``while True: pass`` bounded by the run's duration, one per core by default) compete
with the workers, and edge is reloaded (HUP) ``--reloads`` times during the run. It
reports the fallback decisions (statsd ``plugin.ratelimit.fallback.open``, received
here) with ``on_store_error: open`` and the 503s with ``closed``: with a healthy
Redis, both should be 0. Every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket as stdsocket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import gevent  # noqa: E402
from gevent import socket as gsocket  # noqa: E402

from edge.launch import start_edge, start_origin  # noqa: E402
from tests.fixtures.services import MemcachedServer, RedisServer  # noqa: E402

MAX_RECORDS = 5_000_000


def _read_response(sock, buf: bytes) -> tuple[int, bytes]:
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        buf += data
    return status, buf[length:]


class Load:
    """``clients`` keep-alive greenlets on ``port`` until ``duration_s`` has passed."""

    def __init__(self, port: int, clients: int, duration_s: float) -> None:
        self.port = port
        self.deadline = time.monotonic() + duration_s
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self._request = b"GET / HTTP/1.1\r\nHost: edge.test\r\n\r\n"
        self._greenlets = [gevent.spawn(self._client) for _ in range(clients)]

    def join(self) -> "Load":
        gevent.joinall(self._greenlets, timeout=max(0.0, self.deadline - time.monotonic()) + 15)
        gevent.killall(self._greenlets, block=True, timeout=5)
        return self

    def _client(self) -> None:
        sock, buf = None, b""
        while time.monotonic() < self.deadline and sum(self.statuses.values()) < MAX_RECORDS:
            try:
                if sock is None:
                    sock = gsocket.create_connection(("127.0.0.1", self.port), timeout=10)
                    sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
                    buf = b""
                sock.sendall(self._request)
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


class StatsdSink:
    """UDP statsd on 127.0.0.1 counting counters by name."""

    def __init__(self) -> None:
        self.sock = gsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.counts: Counter[str] = Counter()
        self._g = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            for line in self.sock.recv(65536).decode(errors="replace").splitlines():
                name, _, rest = line.partition(":")
                value, _, kind = rest.partition("|")
                if kind.startswith("c"):
                    self.counts[name] += int(float(value))

    def close(self) -> None:
        self._g.kill()
        self.sock.close()


def edge_config(backend: str, address: str | None, plugin: dict, statsd_port: int | None = None,
                origin_port: int | None = None) -> dict:
    store: dict = {"backend": backend}
    if backend == "redis":
        store["url"] = f"redis://{address}"
    elif backend == "memcached":
        store["servers"] = [address]
    route: dict = {"match": {"path": "/"}, "respond": {"status": 200, "body": "ok"}}
    cfg: dict = {"store": store, "routes": [route]}
    if origin_port is not None:  # proxied to a demo origin: more work per request in the worker
        cfg["upstreams"] = {"app": {"servers": [f"127.0.0.1:{origin_port}"]}}
        route.pop("respond")
        route["upstream"] = "app"
    cfg.update({
        "plugins": {"ratelimit": {"limits": [{"rate": "1000000/s"}], **plugin}},
    })
    if statsd_port is not None:
        cfg["metrics"] = {"statsd": f"127.0.0.1:{statsd_port}", "prefix": "edge"}
    return cfg


def start_store(backend: str):
    if backend == "redis":
        return RedisServer().start()
    if backend == "memcached":
        return MemcachedServer().start()
    return None


def busy_neighbours(n: int, duration_s: float) -> list[subprocess.Popen]:
    """``n`` CPU-bound processes, each ending by itself after ``duration_s``."""
    code = f"import time\nend = time.monotonic() + {duration_s}\nwhile time.monotonic() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def stop_pids(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(timeout=10)


def hotkey(args: argparse.Namespace) -> None:
    print(f"# hot key, defaults, {args.duration:g} s per run, 2 workers; load avg {os.getloadavg()[0]:.2f} at start")
    print(f"{'backend':10} {'conns':>5} {'responses':>9} {'non-200':>8} {'rate':>8} {'fallback':>8}  "
          "statuses / conn errors")
    for backend in args.backends:
        for conns in args.conns:
            server = start_store(backend)
            sink = StatsdSink()
            edge = None
            try:
                edge = start_edge(edge_config(backend, server.address if server else None, {}, sink.port),
                                  work_dir=tempfile.mkdtemp(prefix="edge-bench-"))
                load = Load(edge.port, conns, args.duration).join()
                gevent.sleep(0.5)  # the last statsd packets
                total = sum(load.statuses.values())
                bad = total - load.statuses[200]
                # decisions of on_store_error (default open: admitted, so not in non-200)
                fallbacks = sink.counts["edge.plugin.ratelimit.fallback.open"]
                print(f"{backend:10} {conns:>5} {total:>9} {bad:>8} {100 * bad / max(total, 1):>7.3f}% {fallbacks:>8}  "
                      f"{dict(load.statuses)} / {load.errors}", flush=True)
            finally:
                if edge is not None:
                    edge.stop()
                    shutil.rmtree(edge.config_path.parent, ignore_errors=True)
                sink.close()
                if server is not None:
                    server.close()


def cpu(args: argparse.Namespace) -> None:
    n = args.neighbours if args.neighbours is not None else (os.cpu_count() or 1)
    print(f"# redis, defaults, {args.conns[0]} conns, {args.duration:g} s, {n} busy neighbours, {args.reloads} reloads; "
          f"load avg {os.getloadavg()[0]:.2f} at start")
    origin = start_origin("o1") if args.upstream else None
    for policy in ("open", "closed"):
        server = RedisServer().start()
        sink = StatsdSink()
        edge = neighbours = None
        try:
            edge = start_edge(edge_config("redis", server.address, {"on_store_error": policy}, sink.port,
                                          origin.port if origin else None),
                              work_dir=tempfile.mkdtemp(prefix="edge-bench-"))
            neighbours = busy_neighbours(n, args.duration + 1)
            load = Load(edge.port, args.conns[0], args.duration)
            for i in range(args.reloads):
                gevent.sleep(args.duration / (args.reloads + 1))
                edge.reload()
            load.join()
            gevent.sleep(0.5)  # the last statsd packets
            total = sum(load.statuses.values())
            print(f"on_store_error={policy:6} responses={total} statuses={dict(load.statuses)} "
                  f"conn_errors={load.errors} fallback.{policy}={sink.counts[f'edge.plugin.ratelimit.fallback.{policy}']} "
                  f"overruns={sum(v for k, v in sink.counts.items() if k.endswith('.timeout'))} "
                  f"statsd_lines={sum(sink.counts.values())}",
                  flush=True)
        finally:
            if neighbours:
                stop_pids(neighbours)
            if edge is not None:
                edge.stop()
                shutil.rmtree(edge.config_path.parent, ignore_errors=True)
            sink.close()
            server.close()
    if origin is not None:
        origin.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("hotkey", "cpu"))
    ap.add_argument("--backends", nargs="+", default=["memcached", "redis", "local"])
    ap.add_argument("--conns", nargs="+", type=int, default=None)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--reloads", type=int, default=5)
    ap.add_argument("--neighbours", type=int, default=None)
    ap.add_argument("--upstream", action="store_true", help="cpu: proxy to a demo origin instead of `respond`")
    args = ap.parse_args()
    if args.conns is None:
        args.conns = [100, 400] if args.mode == "hotkey" else [100]
    hotkey(args) if args.mode == "hotkey" else cpu(args)


if __name__ == "__main__":
    main()
