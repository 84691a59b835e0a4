#!/usr/bin/env python3
"""What one response's compression costs, per codec and level (issue 10, item 5).

    .venv/bin/python scripts/bench_compress.py                     # defaults: 1/10/100 KiB, each codec, 3 levels
    .venv/bin/python scripts/bench_compress.py --sizes 1 100 --time 0.5 --json out.json

For each codec (gzip, br, zstd), level and body size (KiB of the demo origin's /text
body: numbered lines of English-like words, which compress about as well as HTML),
it times what edge does per response: take an encoder from a worker's
``edge.compress.codecs.Encoders`` (zstd contexts are reused, as in a worker), feed the
body in 64 KiB chunks with its length known, finish. Reported: microseconds per response (median
of repeated batches, each at least ``--time``/5 seconds), throughput in MiB/s of
input, and the encoded size as a fraction of the input. One process, one core, no
sockets: it measures the codec work a worker adds to a response, nothing else.

docs/cache.md ("Compression") uses these figures to decide whether the cache stores
encoded variants or encodes identity objects on every hit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.compress.codecs import Encoders, Levels, encode_stream  # noqa: E402

CHUNK = 64 * 1024
DEFAULT_LEVELS = {"gzip": (1, 6, 9), "br": (1, 4, 5, 11), "zstd": (1, 3, 9)}


def origin_text(size: int) -> bytes:
    """The /text body of scripts/origin.py (loaded as a file: scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("edge_demo_origin", ROOT / "scripts" / "origin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.text_bytes(0, size)


def levels_for(coding: str, level: int) -> Levels:
    return Levels(**{coding: level})


def per_response_us(coding: str, level: int, body: bytes, budget_s: float) -> tuple[float, int]:
    """Median µs for one response (encoder creation + streaming + finish), and the encoded size."""
    chunks = [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)]
    encoders = Encoders(levels_for(coding, level))  # one per worker, as on the request path
    size = len(b"".join(encode_stream(iter(chunks), encoders.new(coding, len(body)))))
    batches = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while True:
            for _ in encode_stream(iter(chunks), encoders.new(coding, len(body))):
                pass
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= budget_s / 5:
                break
        batches.append(elapsed / n * 1e6)
    return statistics.median(batches), size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], metavar="KIB")
    p.add_argument("--codecs", nargs="+", default=list(DEFAULT_LEVELS), choices=list(DEFAULT_LEVELS))
    p.add_argument("--time", type=float, default=0.5, help="seconds per measurement (default 0.5)")
    p.add_argument("--json", type=Path, metavar="FILE")
    opts = p.parse_args(argv)
    text = origin_text(max(opts.sizes) * 1024)
    defaults = Levels()
    rows = []
    print(f"{'codec':6s} {'level':>5s} {'size':>7s} {'us/resp':>9s} {'MiB/s':>7s} {'ratio':>6s}")
    for coding in opts.codecs:
        for level in DEFAULT_LEVELS[coding]:
            for kib in opts.sizes:
                body = text[:kib * 1024]
                us, out = per_response_us(coding, level, body, opts.time)
                mark = "*" if getattr(defaults, coding) == level else " "
                mibs = len(body) / (1024 * 1024) / (us / 1e6)
                print(f"{coding:6s} {level:>4d}{mark} {kib:>5d}Ki {us:>9.1f} {mibs:>7.1f} {out / len(body):>6.3f}",
                      flush=True)
                rows.append({"codec": coding, "level": level, "default": mark == "*", "kib": kib,
                             "us_per_response": round(us, 2), "mib_per_s": round(mibs, 1),
                             "ratio": round(out / len(body), 4)})
    print("(* = edge's default level)")
    if opts.json:
        opts.json.write_text(json.dumps({"command": "scripts/bench_compress.py " + " ".join(argv or sys.argv[1:]),
                                         "python": sys.version.split()[0], "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
