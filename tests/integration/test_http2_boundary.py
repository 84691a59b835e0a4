"""HTTP/2 behaves as HTTP/1 at the protocol boundary (issue 7, defect 1 and the framing rules).

A real h2 client over TLS sends raw pseudo-headers to a real edge (2 workers) in
front of the demo origin, whose /echo endpoint reports what it received.
"""

from __future__ import annotations

import json
import socket

import pytest

from edge.tls import generate_self_signed
from tests.integration.conftest import read_until_close, until
from tests.integration.h2client import h2_exchange

INTERNAL_ERROR = 0x2


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return generate_self_signed(tmp_path_factory.mktemp("tls"))


def _config(origin, tls_files, tmp_path):
    cert, key = tls_files
    return {
        "server": {"accesslog": str(tmp_path / "access.log")},
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [
            {"match": {"path": "/admin"}, "respond": {"status": 403, "body": "denied"}},
            {"match": {"path": "/"}, "upstream": "app"},
        ],
        "tls": {"certfile": str(cert), "keyfile": str(key)},
    }


@pytest.fixture
def edge_h2(origin, edge_factory, tls_files, tmp_path):
    return edge_factory(_config(origin, tls_files, tmp_path), workers=2)


def _bugs_logged(log: str) -> list[str]:
    """Log lines that mean a bug (an internal error, gunicorn's own HTTP/2 error handler)."""
    return [line for line in log.splitlines()
            if "internal error" in line.lower() or "Error handling HTTP/2 request" in line]


def _h1(port: int, raw: bytes) -> bytes:
    """The same request over HTTP/1 (plain TLS, ALPN http/1.1): the reference behaviour."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as s:
        s.sendall(raw)
        return read_until_close(s)


@pytest.mark.parametrize("path", [
    "/a b?q=1 HTTP/1.1",   # request-line injection into the upstream request
    "/admin HTTP/1.1",     # ... which also slipped past the /admin deny rule
    "/admin#x",            # a fragment that got past the deny rule (HAProxy CVE-2023-45539 class)
    "/caf\u00e9",          # reached the backend as the single byte 0xE9
    "/\u20ac",             # gave 500
    "/p?q=a b",            # space in the query
    "/p?q=\x01",           # CTL in the query
    "*",                   # asterisk-form only with OPTIONS
    "example.com:443",     # authority-form: CONNECT only, and CONNECT is refused
])
def test_http2_path_refused_like_http1(edge_h2, path):
    r = h2_exchange(edge_h2.port, path)
    assert r.status == 400, r
    assert r.data.startswith(b"400 bad request"), r.data  # edge's own answer: the backend never saw it
    raw_target = path.encode("utf-8")
    h1 = _h1(edge_h2.port, b"GET " + raw_target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert h1.startswith(b"HTTP/1.1 4"), h1[:60]  # HTTP/1 refuses it too (400, or 403 for a deny rule)
    assert not _bugs_logged(edge_h2.log())


def test_http2_forwards_no_spurious_version_field_and_keeps_path(edge_h2):
    r = h2_exchange(edge_h2.port, "/echo?x=%C3%A9", headers=[("x-test", "1"), ("cookie", "a=1"), ("cookie", "b=2")])
    assert r.status == 200
    sent = json.loads(r.data)
    names = [n.lower() for n, _ in sent["headers"]]
    assert "version" not in names                      # gunicorn's HTTP_VERSION environ key
    assert sent["path"] == "/echo?x=%C3%A9"
    assert ["x-test", "1"] in [[n.lower(), v] for n, v in sent["headers"]]
    assert ["cookie", "a=1; b=2"] in [[n.lower(), v] for n, v in sent["headers"]]  # RFC 9113 §8.2.3


def test_http2_delete_with_data_frames_has_a_body(edge_h2):
    r = h2_exchange(edge_h2.port, "/echo", method="DELETE", body=b"12345")
    assert r.status == 200
    assert json.loads(r.data)["body_length"] == 5


def test_http2_head_keeps_backend_content_length(edge_h2):
    r = h2_exchange(edge_h2.port, "/bytes/1234", method="HEAD")
    assert r.status == 200
    assert r.headers.get("content-length") == "1234"
    assert r.data == b""


def test_http2_host_differing_from_authority_refused(edge_h2):
    r = h2_exchange(edge_h2.port, "/echo", headers=[("host", "other.example")])
    # RFC 9113 §8.3.1: refused (400), whether by edge or already by the h2 layer (GOAWAY)
    assert r.status == 400 or (r.status is None and (r.goaway or r.reset is not None))


@pytest.mark.parametrize("body", [b"12345", b"12345" * 4])
def test_http2_content_length_mismatch_after_dispatch_is_a_client_error(edge_h2, body):
    # The DATA frames arrive after the request was dispatched: h2 refuses them
    # (RFC 9113 §8.1.1) and the request ends; it was logged as an internal error
    # with a traceback before.
    r = h2_exchange(edge_h2.port, "/echo", method="POST", body=body, headers=[("content-length", "10")],
                    body_after_s=0.5)
    assert r.status != 200
    assert r.reset is not None or r.goaway or r.status == 400
    ok = h2_exchange(edge_h2.port, "/echo")
    assert ok.status == 200  # the worker keeps serving
    assert not _bugs_logged(edge_h2.log())


def test_http2_upstream_error_mid_body_resets_stream_and_is_logged(edge_h2, tmp_path):
    r = h2_exchange(edge_h2.port, "/close-mid-body")
    assert r.status == 200
    assert r.reset == INTERNAL_ERROR          # not a clean END_STREAM on a short body
    assert len(r.data) < 100000
    until(lambda: "response cut short" in edge_h2.log())
    access = tmp_path / "access.log"
    until(lambda: access.exists() and "/close-mid-body" in access.read_text())
    entry = [json.loads(line) for line in access.read_text().splitlines() if "/close-mid-body" in line][-1]
    assert entry["protocol"] == "HTTP/2"
    assert entry["error"] is not None        # the access log no longer says a plain 200
    assert "Error handling HTTP/2 request" not in edge_h2.log()


BAD_HEADER_PLUGIN = '''
from edge.plugins import Plugin


class Splitter(Plugin):
    """Sets a response header whose value would split the response (a plugin bug)."""
    name = "splitter"

    def on_response(self, ctx, response):
        if ctx.path == "/echo":
            response.headers.set("X-Bad", "a\\r\\nSet-Cookie: injected=1")
        return None
'''


def test_invalid_reply_field_from_a_plugin_is_a_500_on_both_protocols(origin, edge_factory, tls_files, tmp_path):
    import textwrap

    d = tmp_path / "plugins"
    d.mkdir()
    (d / "splitter.py").write_text(textwrap.dedent(BAD_HEADER_PLUGIN))
    cfg = _config(origin, tls_files, tmp_path)
    cfg["plugin_dirs"] = [str(d)]
    cfg["plugins"] = {"splitter": {}}
    e = edge_factory(cfg, workers=2)
    r = h2_exchange(e.port, "/echo")
    assert r.status == 500
    assert "set-cookie" not in r.headers and "x-bad" not in r.headers
    h1 = _h1(e.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: rid-42\r\nConnection: close\r\n\r\n")
    assert h1.startswith(b"HTTP/1.1 500")
    assert b"injected" not in h1
    until(lambda: "invalid response header" in e.log())
    lines = [line for line in e.log().splitlines() if "invalid response header" in line]
    assert any("rid-42" in line for line in lines)  # one line per request, naming its request id


def test_http2_chunked_backend_reply_streams_with_its_trailers(edge_h2):
    import hashlib

    r = h2_exchange(edge_h2.port, "/chunked?n=3&size=1000&trailer=1")
    assert r.status == 200
    assert r.reset is None
    assert len(r.data) == 3000
    assert "content-length" not in r.headers and "transfer-encoding" not in r.headers
    assert r.trailers.get("x-body-sha256") == hashlib.sha256(r.data).hexdigest()
