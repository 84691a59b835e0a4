#!/usr/bin/env python3
"""Per-request cost of candidate upstream HTTP clients, under gevent, against one origin.

    .venv/bin/python scripts/bench_client.py [--requests 20000] [--origin URL]

Starts an nginx origin serving a 1 KiB file (unless --origin is given), then times
sequential keep-alive GETs of it with each client in turn, interleaved over several
rounds, and prints the median microseconds per request. The origin is on another
core when taskset exists, so the figure is mostly the client's own Python work plus
the loopback syscalls. This is how edge's own client (edge.upstream.client) was chosen;
the figures are in docs/benchmarks.md.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.config import parse_config  # noqa: E402
from edge.launch import free_port, wait_for_port  # noqa: E402
from edge.upstream.client import UpstreamPool  # noqa: E402

NGINX_CONF = """
worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;
  location / {{ root {d}/www; }} }} }}
"""


def start_origin() -> tuple[subprocess.Popen, str, str]:
    d = tempfile.mkdtemp(prefix="edge-bench-client-")
    os.chmod(d, 0o755)  # nginx's workers run as nobody and must read the file
    os.makedirs(f"{d}/www")
    with open(f"{d}/www/1k", "wb") as f:
        f.write(os.urandom(1024))
    port = free_port()
    Path(f"{d}/nginx.conf").write_text(NGINX_CONF.format(d=d, port=port))
    cmd = ["nginx", "-c", f"{d}/nginx.conf", "-p", d]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "0"] + cmd
        os.sched_setaffinity(0, {1})
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, proc=proc)
    return proc, d, f"http://127.0.0.1:{port}"


def edge_client(base: str):
    host, port = base.split("//")[1].split(":")
    pool = UpstreamPool("bench", parse_config({"upstreams": {"b": {"servers": [f"{host}:{port}"]}}}).upstreams["b"])

    def get() -> int:
        r = pool.exchange("GET", "/1k", "bench", [("Accept", "*/*")], None, None)
        assert r.status == 200, r.status
        n = sum(len(c) for c in r.body)
        return n
    return get


def urllib3_client(base: str):
    import urllib3

    pool = urllib3.HTTPConnectionPool(base.split("//")[1].split(":")[0], int(base.rsplit(":", 1)[1]), maxsize=4)

    def get() -> int:
        r = pool.request("GET", "/1k", preload_content=False)
        n = len(r.read())
        r.release_conn()
        return n
    return get


def geventhttpclient_client(base: str):
    from geventhttpclient import HTTPClient

    host, port = base.split("//")[1].split(":")
    client = HTTPClient(host, int(port), concurrency=4)

    def get() -> int:
        r = client.get("/1k")
        n = len(r.read())
        r.release()
        return n
    return get


CLIENTS = {"edge": edge_client, "urllib3": urllib3_client, "geventhttpclient": geventhttpclient_client}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--origin")
    args = ap.parse_args()
    proc = None
    d = None
    base = args.origin
    if base is None:
        proc, d, base = start_origin()
    try:
        getters = {}
        for name, make in CLIENTS.items():
            try:
                getters[name] = make(base)
                got = getters[name]()
                if got != 1024:
                    raise SystemExit(f"{name}: expected a 1024-byte body, got {got}")
            except ImportError as e:
                print(f"{name}: not installed ({e})")
                getters.pop(name, None)
        results: dict[str, list[float]] = {n: [] for n in getters}
        for _ in range(args.rounds):
            for name, get in getters.items():
                t0 = time.perf_counter()
                for _ in range(args.requests):
                    get()
                results[name].append((time.perf_counter() - t0) / args.requests * 1e6)
        for name, us in results.items():
            print(f"{name:18s} {statistics.median(us):7.1f} us/request  (rounds: {', '.join(f'{u:.1f}' for u in us)})")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(5)
        if d:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
