#!/usr/bin/env python3
"""Micro-benchmark of one geo lookup (edge.geo.GeoDatabase), not a test.

Usage: scripts/bench_geo.py [--database FILE] [--addresses N] [--rounds R]

Draws N random public IPv4 and IPv6 addresses (fixed seed) and times lookups of
them in three ways, reporting the median and p99 per lookup in microseconds:

- ``reader``: the memory-mapped C reader alone (``maxminddb`` MODE_MMAP_EXT);
- ``cold``: ``GeoDatabase.lookup`` with the memo off (every lookup reads the database);
- ``memo``: ``GeoDatabase.lookup`` of addresses seen before (a repeat client).

Each figure is the median of R rounds, each round timing every address once with
``time.perf_counter_ns`` around batches of 100 lookups (one timer read per lookup
would cost more than the lookup). Issue 12's target: median <= 10 us.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and (ROOT / ".venv" / "bin" / "python").exists():
    os.execv(str(ROOT / ".venv" / "bin" / "python"), [str(ROOT / ".venv" / "bin" / "python"), *sys.argv])
sys.path.insert(0, str(ROOT))

import maxminddb  # noqa: E402

from edge.geo import GeoDatabase, locatable  # noqa: E402

BATCH = 100


def addresses(n: int) -> list[str]:
    rng = random.Random(12)
    out: list[str] = []
    while len(out) < n:
        if rng.random() < 0.8:
            ip = ".".join(str(rng.randrange(1, 224) if i == 0 else rng.randrange(256)) for i in range(4))
        else:
            ip = "2%03x:%x:%x::%x" % (rng.randrange(0x400, 0x800), rng.randrange(1 << 16), rng.randrange(1 << 16),
                                       rng.randrange(1 << 16))
        if locatable(ip):
            out.append(ip)
    return out


def per_lookup_us(fn, ips: list[str]) -> list[float]:
    out = []
    for i in range(0, len(ips), BATCH):
        batch = ips[i:i + BATCH]
        t = time.perf_counter_ns()
        for ip in batch:
            fn(ip)
        out.append((time.perf_counter_ns() - t) / len(batch) / 1000)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database", default=None, help="MaxMind DB file (default: the shipped Geoacumen database)")
    p.add_argument("--addresses", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    opts = p.parse_args()
    if opts.database is None:
        from plugins.geo import default_database_path
        opts.database = default_database_path()
    ips = addresses(opts.addresses)
    reader = maxminddb.open_database(opts.database, maxminddb.MODE_MMAP_EXT)
    cold = GeoDatabase(opts.database, check_interval_s=1.0, memo_size=0)
    memo = GeoDatabase(opts.database, check_interval_s=1.0, memo_size=len(ips) + 1)
    for ip in ips:
        memo.lookup(ip)
    print(f"{opts.database}: {reader.metadata().database_type}, {len(ips)} addresses, {opts.rounds} rounds")
    for name, fn in (("reader", reader.get), ("cold", cold.lookup), ("memo", memo.lookup)):
        rounds = [per_lookup_us(fn, ips) for _ in range(opts.rounds)]
        medians = [statistics.median(r) for r in rounds]
        p99s = [sorted(r)[int(len(r) * 0.99) - 1] for r in rounds]
        print(f"  {name:6s} median {statistics.median(medians):6.2f} us   p99 (of batches) {statistics.median(p99s):6.2f} us")


if __name__ == "__main__":
    main()
