"""Response compression end to end (issue 10, item 5): a real edge (2 workers, TLS, HTTP/1.1 and
HTTP/2) in front of the demo origin, whose /text/N endpoint serves text with its sha256.

Bodies are decoded here with the reference libraries (gzip, brotli, zstandard) and compared
with the origin's digest, so a codec that drops or reorders a byte fails.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import ssl

import brotli
import pytest
import zstandard

from edge.launch import start_edge
from edge.tls import generate_self_signed
from tests.integration.h2client import h2_exchange

LARGE = 1536 * 1024  # > 1 MiB: streamed through the encoder in many chunks
SMALL = 2000


@pytest.fixture(scope="module")
def edge(origin, tmp_path_factory):
    cert, key = generate_self_signed(tmp_path_factory.mktemp("tls"))
    config = {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [
            {"name": "plain", "match": {"path": "/plain"}, "strip_prefix": True, "upstream": "app",
             "compression": False},
            {"name": "default", "match": {"path": "/"}, "upstream": "app"},
        ],
        "compression": {"enabled": True, "codecs": ["zstd", "br", "gzip"], "min_size": 512},
        "tls": {"certfile": str(cert), "keyfile": str(key)},
    }
    p = start_edge(config, workers=2, work_dir=str(tmp_path_factory.mktemp("edge")))
    yield p
    log = p.log()
    p.stop()
    assert "internal error" not in log.lower(), log[-3000:]


def get(edge, path, headers=(), method="GET"):
    """One HTTP/1.1 exchange over TLS: (status, {lower name: [values]}, raw body, chunk-decoded, never content-decoded)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate
    conn = http.client.HTTPSConnection("127.0.0.1", edge.port, context=ctx, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        fields: dict[str, list[str]] = {}
        for k, v in r.getheaders():
            fields.setdefault(k.lower(), []).append(v)
        return r.status, fields, body
    finally:
        conn.close()


def decode(coding, data):
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return brotli.decompress(data)
    assert coding == "zstd"
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def vary(fields):
    return [n.strip().lower() for v in fields.get("vary", []) for n in v.split(",")]


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("size, chunked", [(SMALL, False), (LARGE, False), (LARGE, True)])
def test_round_trip_http1(edge, coding, size, chunked):
    status, f, body = get(edge, f"/text/{size}?etag=v1{'&chunked=1' if chunked else ''}",
                          [("Accept-Encoding", coding)])
    assert status == 200
    assert f["content-encoding"] == [coding]
    assert "content-length" not in f and f["transfer-encoding"] == ["chunked"]
    assert vary(f) == ["accept-encoding"]
    assert f["etag"] == ['W/"v1"']                                  # RFC 9110 §8.8.3: the bytes changed
    assert len(body) < size
    assert sha(decode(coding, body)) == f["x-body-sha256"][0]


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_round_trip_http2(edge, coding):
    r = h2_exchange(edge.port, f"/text/{LARGE}?chunked=1", headers=[("accept-encoding", coding)], timeout_s=30)
    assert r.status == 200 and r.reset is None
    assert r.headers["content-encoding"] == coding
    assert "content-length" not in r.headers
    assert "accept-encoding" in r.headers["vary"].lower()
    assert sha(decode(coding, r.data)) == r.headers["x-body-sha256"]


@pytest.mark.parametrize("accept, expected", [
    ("gzip, deflate, br, zstd", "zstd"),                  # a tie: the server's order
    ("gzip;q=1, br;q=0.5, zstd;q=0.2", "gzip"),           # the client's weights first
    ("zstd;q=0, br", "br"),                               # q=0 excludes
    ("*;q=0.5, zstd;q=0, br;q=0", "gzip"),                # "*" covers what is not listed
    ("GZIP ; Q=0.9", "gzip"),
])
def test_negotiation(edge, accept, expected):
    status, f, body = get(edge, "/text/5000", [("Accept-Encoding", accept)])
    assert status == 200 and f["content-encoding"] == [expected]
    assert sha(decode(expected, body)) == f["x-body-sha256"][0]


@pytest.mark.parametrize("headers", [
    [],                                                    # no Accept-Encoding
    [("Accept-Encoding", "deflate")],
    [("Accept-Encoding", "gzip;q=0, br;q=0, zstd;q=0")],   # q=0 respected
    [("Accept-Encoding", "*;q=0")],
    [("Accept-Encoding", "gzip;q=5")],                     # invalid weight: ignored
    [("Accept-Encoding", "gzip"), ("Cache-Control", "no-transform")],   # RFC 9111 §5.2.1.6
    [("Accept-Encoding", "gzip"), ("Range", "bytes=100000000-")],       # a range request (unsatisfiable: 200)
])
def test_identity_with_vary_when_eligible_but_not_encoded(edge, headers):
    status, f, body = get(edge, "/text/5000?etag=v1", headers)
    assert status == 200
    assert "content-encoding" not in f
    assert f["content-length"] == ["5000"] and sha(body) == f["x-body-sha256"][0]
    assert f["etag"] == ['"v1"']                           # identity bytes keep the strong tag
    assert vary(f) == ["accept-encoding"]                  # a cache downstream must key on it


@pytest.mark.parametrize("path", [
    "/text/5000?h=Cache-Control:public,%20no-transform",   # RFC 9111 §5.2.2.6
    "/text/5000?type=image/png",                           # not on the type list
    "/text/5000?type=text/event-stream",                   # excluded type
    "/text/511",                                           # below min_size
    "/plain/text/5000",                                    # route with compression off
])
def test_not_eligible_untouched(edge, path):
    status, f, body = get(edge, path, [("Accept-Encoding", "gzip, br, zstd")])
    assert status == 200 and "content-encoding" not in f and "vary" not in f
    assert f["content-length"] == [str(len(body))] and sha(body) == f["x-body-sha256"][0]


def test_already_encoded_untouched(edge):
    status, f, body = get(edge, "/text/5000?h=Content-Encoding:br&h=Vary:Origin", [("Accept-Encoding", "gzip")])
    assert status == 200 and f["content-encoding"] == ["br"]
    assert vary(f) == ["origin"] and f["content-length"] == ["5000"] and sha(body) == f["x-body-sha256"][0]


def test_fields_about_identity_bytes_dropped_when_encoded(edge):
    path = "/text/5000?h=Accept-Ranges:bytes&h=Content-Digest:sha-256%3D:eA%3D%3D:&h=Cache-Control:max-age%3D60"
    _, f, body = get(edge, path, [("Accept-Encoding", "gzip")])
    assert f["content-encoding"] == ["gzip"] and f["cache-control"] == ["max-age=60"]
    assert "accept-ranges" not in f and "content-digest" not in f           # RFC 9110 §14.3, RFC 9530
    _, f, body = get(edge, path, [("Accept-Encoding", "deflate")])
    assert f["accept-ranges"] == ["bytes"] and "content-digest" in f         # identity: kept


def test_vary_merged_into_the_origins(edge):
    _, f, body = get(edge, "/text/5000?h=Vary:Origin", [("Accept-Encoding", "gzip")])
    assert vary(f) == ["origin", "accept-encoding"] and f["content-encoding"] == ["gzip"]
    _, f, _ = get(edge, "/text/5000?h=Vary:Accept-Encoding", [("Accept-Encoding", "gzip")])
    assert vary(f) == ["accept-encoding"]


def test_head_untouched_with_vary(edge):
    status, f, body = get(edge, f"/text/{LARGE}", [("Accept-Encoding", "gzip")], method="HEAD")
    assert status == 200 and body == b"" and "content-encoding" not in f
    assert f["content-length"] == [str(LARGE)] and vary(f) == ["accept-encoding"]


def test_206_untouched(edge):
    status, f, body = get(edge, "/text/5000", [("Accept-Encoding", "gzip"), ("Range", "bytes=100-199")])
    assert status == 206 and "content-encoding" not in f
    assert f["content-range"] == ["bytes 100-199/5000"] and len(body) == 100 and sha(body) == f["x-body-sha256"][0]


def test_http10_client_gets_a_close_delimited_encoded_body(edge):
    import socket

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", edge.port), timeout=30)) as s:
        s.sendall(b"GET /text/300000 HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        raw = b""
        try:
            while chunk := s.recv(65536):
                raw += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0].startswith("HTTP/1.1 200") and fields["content-encoding"] == "gzip"
    assert "content-length" not in fields and "transfer-encoding" not in fields  # an HTTP/1.0 client: ends with the connection
    assert sha(gzip.decompress(body)) == fields["x-body-sha256"]


def test_304_revalidation_of_an_encoded_copy(edge):
    # the client stored the encoded 200 with W/"v1"; its revalidation still matches at the
    # origin (weak comparison) and the 304 carries the tag and Vary the 200 had (RFC 9110 §15.4.5)
    _, f, _ = get(edge, "/text/5000?etag=v1", [("Accept-Encoding", "br")])
    assert f["etag"] == ['W/"v1"']
    status, f, body = get(edge, "/text/5000?etag=v1", [("Accept-Encoding", "br"), ("If-None-Match", 'W/"v1"')])
    assert status == 304 and body == b"" and "content-encoding" not in f
    assert f["etag"] == ['W/"v1"'] and vary(f) == ["accept-encoding"]
    # a client that stored the identity copy gets the strong tag back
    status, f, _ = get(edge, "/text/5000?etag=v1", [("If-None-Match", '"v1"')])
    assert status == 304 and f["etag"] == ['"v1"']
