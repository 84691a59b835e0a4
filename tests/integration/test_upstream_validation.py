"""Nothing invalid is written to a backend, whatever produced it (issue 7: validate on the way out).

A plugin (from a temporary plugin directory) puts CR/LF into a header value, a space
into ``ctx.path``, or a bad name: edge answers 500, logs one line naming the field
(not the value), and the backend receives no byte at all.
"""

from __future__ import annotations

import socket
import textwrap
import time

import pytest
import requests

from tests.integration.raw_origin import RawOrigin, response

PLUGIN = '''
from edge.plugins import Plugin


class Mangle(Plugin):
    """Test plugin: produces invalid requests by path."""
    name = "mangle"
    priority = 10

    def on_request(self, ctx):
        if ctx.path == "/crlf":
            ctx.headers.set("X-Smuggle", "a\\r\\nInjected-Field: evil")
        elif ctx.path == "/nul":
            ctx.headers.set("X-Nul", "a\\x00b")
        elif ctx.path == "/bad-name":
            ctx.headers.set("X Bad Name", "ok")
        elif ctx.path == "/space":
            ctx.path = "/a b HTTP/1.1\\r\\nInjected-Field: evil"
        elif ctx.path == "/fragment":
            ctx.path = "/admin#frag"
        elif ctx.path == "/fine":
            ctx.headers.set("X-Fine", "tab\\tinside is allowed")
'''


def _handler(conn, origin):
    while True:
        req = conn.read_request()
        if req is None:
            return
        if not conn.send(response(200, req["raw_head"])):
            return


@pytest.fixture(scope="module")
def origin():
    o = RawOrigin(_handler)
    yield o
    o.stop()


@pytest.fixture(scope="module")
def statsd():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.2)
    yield listener
    listener.close()


def received(listener, want: str, timeout_s: float = 10.0) -> list[str]:
    """statsd lines received until one starts with ``want`` (or the time is up)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(g.startswith(want) for g in got):
        try:
            got.extend(listener.recv(65536).decode().split("\n"))
        except socket.timeout:
            pass
    return got


@pytest.fixture(scope="module")
def edge(origin, statsd, tmp_path_factory):
    from edge.launch import start_edge

    d = tmp_path_factory.mktemp("plugins")
    (d / "mangle.py").write_text(textwrap.dedent(PLUGIN))
    cfg = {"upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
           "routes": [{"match": {"path": "/"}, "upstream": "app"}],
           "plugin_dirs": [str(d)], "plugins": {"mangle": {}},
           "metrics": {"statsd": f"127.0.0.1:{statsd.getsockname()[1]}", "prefix": "t"}}
    p = start_edge(cfg, workers=2, work_dir=str(tmp_path_factory.mktemp("edge")))
    yield p
    p.stop()


@pytest.mark.parametrize("path,named", [
    ("/crlf", "X-Smuggle"),
    ("/nul", "X-Nul"),
    ("/bad-name", "X Bad Name"),
    ("/space", "request target"),
    ("/fragment", "request target"),
])
def test_invalid_request_from_a_plugin_is_500_and_never_sent(origin, edge, path, named):
    before = len(origin.requests)
    log_before = len(edge.log().splitlines())
    r = requests.get(f"{edge.url}{path}", timeout=10)
    assert r.status_code == 500
    assert len(origin.requests) == before  # not a byte of it reached the backend
    assert all("Injected-Field" not in r["raw_head"].decode("latin-1") for r in origin.requests)
    new_lines = edge.log().splitlines()[log_before:]
    lines = [line for line in new_lines if "request not sent" in line]
    assert len(lines) == 1 and named.lower() in lines[0].lower(), new_lines
    assert "evil" not in edge.log() and "frag" not in lines[0]  # the value is never logged


def test_unsendable_request_is_counted(origin, edge, statsd):
    requests.get(f"{edge.url}/crlf", timeout=10)
    assert any(g.startswith("t.unsendable_request:1|c") for g in received(statsd, "t.unsendable_request"))


def test_valid_request_from_the_same_plugin_is_sent(origin, edge):
    r = requests.get(f"{edge.url}/fine", timeout=10)
    assert r.status_code == 200
    assert b"X-Fine: tab\tinside is allowed\r\n" in r.content
    assert r.content.startswith(b"GET /fine HTTP/1.1\r\n")
