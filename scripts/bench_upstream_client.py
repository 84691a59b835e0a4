#!/usr/bin/env python3
"""CPU cost of one upstream exchange, in process (no edge, no wrk): a quick check for client changes.

    python scripts/bench_upstream_client.py [--tree DIR] [--requests 8000] [--concurrency 16] [--servers N]

Starts ``scripts/origin.py`` on a free port, then runs ``UpstreamPool.exchange`` (1 KiB GET,
five forwarded fields, body read to the end) from ``concurrency`` greenlets, five rounds, and
prints the best round's *process CPU time* per exchange: the origin runs in another process,
so its work is not counted, and CPU time is less disturbed by a busy machine than wall time.
``--tree`` imports ``edge`` from another checkout (e.g. a ``git worktree`` of the old main) to
compare two versions; run them alternately a few times and compare medians. ``--servers N``
makes the pool N entries on the one origin (default balancing: P2C-EWMA), so ``--servers 1``
against ``--servers 10`` is the CPU cost of choosing among ten servers (issue 9).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

FIELDS = [("User-Agent", "bench"), ("Accept", "*/*"), ("X-Forwarded-For", "127.0.0.1"),
          ("X-Forwarded-Proto", "http"), ("Via", "1.1 edge")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default=str(ROOT), help="checkout whose edge package is measured")
    ap.add_argument("--requests", type=int, default=8000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--servers", type=int, default=1, help="server entries in the pool, all on the one origin")
    args = ap.parse_args()
    sys.path.insert(0, args.tree)
    import gevent

    from edge.config import UpstreamConfig
    from edge.upstream.client import UpstreamPool

    # The origin of this checkout, whatever tree is measured; it prints its port when ready.
    origin = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "origin.py"), "--port", "0", "--name", "bench"],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(origin.stdout.readline().rsplit(":", 1)[1])
        pool = UpstreamPool("app", UpstreamConfig(servers=[f"127.0.0.1:{port}"] * args.servers))

        def one() -> None:
            reply = pool.exchange("GET", "/bytes/1024", "bench", FIELDS, None, None)
            for _ in reply.body:
                pass

        def loop(n: int) -> None:
            for _ in range(n):
                one()

        loop(200)  # warm: connections pooled, code paths hot
        per_greenlet = max(1, args.requests // args.concurrency)
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            gevent.joinall([gevent.spawn(loop, per_greenlet) for _ in range(args.concurrency)])
            best = min(best, (time.process_time() - t0) / (per_greenlet * args.concurrency))
        print(f"{args.tree} ({args.servers} server{'s' if args.servers > 1 else ''}): {best * 1e6:.1f} µs CPU per exchange (best of 5 rounds of {per_greenlet * args.concurrency})")
    finally:
        origin.terminate()
        origin.wait(10)


if __name__ == "__main__":
    main()
