"""End-to-end behaviour of the proxy core: a real gunicorn edge with 2 workers in front of real origins."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest
import requests

from tests.integration.conftest import read_until_close, simple_config


@pytest.fixture(scope="module")
def edge(origin, tmp_path_factory):
    from edge.launch import start_edge

    cfg = simple_config(origin)
    cfg["routes"].insert(0, {"name": "api", "match": {"path": "/api"}, "upstream": "app", "strip_prefix": True})
    cfg["server"] = {"trusted_proxies": []}
    p = start_edge(cfg, workers=2, work_dir=str(tmp_path_factory.mktemp("edge")))
    yield p
    p.stop()


def echo(resp) -> dict:
    assert resp.status_code == 200, resp.text
    return json.loads(resp.content)


def header_names(data: dict) -> list[str]:
    return [k.lower() for k, _ in data["headers"]]


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
        return out


@pytest.mark.parametrize("method", ["GET", "DELETE", "POST", "PUT", "PATCH", "OPTIONS"])
def test_methods_reach_origin(edge, method):
    data = echo(requests.request(method, f"{edge.url}/echo?x=1"))
    assert data["method"] == method
    assert data["path"] == "/echo?x=1"


def test_head_has_no_body(edge):
    r = requests.head(f"{edge.url}/bytes/5000")
    assert r.status_code == 200
    assert r.headers["Content-Length"] == "5000"
    assert r.content == b""


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(edge, status):
    raw = raw_exchange(edge.port, f"GET /status/{status} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode())
    assert body == b""
    assert b"transfer-encoding" not in head.lower()
    # the origin sends no Content-Length on these: edge adds none (RFC 9110 §8.6: a 204 MUST NOT
    # have one; a 304's may only repeat the 200's length, which edge does not know)
    assert b"content-length" not in head.lower()


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_content_length_body_streams_byte_exact(edge, method):
    payload = bytes(range(256)) * 4000
    data = echo(requests.request(method, f"{edge.url}/echo", data=payload))
    assert data["body_length"] == len(payload)
    assert data["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert data["chunked"] is False


def test_chunked_upload_is_forwarded_chunked(edge):
    parts = [b"a" * 1000, b"b" * 70000, b"c"]
    data = echo(requests.post(f"{edge.url}/echo", data=iter(parts)))
    body = b"".join(parts)
    assert data["body_length"] == len(body)
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert data["chunked"] is True


def test_chunked_response_and_trailers(edge):
    raw = raw_exchange(edge.port, b"GET /chunked?n=3&size=10&trailer=1 HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body.startswith(b"a\r\n")
    assert b"X-Body-Sha256" in body  # the trailer field survives the hop


def test_expect_100_continue(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        first = s.recv(100)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"hello")
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    data = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert data["body_length"] == 5
    assert "expect" not in header_names(data)  # edge answered the expectation itself


def test_keepalive_reuse_to_backend(edge, origin):
    requests.get(f"{origin.url}/stats/reset")
    with requests.Session() as s:
        for _ in range(60):
            assert s.get(f"{edge.url}/").status_code == 200
    stats = requests.get(f"{origin.url}/stats").json()
    # 60 requests over at most a couple of pooled connections per worker (plus the stats calls).
    assert stats["requests"] >= 60
    assert stats["connections"] <= 8


def test_hop_by_hop_headers_stripped(edge):
    headers = {
        "Connection": "close, X-Secret",
        "X-Secret": "s3cret",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Proxy-Connection": "keep-alive",
        "Upgrade": "h2c",
        "HTTP2-Settings": "AAMAAABkAAQAoAAAAAIAAAAA",
        "X-Kept": "yes",
    }
    data = echo(requests.get(f"{edge.url}/echo", headers=headers))
    names = header_names(data)
    for gone in ("x-secret", "keep-alive", "te", "proxy-authorization", "proxy-connection", "upgrade", "http2-settings", "connection"):
        assert gone not in names, gone
    assert "x-kept" in names
    assert "via" in names


def test_backend_identity_hidden_and_duplicates_kept(edge):
    r = requests.get(f"{edge.url}/headers?Set-Cookie=a%3D1&Set-Cookie=b%3D2&X-Custom=v")
    raw = raw_exchange(edge.port, b"GET /headers?Set-Cookie=a%3D1&Set-Cookie=b%3D2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = raw.partition(b"\r\n\r\n")[0].decode()
    cookies = [line for line in head.split("\r\n") if line.lower().startswith("set-cookie:")]
    assert cookies == ["Set-Cookie: a=1", "Set-Cookie: b=2"]
    assert "Server" not in r.headers and "X-Powered-By" not in r.headers
    assert r.headers["X-Custom"] == "v"


def test_x_forwarded_for_appended_from_untrusted_peer_not_believed(edge):
    data = echo(requests.get(f"{edge.url}/echo", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}))
    h = {k.lower(): v for k, v in data["headers"]}
    # The peer (127.0.0.1) is not a trusted proxy: X-Forwarded-For is still appended to (never
    # overwritten), but its single-valued claims are replaced by edge's own.
    assert h["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-port"] == str(edge.port)
    assert h["host"] == f"127.0.0.1:{edge.port}"


def test_x_forwarded_for_appended_behind_trusted_proxy(origin, edge_factory):
    cfg = simple_config(origin)
    cfg["server"] = {"trusted_proxies": ["127.0.0.0/8"]}
    cfg["headers"] = {"forwarded": True}
    e = edge_factory(cfg, workers=1)
    data = echo(requests.get(f"{e.url}/echo", headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7", "X-Forwarded-Proto": "https"}))
    h = {k.lower(): v for k, v in data["headers"]}
    assert h["x-forwarded-for"] == "203.0.113.9, 198.51.100.7, 127.0.0.1"
    assert h["x-forwarded-proto"] == "https"
    assert h["forwarded"].startswith("for=127.0.0.1;")


def test_strip_prefix_route(edge):
    data = echo(requests.get(f"{edge.url}/api/echo?q=1"))
    assert data["path"] == "/echo?q=1"


@pytest.mark.parametrize("path", ["/%61pi/echo", "/./api/echo", "//api/echo", "/x/../api/echo"])
def test_normalised_path_matches_and_is_forwarded(edge, path):
    raw = raw_exchange(edge.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 200")
    data = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert data["path"] == "/echo"  # matched the /api route and stripped like the plain spelling


def test_missing_host_is_400(edge):
    raw = raw_exchange(edge.port, b"GET / HTTP/1.1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
])
def test_malformed_requests_get_400(edge, request_bytes):
    raw = raw_exchange(edge.port, request_bytes)
    assert raw.startswith(b"HTTP/1.1 400"), raw[:80]


def test_client_abort_mid_body_closes_backend_connection(origin, edge_factory):
    e = edge_factory(simple_config(origin), workers=1)
    with requests.Session() as s:
        assert s.get(f"{e.url}/").status_code == 200  # leaves one pooled connection
    with socket.create_connection(("127.0.0.1", e.port)) as c:
        c.sendall(b"GET /bytes/200000000?rate=20000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.recv(65536).startswith(b"HTTP/1.1 200")
    time.sleep(0.5)
    # The pooled connection was used for the aborted download and must not come back:
    # the next request opens a fresh one (request number 1 on its connection).
    r = requests.get(f"{e.url}/echo")
    assert echo(r)["request"] == 1
    assert r.headers["X-Conn-Requests"] == "1"


def test_upstream_closed_mid_body_truncates_client_response(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as c:
        c.sendall(b"GET /close-mid-body HTTP/1.1\r\nHost: x\r\n\r\n")
        got = read_until_close(c)
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"Content-Length: 100000" in head
    assert len(body) < 100000  # cut, never padded or completed


def test_many_requests_one_connection_after_errors(edge):
    with requests.Session() as s:
        for path in ("/status/500", "/", "/status/404", "/echo"):
            r = s.get(f"{edge.url}{path}")
        assert r.status_code == 200


def test_request_head_in_pieces_and_pipelined_requests(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as s:
        for piece in (b"GET /echo?a=1 HT", b"TP/1.1\r\nHo", b"st: x\r\n", b"\r\n"):
            s.sendall(piece)
            time.sleep(0.05)
        # two more requests in one write (pipelining): answered in order on the same connection
        s.sendall(b"GET /echo?b=2 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo?c=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.count(b"HTTP/1.1 200 OK") == 3
    assert got.index(b"/echo?a=1") < got.index(b"/echo?b=2") < got.index(b"/echo?c=3")


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: y\r\n" * 200 + b"\r\n", b"431"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", b"501"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 1\r\n\r\nx", b"417"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", b"400"),
])
def test_request_limits_and_framing_errors(edge, request_bytes, status):
    raw = raw_exchange(edge.port, request_bytes)
    assert raw.startswith(b"HTTP/1.1 " + status), raw[:80]


def test_absolute_form_target_routes_by_its_authority(edge):
    raw = raw_exchange(edge.port, b"GET http://example.test/echo?z=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n")
    data = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert data["path"] == "/echo?z=1"
    assert dict((k.lower(), v) for k, v in data["headers"])["x-forwarded-host"] == "example.test"
