#!/usr/bin/env python3
"""Kill one of three origins under load and count what clients saw (issue 9's failover figure).

Usage: scripts/bench_failover.py [--duration 12] [--kill-at 4] [--connections 32] [--workers 2]
                                 [--balance p2c_ewma] [--restart-at 8]

Starts three demo origins (scripts/origin.py) and edge with ``--workers`` workers in front
of them (one pool, active health checks every 0.5 s, fall 2, rise 2, the default retries:
a refused or reset connection goes to another server), runs ``wrk`` against edge for
``--duration`` seconds with ``--connections`` keep-alive connections, kills the second
origin (SIGKILL) ``--kill-at`` seconds in, optionally restarts it at ``--restart-at``,
and prints wrk's totals: requests, non-2xx/3xx answers and socket errors. The issue's
target is 0 non-2xx answers and 0 errors. Every process is stopped by PID at the end.
Loopback only; bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and (ROOT / ".venv" / "bin" / "python").exists():
    os.execv(str(ROOT / ".venv" / "bin" / "python"), [str(ROOT / ".venv" / "bin" / "python"), *sys.argv])
sys.path.insert(0, str(ROOT))

from edge.launch import start_edge, start_origin  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=12)
    p.add_argument("--kill-at", type=float, default=4.0)
    p.add_argument("--restart-at", type=float, default=None)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--balance", default="p2c_ewma")
    opts = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edge-failover-"))
    started = []
    try:
        origins = [start_origin(f"o{i}", log_dir=str(tmp)) for i in range(3)]
        started += origins
        config = {
            "upstreams": {"app": {
                "servers": [f"127.0.0.1:{o.port}" for o in origins],
                "balance": opts.balance,
                "health": {"active": {"path": "/", "interval": "0.5s", "timeout": "0.5s", "fall": 2, "rise": 2}},
            }},
            "routes": [{"match": {"path": "/"}, "upstream": "app"}],
        }
        (tmp / "edge").mkdir()
        edge = start_edge(config, workers=opts.workers, work_dir=str(tmp / "edge"))
        started.append(edge)
        victim = origins[1]
        port = victim.port

        def chaos() -> None:
            time.sleep(opts.kill_at)
            victim.proc.send_signal(signal.SIGKILL)
            print(f"t={opts.kill_at:.1f}s killed origin o1 (:{port})", flush=True)
            if opts.restart_at is not None:
                time.sleep(max(0.0, opts.restart_at - opts.kill_at))
                started.append(start_origin("o1", port=port, log_dir=str(tmp)))
                print(f"t={opts.restart_at:.1f}s restarted origin o1", flush=True)

        threading.Thread(target=chaos, daemon=True).start()
        out = subprocess.run(["wrk", "-t1", f"-c{opts.connections}", f"-d{opts.duration}s", "--latency",
                              f"{edge.url}/bytes/1024"], capture_output=True, text=True, timeout=opts.duration + 60).stdout
        requests = re.search(r"(\d+) requests in", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        print(out.rstrip())
        print(f"\nrequests {requests.group(1) if requests else '?'}, non-2xx {non2xx.group(1) if non2xx else 0}, "
              f"socket errors {sum(map(int, errors.groups())) if errors else 0}")
        log = edge.log()
        print(f"edge log: {log.count('connect to')} connect failures logged, "
              f"{log.count('marked down') + log.count(' down ')} down transitions mentioned")
    finally:
        for proc in reversed(started):
            proc.stop()


if __name__ == "__main__":
    main()
