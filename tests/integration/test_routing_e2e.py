"""Routing through a real edge: precedence, hosts, rewrites, redirects, fixed answers, Host modes."""

from __future__ import annotations

import json

import pytest
import requests


@pytest.fixture(scope="module")
def edge(origin, origin2, tmp_path_factory):
    from edge.launch import start_edge

    cfg = {
        "upstreams": {
            "one": {"servers": [f"127.0.0.1:{origin.port}"]},
            "two": {"servers": [f"127.0.0.1:{origin2.port}"]},
        },
        "routes": [
            {"name": "default", "match": {"path": "/"}, "upstream": "one"},
            {"name": "api", "match": {"path": "/api"}, "upstream": "two", "strip_prefix": True},
            {"name": "api-exact", "match": {"path": {"exact": "/api/echo"}}, "upstream": "one"},
            {"name": "regex", "match": {"path": {"regex": "^/items/[0-9]+$"}}, "upstream": "two",
             "rewrite": {"regex": "^/items/([0-9]+)$", "replace": r"/echo?item=\1"}},
            {"name": "wild", "match": {"host": ["*.example.test"], "path": "/"}, "upstream": "two",
             "host_header": "upstream"},
            {"name": "exact-host", "match": {"host": ["www.example.test"], "path": "/"}, "upstream": "one",
             "host_header": "backend.internal"},
            {"name": "post-only", "match": {"path": "/form", "methods": ["POST"]}, "upstream": "two"},
            {"name": "beta", "match": {"path": "/", "headers": {"X-Beta": "1"}}, "upstream": "two"},
            {"name": "old", "match": {"path": "/old"}, "strip_prefix": True,
             "redirect": {"status": 308, "location": "https://$host/new$path$query"}},
            {"name": "health", "match": {"path": {"exact": "/healthz"}},
             "respond": {"status": 200, "body": "ok\n", "headers": {"Cache-Control": "no-store"}}},
        ],
    }
    p = start_edge(cfg, workers=2, work_dir=str(tmp_path_factory.mktemp("edge")))
    yield p
    p.stop()


def get(edge, path, host=None, **kw):
    headers = kw.pop("headers", {})
    if host:
        headers["Host"] = host
    return requests.request(kw.pop("method", "GET"), f"{edge.url}{path}", headers=headers, allow_redirects=False, **kw)


def sent_headers(r) -> dict:
    return {k.lower(): v for k, v in json.loads(r.content)["headers"]}


def test_longer_prefix_and_exact_win(edge):
    assert get(edge, "/x").headers["X-Origin"] == "o1"
    assert get(edge, "/api/x").headers["X-Origin"] == "o2"        # /api beats /
    assert get(edge, "/api/echo").headers["X-Origin"] == "o1"      # exact beats prefix


def test_regex_route_with_rewrite(edge):
    r = get(edge, "/items/42")
    assert r.headers["X-Origin"] == "o2"
    assert json.loads(r.content)["path"] == "/echo?item=42"
    assert get(edge, "/items/abc").headers["X-Origin"] == "o1"      # no match: falls back to /


def test_host_routing_and_host_header_modes(edge, origin, origin2):
    r = get(edge, "/echo", host="shop.example.test")
    assert r.headers["X-Origin"] == "o2"
    assert sent_headers(r)["host"] == f"127.0.0.1:{origin2.port}"   # host_header: upstream
    r = get(edge, "/echo", host="www.example.test:8080")
    assert r.headers["X-Origin"] == "o1"                             # exact host beats the wildcard
    assert sent_headers(r)["host"] == "backend.internal"             # literal host_header
    assert sent_headers(r)["x-forwarded-host"] == "www.example.test:8080"
    assert get(edge, "/echo", host="example.test").headers["X-Origin"] == "o1"  # bare domain: not *.example.test


def test_method_and_header_conditions(edge):
    assert get(edge, "/form", method="POST").headers["X-Origin"] == "o2"
    assert get(edge, "/form").headers["X-Origin"] == "o1"
    assert get(edge, "/x", headers={"X-Beta": "1"}).headers["X-Origin"] == "o2"


def test_redirect_route(edge):
    r = get(edge, "/old/page?a=1", host="site.test")
    assert r.status_code == 308
    assert r.headers["Location"] == "https://site.test/new/page?a=1"


def test_fixed_response_route(edge):
    r = get(edge, "/healthz")
    assert r.status_code == 200 and r.text == "ok\n"
    assert r.headers["Cache-Control"] == "no-store"


# --------------------------------------------------------------------------- issue 7 through a real edge
#
# A recording origin (a socket server in this process) keeps the exact request head each
# request arrived with, so a test can assert what a backend received, byte for byte.

import http.client  # noqa: E402
import socket  # noqa: E402
import textwrap  # noqa: E402
import threading  # noqa: E402


class RecordingOrigin:
    """Answers every request ``200 ok`` (keep-alive) and records its head (request line + fields)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(30)
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                with self._lock:
                    self.heads.append(head)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")

    def last(self) -> tuple[str, dict[str, list[str]]]:
        """(request line, lower-cased field name -> values) of the last request received."""
        with self._lock:
            head = self.heads[-1].decode("latin-1")
        line, *fields = head.split("\r\n")
        out: dict[str, list[str]] = {}
        for f in fields:
            k, _, v = f.partition(":")
            out.setdefault(k.strip().lower(), []).append(v.strip())
        return line, out

    def count(self) -> int:
        with self._lock:
            return len(self.heads)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


REWRITER = '''
from edge.plugins import Plugin


class Rewriter(Plugin):
    """Test plugin: rewrites ctx.path on request; reports the client address edge resolved."""

    name = "rewriter"
    priority = 10

    def on_request(self, ctx):
        ctx.headers.set("X-Seen-Client", ctx.client_ip)
        if ctx.path.startswith("/raw/rewrite-me"):
            ctx.path = "/raw/rewritten"
        return None
'''


@pytest.fixture(scope="module")
def recorder():
    rec = RecordingOrigin()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def issue7_edge(recorder, tmp_path_factory):
    from edge.launch import start_edge

    plugins = tmp_path_factory.mktemp("plugins")
    (plugins / "rewriter.py").write_text(textwrap.dedent(REWRITER))
    cfg = {
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "headers": {"forwarded": True},
        "plugin_dirs": [str(plugins)],
        "plugins": {"rewriter": {}},
        "upstreams": {"rec": {"servers": [f"127.0.0.1:{recorder.port}"]}},
        "routes": [
            {"name": "deny-admin", "match": {"path": "/admin"}, "respond": {"status": 403, "body": "denied\n"}},
            {"name": "files", "match": {"path": "/files"}, "upstream": "rec"},
            {"name": "decode", "match": {"path": "/dec"}, "upstream": "rec", "encoded_slash": "decode"},
            {"name": "reject", "match": {"path": "/rej"}, "upstream": "rec", "encoded_slash": "reject"},
            {"name": "raw", "match": {"path": "/raw"}, "upstream": "rec", "forward_normalized_path": False},
            {"name": "no-upgrade", "match": {"path": "/noup"}, "upstream": "rec", "upgrade": []},
            {"name": "custom-upgrade", "match": {"path": "/myproto"}, "upstream": "rec", "upgrade": ["my-proto"]},
            {"name": "evil-regex", "match": {"path": {"regex": r"^/api/(\w+)+/x$"}}, "upstream": "rec"},
            {"name": "catch-all", "match": {"path": "/"}, "upstream": "rec"},
        ],
    }
    p = start_edge(cfg, workers=2, work_dir=str(tmp_path_factory.mktemp("edge")))
    yield p
    p.stop()


def raw_get(edge, target: str, headers: dict[str, str] | None = None, host: str = "example.test"):
    """GET with ``target`` sent verbatim (no client-side normalisation); (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("target", [
    "/p/..%2fadmin/secret", "/p/..%2Fadmin/secret", "/p/..%5cadmin/secret", "/p/..\\admin/secret",
    "/files/..%2F..%2Fadmin/secret",
])
def test_encoded_slash_cannot_reach_a_denied_path(issue7_edge, recorder, target):
    before = recorder.count()
    status, _ = raw_get(issue7_edge, target)
    assert status == 400
    assert recorder.count() == before  # nothing forwarded
    assert raw_get(issue7_edge, "/admin/secret")[0] == 403


def test_encoded_slash_reaches_the_backend_unchanged_by_default(issue7_edge, recorder):
    status, body = raw_get(issue7_edge, "/files/a%2Fb?q=1")
    assert (status, body) == (200, b"ok")
    assert recorder.last()[0] == "GET /files/a%2Fb?q=1 HTTP/1.1"


def test_encoded_slash_decode_and_reject_routes(issue7_edge, recorder):
    assert raw_get(issue7_edge, "/dec/a%2Fb")[0] == 200
    assert recorder.last()[0] == "GET /dec/a/b HTTP/1.1"
    before = recorder.count()
    assert raw_get(issue7_edge, "/rej/a%2Fb")[0] == 400
    assert recorder.count() == before
    assert raw_get(issue7_edge, "/rej/a/b")[0] == 200


@pytest.mark.parametrize("host", ["evil,for=6.6.6.6", "a;b", "x y", "example.test:99999", "[1.2.3.4]"])
def test_invalid_host_is_refused(issue7_edge, recorder, host):
    before = recorder.count()
    assert raw_get(issue7_edge, "/files/x", host=host)[0] == 400
    assert recorder.count() == before


def test_forwarded_host_with_port_is_quoted(issue7_edge, recorder):
    assert raw_get(issue7_edge, "/files/x", host="example.test:8080")[0] == 200
    _, fields = recorder.last()
    assert fields["forwarded"] == ['for=127.0.0.1;host="example.test:8080";proto=http']


@pytest.mark.parametrize("path, offered, forwarded", [
    ("/files/x", "websocket", "websocket"),      # default: websocket allowed
    ("/files/x", "h2c", None),
    ("/files/x", "anything/1.0", None),
    ("/files/x", "h2c, websocket", "websocket"),
    ("/noup/x", "websocket", None),              # upgrade: []
    ("/myproto/x", "my-proto/2, websocket", "my-proto/2"),
])
def test_only_allowed_upgrades_reach_the_backend(issue7_edge, recorder, path, offered, forwarded):
    status, _ = raw_get(issue7_edge, path, {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": offered,
                                            "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"})
    assert status == 200
    _, fields = recorder.last()
    assert "http2-settings" not in fields
    assert fields.get("upgrade") == ([forwarded] if forwarded else None)


def test_plugin_path_rewrite_followed_without_normalisation(issue7_edge, recorder):
    assert raw_get(issue7_edge, "/raw/./rewrite-me")[0] == 200
    assert recorder.last()[0] == "GET /raw/rewritten HTTP/1.1"
    assert raw_get(issue7_edge, "/raw/./kept")[0] == 200          # untouched: the raw path, as configured
    assert recorder.last()[0] == "GET /raw/./kept HTTP/1.1"


@pytest.mark.parametrize("xff, client", [
    ("unknown", "127.0.0.1"), ("203.0.113.7", "203.0.113.7"), ("203.0.113.7, <script>", "127.0.0.1"),
    ("[2001:db8::9]:4711", "2001:db8::9"),
])
def test_client_address_is_always_an_ip(issue7_edge, recorder, xff, client):
    assert raw_get(issue7_edge, "/files/x", {"X-Forwarded-For": xff})[0] == 200
    assert recorder.last()[1]["x-seen-client"] == [client]


def test_catastrophic_route_regex_does_not_stall_the_worker(issue7_edge, recorder):
    # With Python's re this path takes far longer than the client timeout (30 s) to refuse.
    assert raw_get(issue7_edge, "/api/" + "a" * 40 + "/y")[0] == 200
    assert recorder.last()[0] == "GET /api/" + "a" * 40 + "/y HTTP/1.1"   # the catch-all
    assert raw_get(issue7_edge, "/api/abc/x")[0] == 200
