"""µs per ``set`` / ``add`` on the local store, not yet full and full (every write evicts) (issue 10).

Usage: ``.venv/bin/python scripts/bench_local_writes.py [--bound-mib 4] [--runs 3] [--dir DIR]``

One process, a fresh LMDB directory under ``--dir`` (default: the temp dir) per run (removed at the end), cache-like
keys (``c:v:`` + 32 hex digits) with random TTLs. "not full": 2,000 sets into an empty
store; then the store is filled with three times its bound, and "full" is 5,000 more sets
(or adds) of new keys, each of which evicts; "after writeback" is 5,000 more sets after an
``os.sync()``: the kernel has written the map's dirty pages back, and on a disk file system
each page is write-protected again until its next write faults (why the default directory
is on /dev/shm, edge/store/local.py "Location"). The figure is the best of ``--runs``, for
values of 100 and 1,500 bytes (a small cache record; an object that costs a leaf page).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable

from edge.store.local import LocalStore


def keys(n: int, tag: bytes) -> list[str]:
    return ["c:v:" + hashlib.blake2b(b"%s%d" % (tag, i), digest_size=16).hexdigest() for i in range(n)]


def per_op_us(op: Callable[[str, bytes, float], object], ks: list[str], value: bytes) -> float:
    t0 = time.perf_counter()
    for i, k in enumerate(ks):
        op(k, value, 60.0 + (i * 7919) % 3600)
    return (time.perf_counter() - t0) / len(ks) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bound-mib", type=int, default=4, help="store.max_bytes in MiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the store directories go (e.g. /dev/shm)")
    args = ap.parse_args()
    bound = args.bound_mib * 1024 * 1024
    for vlen in (100, 1500):
        value = b"x" * vlen
        best: dict[str, float] = {}
        for run in range(args.runs):
            path = tempfile.mkdtemp(prefix="edge-bench-local-", dir=args.dir)
            try:
                s = LocalStore(path=path, max_bytes=bound)
                figures = {"set (not full)": per_op_us(s.set, keys(2000, b"a%d" % run), value)}
                per_op_us(s.set, keys(3 * bound // (vlen + 100), b"f%d" % run), value)  # now full
                figures["set (full)"] = per_op_us(s.set, keys(5000, b"b%d" % run), value)
                figures["add (full)"] = per_op_us(s.add, keys(5000, b"c%d" % run), value)
                os.sync()
                figures["set (after writeback)"] = per_op_us(s.set, keys(5000, b"d%d" % run), value)
                s.close()
            finally:
                shutil.rmtree(path, ignore_errors=True)
            for name, us in figures.items():
                best[name] = min(best.get(name, us), us)
        print(f"{args.dir}: value {vlen:5d} B: " + "   ".join(f"{name} {us:.1f} µs" for name, us in best.items()))


if __name__ == "__main__":
    main()
