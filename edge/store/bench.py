"""Measure candidate backends for the ``local`` store: ``python -m edge.store.bench``.

Runs get, set and ratelimit_step from N processes (default 2) at once against
one shared store, each process on its own keys for get/set and all on ONE key
for ratelimit_step (the contended case), and prints total ops/s. Candidates:
``lmdb`` (``edge.store.local.LocalStore``) and ``diskcache`` (SQLite in WAL
mode; the rate-limit step in ``Cache.transact()``). The numbers and the choice
are recorded in docs/benchmarks.md, "Shared store backends".
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time

from edge.ratelimit import Limit, step_encoded


class _DiskcacheStore:
    """Just enough of the Store API over diskcache to compare like with like."""

    def __init__(self, path: str) -> None:
        import diskcache

        self._c = diskcache.Cache(path, size_limit=64 * 1024 * 1024, eviction_policy="least-recently-stored")

    def get(self, key: str) -> bytes | None:
        return self._c.get(key)

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._c.set(key, value, expire=ttl_s)

    def ratelimit_step(self, key: str, limit: Limit, cost: float = 1, now: float | None = None):
        with self._c.transact():  # one SQLite write transaction: atomic across processes
            now = time.time()
            raw, ttl_s, d = step_encoded(self._c.get(key), now, limit, cost)
            if raw is not None:
                self._c.set(key, raw, expire=ttl_s)
            return d

    def close(self) -> None:
        self._c.close()


def _open(kind: str, path: str):
    if kind == "lmdb":
        from edge.store.local import LocalStore

        return LocalStore(path=path)
    return _DiskcacheStore(path)


def _worker(kind: str, path: str, op: str, n: int, wid: int, start, out) -> None:
    store = _open(kind, path)  # opened after fork, as gunicorn workers do
    limit = Limit(1e9, 1.0, burst=10**9)  # never refuses: measures the write path
    value = b"x" * 200
    keys = [f"w{wid}:k{i % 1000}" for i in range(n)]
    if op == "get":
        for k in keys[:1000]:
            store.set(k, value, 3600)
    start.wait()
    t0 = time.perf_counter()
    if op == "get":
        for k in keys:
            store.get(k)
    elif op == "set":
        for k in keys:
            store.set(k, value, 3600)
    else:
        for _ in range(n):
            store.ratelimit_step("hot", limit)
    out.put(time.perf_counter() - t0)
    store.close()


def run(kind: str, op: str, procs: int, n: int) -> float:
    path = tempfile.mkdtemp(prefix=f"edge-bench-{kind}-")
    try:
        ctx = mp.get_context("fork")
        start, out = ctx.Barrier(procs), ctx.Queue()
        ps = [ctx.Process(target=_worker, args=(kind, path, op, n, i, start, out)) for i in range(procs)]
        for p in ps:
            p.start()
        times = [out.get(timeout=300) for _ in ps]
        for p in ps:
            p.join()
        return procs * n / max(times)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("-n", type=int, default=20000, help="operations per process")
    ap.add_argument("--kinds", default="lmdb,diskcache")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.procs} processes x {args.n} ops")
    print(f"{'backend':<10} {'get/s':>10} {'set/s':>10} {'ratelimit_step/s':>17}")
    for kind in args.kinds.split(","):
        r = [run(kind, op, args.procs, args.n) for op in ("get", "set", "step")]
        print(f"{kind:<10} {r[0]:>10,.0f} {r[1]:>10,.0f} {r[2]:>17,.0f}")


if __name__ == "__main__":
    main()
