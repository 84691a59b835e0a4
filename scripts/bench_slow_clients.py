#!/usr/bin/env python3
"""Slow clients (issue 7, defect 5): trickling connections closed at the head deadline, latency of the others.

Usage (from the repository root)::

    .venv/bin/python scripts/bench_slow_clients.py                    # 200 trickling conns, 2 workers
    .venv/bin/python scripts/bench_slow_clients.py --workers 1 --json slow.json
    .venv/bin/python scripts/bench_slow_clients.py --conns 50 --header-timeout 3s   # a quick look

Theory of operation
-------------------
The script starts a demo origin (``scripts/origin.py``) and a real edge (gunicorn master +
``--workers`` gevent workers, ``edge.launch.start_edge``) proxying every path to it, with
``server.header_timeout`` left at its default (10 s) unless ``--header-timeout`` is given.
Everything runs on 127.0.0.1; both processes are stopped by PID when the script ends, also
on an error or Ctrl-C.

In this process (gevent greenlets, gevent sockets):

- ``--conns`` *trickling* connections are opened at once. Each sends a request head one
  byte per ``--interval`` seconds; the head is longer than the run, so it never completes.
  Between bytes the greenlet waits for anything from edge; once something arrives it reads
  until edge closes (or resets) the connection. It records when that happened relative to
  its own connect, the status line it got (expected: ``408``) and how many bytes it had sent.
  A connection still open after ``--give-up`` seconds counts as not closed.
- ``--clients`` *normal* keep-alive connections send ``GET /bytes/SIZE`` back to back
  (closed loop: the next request once the previous response is fully read) from just
  before the trickling connections open until the last of them is done, and record each
  request's latency (send to last body byte). Failed requests are counted and the
  connection reopened.

It prints the closed count, the spread of close times (min / median / max, seconds after
connect), the statuses received, and the normal requests' count, p50, p99 and max latency,
with the load average before and after (the machine may be shared: read the figures with
it). ``--json FILE`` writes the same plus each trickling connection's record.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import gevent  # noqa: E402
from gevent import socket  # noqa: E402

from edge.launch import start_edge, start_origin  # noqa: E402

#: a connection the test cannot make sense of is recorded with this status
NO_STATUS = "none"


def status_of(data: bytes) -> str:
    """The status code of the first response line in ``data``, or ``NO_STATUS``."""
    parts = data.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return parts[1].decode()
    return NO_STATUS


def trickle(port: int, head: bytes, interval_s: float, give_up_s: float) -> dict:
    """One trickling connection: a byte per ``interval_s`` until edge answers or closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=give_up_s)
    t0 = time.monotonic()
    sent, got, closed_s = 0, b"", None
    try:
        while closed_s is None and time.monotonic() - t0 < give_up_s:
            if not got and sent < len(head):
                try:
                    s.sendall(head[sent:sent + 1])
                    sent += 1
                except OSError:  # reset by edge before we saw anything
                    closed_s = time.monotonic() - t0
                    break
            # wait for edge until the next byte is due (or, once it answered, until it closes)
            wait_s = (t0 + sent * interval_s - time.monotonic()) if not got else give_up_s
            s.settimeout(max(wait_s, 0.001))
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if data:
                got += data
            else:
                closed_s = time.monotonic() - t0
    finally:
        s.close()
    return {"closed_s": closed_s, "status": status_of(got), "sent": sent}


def read_response(s, buf: bytes) -> bytes:
    """Read one response with a Content-Length body from ``s``; return what follows it."""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed before the head ended")
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    if status_of(head) != "200":
        raise ConnectionError(f"status {status_of(head)}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed mid-body")
        buf += data
    return buf[length:]


def normal_client(port: int, size: int, running: list, latencies: list, errors: Counter) -> None:
    """Keep-alive GETs back to back while ``running[0]``; each latency appended in seconds."""
    request = f"GET /bytes/{size} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    s, buf = None, b""
    while running[0]:
        try:
            if s is None:
                s, buf = socket.create_connection(("127.0.0.1", port), timeout=30), b""
            t = time.perf_counter()
            s.sendall(request)
            buf = read_response(s, buf)
            latencies.append(time.perf_counter() - t)
        except (OSError, ConnectionError) as exc:
            errors[str(exc)[:60]] += 1
            if s is not None:
                s.close()
            s = None
    if s is not None:
        s.close()


def quantile(sorted_values: list, q: float):
    """Nearest-rank quantile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = math.ceil(round(q * len(sorted_values), 6))  # rounded first: 0.99 * 100 is 99.00000000000001
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def run(args) -> dict:
    config = {
        "upstreams": {"origin": {"servers": []}},
        "routes": [{"match": {"path": "/"}, "upstream": "origin"}],
    }
    if args.header_timeout:
        config["server"] = {"header_timeout": args.header_timeout}
    head = b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"a" * int(args.give_up / args.interval + 10)
    load_before = os.getloadavg()
    origin = start_origin()
    edge = None
    try:
        config["upstreams"]["origin"]["servers"] = [f"127.0.0.1:{origin.port}"]
        edge = start_edge(config, workers=args.workers)
        running, latencies, errors = [True], [], Counter()
        normals = [gevent.spawn(normal_client, edge.port, args.size, running, latencies, errors)
                   for _ in range(args.clients)]
        gevent.sleep(0.5)  # the normal clients are connected and warm before the trickle starts
        latencies.clear()
        t0 = time.monotonic()
        tricklers = [gevent.spawn(trickle, edge.port, head, args.interval, args.give_up) for _ in range(args.conns)]
        gevent.joinall(tricklers, timeout=args.give_up + 15)
        span_s = time.monotonic() - t0
        running[0] = False
        gevent.joinall(normals, timeout=35)
        records = [g.value if g.successful() else {"closed_s": None, "status": NO_STATUS, "sent": 0,
                                                    "error": repr(g.exception)} for g in tricklers]
    finally:
        if edge is not None:
            edge.stop()
        origin.stop()
    closes = sorted(r["closed_s"] for r in records if r["closed_s"] is not None)
    lat_ms = sorted(x * 1000 for x in latencies)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    return {
        "commit": commit, "workers": args.workers, "header_timeout": args.header_timeout or "default (10s)",
        "interval_s": args.interval, "span_s": round(span_s, 2),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "trickling": {
            "conns": args.conns, "closed": len(closes),
            "close_s": {"min": quantile(closes, 0), "median": quantile(closes, 0.5), "max": quantile(closes, 1.0)},
            "statuses": dict(Counter(r["status"] for r in records)),
            "bytes_sent": {"min": min(r["sent"] for r in records), "max": max(r["sent"] for r in records)},
        },
        "normal": {
            "clients": args.clients, "size": args.size, "requests": len(lat_ms), "errors": dict(errors),
            "latency_ms": {"p50": quantile(lat_ms, 0.5), "p99": quantile(lat_ms, 0.99), "max": quantile(lat_ms, 1.0)},
            "req_per_s": round(len(lat_ms) / span_s, 1),
        },
        "records": records,
    }


def report(r: dict) -> str:
    t, n = r["trickling"], r["normal"]
    c, lat = t["close_s"], n["latency_ms"]

    def s(x, fmt):
        return "-" if x is None else format(x, fmt)

    return "\n".join([
        f"commit {r['commit']}, {r['workers']} worker(s), header_timeout {r['header_timeout']}, "
        f"load average before {r['load_before']} after {r['load_after']}",
        f"trickling: {t['closed']}/{t['conns']} closed; close after connect min {s(c['min'], '.2f')} s, "
        f"median {s(c['median'], '.2f')} s, max {s(c['max'], '.2f')} s; statuses {t['statuses']}; "
        f"bytes sent {t['bytes_sent']['min']}-{t['bytes_sent']['max']}",
        f"normal: {n['requests']} GET /bytes/{n['size']} on {n['clients']} keep-alive conns in {r['span_s']} s "
        f"({n['req_per_s']} req/s); latency p50 {s(lat['p50'], '.2f')} ms, p99 {s(lat['p99'], '.2f')} ms, "
        f"max {s(lat['max'], '.2f')} ms; errors {n['errors'] or 0}",
    ])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--conns", type=int, default=200, help="trickling connections (default 200)")
    p.add_argument("--workers", type=int, choices=(1, 2), default=2, help="edge workers (default 2)")
    p.add_argument("--clients", type=int, default=4, help="normal keep-alive connections (default 4)")
    p.add_argument("--size", type=int, default=1024, help="bytes per normal response (default 1024)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between trickled bytes (default 1)")
    p.add_argument("--header-timeout", help="server.header_timeout (default: edge's default, 10s)")
    p.add_argument("--give-up", type=float, default=30.0,
                   help="a trickling connection still open after this many seconds counts as not closed (default 30)")
    p.add_argument("--json", metavar="FILE", help="write the figures and every trickling record as JSON")
    args = p.parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = result["trickling"]["closed"] == args.conns and result["trickling"]["statuses"] == {"408": args.conns}
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
