"""Retries on a fresh connection after a stale pooled one never resend a partly consumed body (issue 7, defect 3).

A raw-socket backend keeps the connection edge pooled idle, and resets it (RST) at the
moment edge is waiting for the client's request body: edge has taken the pooled
connection for a request with ``Expect: 100-continue`` and answered ``100 Continue``;
only then does the client send the body. Before the fix, edge pulled the first chunk,
wrote it to the dead connection, and retried on a fresh one from the iterator without
that chunk: a chunked upload reached the backend without its first chunk, and a
Content-Length upload hung until the read timeout.
"""

from __future__ import annotations

import socket

import pytest

from tests.integration.raw_origin import RawOrigin, response


def _echo_handler(drop_request: int | None = None):
    """Answers every request with its body; with ``drop_request=n``, reads request n of each
    connection and closes without answering (a backend whose idle timer fired as it arrived)."""

    def handler(conn, origin):
        while True:
            req = conn.read_request()
            if req is None:
                return
            if drop_request is not None and req["n"] == drop_request:
                return  # close: FIN, no answer
            if not conn.send(response(200, b"got:" + req["body"])):
                return

    return handler


def _cfg(port: int) -> dict:
    return {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{port}"], "retries": 0, "timeouts": {"read": "3s"}}},
        "routes": [{"match": {"path": "/"}, "upstream": "app"}],
    }


def _read_response(c: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = c.recv(65536)
        if not data:
            raise AssertionError(f"edge closed before a response head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = c.recv(65536)
        if not data:
            break
        rest += data
    return status, rest[:length]


@pytest.fixture
def origin():
    o = RawOrigin(_echo_handler())
    yield o
    o.stop()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_upload_retried_after_pooled_connection_reset_arrives_whole(origin, edge_factory, framing):
    e = edge_factory(_cfg(origin.port), workers=2)
    with socket.create_connection(("127.0.0.1", e.port), timeout=15) as c:
        # One client connection: both requests go to the same worker, which pools the backend connection.
        c.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(c) == (200, b"got:")
        assert origin.connections == 1
        frame = "Transfer-Encoding: chunked" if framing == "chunked" else "Content-Length: 10"
        c.sendall(f"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n{frame}\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            data = c.recv(1)
            assert data, "edge closed instead of 100 Continue"
            got += data
        assert got.startswith(b"HTTP/1.1 100"), got
        # Edge is now reading the body: the backend resets the idle pooled connection.
        assert origin.reset_idle_connection()
        body = b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n" if framing == "chunked" else b"helloworld"
        c.sendall(body)
        status, answer = _read_response(c)
    assert (status, answer) == (200, b"got:helloworld")
    assert [r["body"] for r in origin.requests if r["line"].startswith("POST")] == [b"helloworld"]


@pytest.mark.parametrize("size", [10, 40_000])
def test_idempotent_upload_resent_whole_when_backend_drops_it_on_a_reused_connection(edge_factory, size):
    # The backend reads the second request of every connection and closes without answering:
    # a PUT (idempotent, body within the kept 64 KiB) is sent again, whole, on a fresh connection.
    o = RawOrigin(_echo_handler(drop_request=2))
    try:
        e = edge_factory(_cfg(o.port), workers=1)
        body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        with socket.create_connection(("127.0.0.1", e.port), timeout=15) as c:
            c.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(c)[0] == 200
            c.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            status, answer = _read_response(c)
        assert status == 200 and answer == b"got:" + body
        puts = [r for r in o.requests if r["line"].startswith("PUT")]
        assert [len(r["body"]) for r in puts] == [size, size] and all(r["body"] == body for r in puts)
        assert [r["conn"] for r in puts] == [1, 2]
    finally:
        o.stop()


def test_upload_larger_than_kept_bytes_is_not_resent(edge_factory):
    # 200 KiB: more than the 64 KiB edge keeps, so a dropped request is answered 502, not resent short.
    o = RawOrigin(_echo_handler(drop_request=2))
    try:
        e = edge_factory(_cfg(o.port), workers=1)
        body = b"y" * 200_000
        with socket.create_connection(("127.0.0.1", e.port), timeout=15) as c:
            c.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(c)[0] == 200
            c.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            status, _ = _read_response(c)
        assert status == 502
        assert [len(r["body"]) for r in o.requests if r["line"].startswith("PUT")] == [200_000]
        assert "cannot be sent again" in e.log()
    finally:
        o.stop()


def test_post_dropped_after_it_was_sent_is_not_retried(edge_factory):
    # RFC 9112 §9.3.1: the backend may have acted on it; a non-idempotent request is not repeated.
    o = RawOrigin(_echo_handler(drop_request=2))
    try:
        e = edge_factory(_cfg(o.port), workers=1)
        with socket.create_connection(("127.0.0.1", e.port), timeout=15) as c:
            c.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(c)[0] == 200
            c.sendall(b"POST /order HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            status, _ = _read_response(c)
        assert status == 502
        assert len([r for r in o.requests if r["line"].startswith("POST")]) == 1
    finally:
        o.stop()


def test_body_not_invited_when_no_backend_is_reachable(edge_factory):
    # The body is pulled only once a connection exists: with every server refusing, a client
    # that sent "Expect: 100-continue" gets the 502 instead of a 100 and an upload that goes nowhere.
    from edge.launch import free_port

    e = edge_factory(_cfg(free_port()), workers=1)
    with socket.create_connection(("127.0.0.1", e.port), timeout=15) as c:
        c.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
        status, _ = _read_response(c)
    assert status == 502
