"""In-process CPU cost of a cache miss (issue 10): ``Cache.handle`` for a new URL, minus the proxy.

Usage: ``.venv/bin/python scripts/bench_cache_miss.py [--store local|memory] [-n 20000] [--runs 5] [--hit]
[--vary accept-encoding|accept-language]``

``--hit``: the same URL every time instead, after one miss stored it: what the cache costs a
hit up to the reply the front end writes (lookup, decode, freshness, Age and Cache-Status).
``--vary``: the response carries ``Vary`` with that field and the request a typical browser
value of it, so a lookup reads the variant index, then the variant (RFC 9111 §4.1).

The proxy is a stand-in that answers every forward at once with a typical nginx head and a
1 KiB body (``Content-Length`` known), running the cache's tap and draining the tee as the
front end would; the commit greenlet runs before the next request (``gevent.sleep(0)``). So the
figure is what the cache adds to a miss in the worker (lookup, fill lock, storability, tee,
commit, release), in µs of process CPU per miss, the best of ``--runs``. The ``--store local``
environment is a fresh LMDB directory under /tmp, removed at the end.
"""

from __future__ import annotations

import argparse
import email.utils
import shutil
import tempfile
import time

import gevent

from edge.cache.cache import Cache, route_cache
from edge.config import parse_config
from edge.context import RequestContext

BODY = b"x" * 1024
# Date: now, so the stored object is fresh (max-age=3600) for the hits
HEAD = [("Server", "nginx"), ("Date", email.utils.formatdate(usegmt=True)), ("Content-Type", "text/plain"),
        ("Content-Length", "1024"), ("Last-Modified", "Mon, 30 Nov 2026 05:00:00 GMT"), ("Connection", "keep-alive"),
        ("ETag", '"5f1e-400"'), ("Cache-Control", "max-age=3600"), ("Accept-Ranges", "bytes")]


class _Up:
    __slots__ = ("status", "reason", "body", "length")

    def __init__(self) -> None:
        self.status, self.reason, self.body, self.length = 200, "OK", iter((BODY,)), len(BODY)

    def close(self) -> None:
        pass


# a typical browser's value of each field --vary can name
VARY_VALUES = {"accept-encoding": "gzip, deflate, br, zstd", "accept-language": "en-US,en;q=0.9,de;q=0.8"}


class _Proxy:
    compressor = None
    head = HEAD

    def reply_stored(self, ctx, chain, status, headers, body, length, variants=None):
        return status, headers, body, length

    def response_headers(self, up):
        return [(n, v) for n, v in self.head if n != "Connection"]

    def exchange(self, ctx, route, chain, body, conditional=None, interim=True):
        return _Up()

    def relay(self, ctx, chain, up, tap=None):
        headers = self.response_headers(up)
        body = up.body
        if tap is not None:
            headers, body = tap(up, headers)
        if body is not None:
            for _ in body:
                pass
        return headers

    def forward(self, ctx, route, chain, body, tap=None):
        return self.relay(ctx, chain, self.exchange(ctx, route, chain, body), tap)


class _Metrics:
    def incr(self, name, n=1):
        pass


class _Route:
    index = 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", choices=("local", "memory"), default="local")
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hit", action="store_true", help="measure hits of one stored URL instead of misses")
    ap.add_argument("--vary", choices=sorted(VARY_VALUES), help="the response varies on this request field")
    ap.add_argument("--max-bytes", type=int, default=64 * 1024 * 1024, help="the local store bound (the default store size)")
    args = ap.parse_args()
    cfg = parse_config({"upstreams": {"a": {"servers": ["127.0.0.1:1"]}}, "routes": [{"upstream": "a"}],
                        "cache": {"enabled": True}})
    tmp = None
    if args.store == "local":
        from edge.store.local import LocalStore

        tmp = tempfile.mkdtemp(prefix="bench-cache-miss-")
        store = LocalStore(tmp + "/db", max_bytes=args.max_bytes)
    else:
        from edge.store.memory import MemoryStore

        store = MemoryStore()
    cache = Cache(cfg.cache, [route_cache(cfg.cache, cfg.routes[0].cache)], store, _Metrics())
    proxy, route = _Proxy(), _Route()
    req = [("Host", "bench.test"), ("User-Agent", "wrk"), ("Accept", "*/*")]
    if args.vary:
        proxy.head = HEAD + [("Vary", args.vary)]
        req.append((args.vary, VARY_VALUES[args.vary]))
    best = None
    serial = 0
    what = "hit" if args.hit else "miss"
    if args.hit:  # store the one object first
        cache.handle(proxy, RequestContext("GET", "/cached/0", "", list(req), host="bench.test", client_ip="127.0.0.1"),
                     route, None, None)
        gevent.sleep(0)
    try:
        for _ in range(args.runs):
            t0 = time.process_time()
            for _ in range(args.n):
                serial += 0 if args.hit else 1
                ctx = RequestContext("GET", f"/cached/{serial}", "", list(req), host="bench.test", client_ip="127.0.0.1")
                cache.handle(proxy, ctx, route, None, None)
                gevent.sleep(0)  # the commit greenlet, if any
            us = (time.process_time() - t0) / args.n * 1e6
            best = us if best is None else min(best, us)
            print(f"{us:.1f} µs per {what}")
    finally:
        store.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    vary = f", Vary: {args.vary}" if args.vary else ""
    print(f"best: {best:.1f} µs per {what} ({args.store} store{vary})")


if __name__ == "__main__":
    main()
