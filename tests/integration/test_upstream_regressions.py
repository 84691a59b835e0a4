"""Regressions found by review in the upstream pool (issue 9), each against real sockets.

Each case runs as a small gevent program in its own interpreter (monkey-patched, as a
worker is), with a real backend server on loopback, and prints what the test checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PRELUDE = """
import json, sys
sys.path.insert(0, {repo!r})
from gevent import monkey; monkey.patch_all()
import gevent
from gevent.server import StreamServer
from edge.config import parse_config
from edge.upstream.client import UpstreamPool

def read_head(sock, buf=b""):
    while b"\\r\\n\\r\\n" not in buf:
        d = sock.recv(65536)
        if not d:
            return None
        buf += d
    return buf.split(b"\\r\\n\\r\\n", 1)[1]
"""


def run(body: str) -> dict:
    program = PRELUDE.format(repo=str(REPO)) + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_huge_retry_after_or_keep_alive_numbers_leak_no_server_slot():
    result = run("""
        answers = [b"HTTP/1.1 503 Busy\\r\\nRetry-After: " + b"9" * 5000 + b"\\r\\nContent-Length: 2\\r\\n\\r\\nno",
                   b"HTTP/1.1 200 OK\\r\\nKeep-Alive: timeout=" + b"9" * 5000 + b"\\r\\nContent-Length: 2\\r\\n\\r\\nok"]

        def handle(sock, addr):
            rest = b""
            while True:
                rest = read_head(sock, rest)
                if rest is None:
                    return
                sock.sendall(answers[len(seen) % 2])
                seen.append(1)

        seen = []
        srv = StreamServer(("127.0.0.1", 0), handle); srv.start()
        cfg = parse_config({"upstreams": {"t": {"servers": [{"host": "127.0.0.1", "port": srv.server_port, "max_conns": 2}]}}})
        pool = UpstreamPool("t", cfg.upstreams["t"])
        statuses = []
        for _ in range(6):
            up = pool.exchange("GET", "/", None, [], None, None)
            statuses.append(up.status)
            b"".join(up.body or ())
        print(json.dumps({"statuses": statuses, "in_flight": pool.selector.in_flight(0)}))
    """)
    assert result["statuses"] == [503, 200] * 3   # never ServersBusy: every slot came back
    assert result["in_flight"] == 0


def test_stale_pooled_connections_on_two_servers_in_one_failover_still_get_an_answer():
    # The fresh-connection allowance is per server: after A's stale connection and A's refusal,
    # B's stale pooled connection gets its own fresh retry (backends' keep-alive timers shorter than edge's).
    result = run("""
        conns = {"a": [], "b": []}

        def make(name):
            def handle(sock, addr):
                conns[name].append(sock)
                rest = b""
                while True:
                    try:
                        rest = read_head(sock, rest)
                    except OSError:
                        return
                    if rest is None:
                        return
                    sock.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 1\\r\\n\\r\\n" + name.encode())
            return handle

        a = StreamServer(("127.0.0.1", 0), make("a")); a.start()
        b = StreamServer(("127.0.0.1", 0), make("b")); b.start()
        cfg = parse_config({"upstreams": {"t": {"servers": [f"127.0.0.1:{a.server_port}", f"127.0.0.1:{b.server_port}"],
                                                 "balance": "round_robin", "retries": 2}}})
        pool = UpstreamPool("t", cfg.upstreams["t"])
        for _ in range(2):
            b"".join(pool.exchange("GET", "/", None, [], None, None).body)
        for name in ("a", "b"):
            for s in conns[name]:
                s.close()
        a.close()
        gevent.sleep(0.2)
        up = pool.exchange("GET", "/", None, [], None, None)
        print(json.dumps({"status": up.status, "body": b"".join(up.body).decode()}))
    """)
    assert result == {"status": 200, "body": "b"}


def test_a_body_filter_closed_early_gives_the_server_slot_back_at_once():
    result = run("""
        import gc, pathlib, tempfile, textwrap
        from edge.context import close_body
        from edge.plugins import load_plugins
        from edge.testing import make_ctx

        def handle(sock, addr):
            if read_head(sock) is None:
                return
            n = 4_000_000
            sock.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % n)
            try:
                for _ in range(n // 65536 + 1):
                    sock.sendall(b"x" * 65536)
            except OSError:
                pass

        srv = StreamServer(("127.0.0.1", 0), handle); srv.start()
        d = pathlib.Path(tempfile.mkdtemp()); (d / "p").mkdir(); (d / "shipped").mkdir()
        (d / "p" / "f.py").write_text(textwrap.dedent('''
            from edge.plugins import Plugin
            class F(Plugin):
                name = "f"
                def on_body(self, ctx, chunk, end):
                    return chunk
        '''))
        cfg = parse_config({"plugin_dirs": [str(d / "p")], "plugins": {"f": {}},
                            "upstreams": {"t": {"servers": [{"host": "127.0.0.1", "port": srv.server_port, "max_conns": 1}]}}})
        chain = load_plugins(cfg, None, shipped_dir=d / "shipped").default_chain
        pool = UpstreamPool("t", cfg.upstreams["t"])
        gc.disable()  # workers freeze and rarely collect: the release must not wait for a GC pass
        up = pool.exchange("GET", "/", None, [], None, None)
        body = chain.filter_body(make_ctx(), up.body)
        next(body)
        close_body(body)  # a client abort: what the front ends do with the reply body
        print(json.dumps({"in_flight": pool.selector.in_flight(0)}))
    """)
    assert result == {"in_flight": 0}
