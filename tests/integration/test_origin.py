"""The demo origin (scripts/origin.py) does what the other integration tests rely on.

The origin runs as a real subprocess on a free port (``--port 0``; the port is read from
its ready line) and is stopped by PID. Clients are raw sockets, so the framing the
origin writes is checked byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ORIGIN = Path(__file__).resolve().parents[2] / "scripts" / "origin.py"
PATTERN = bytes(range(256))


def pattern(size: int) -> bytes:
    return (PATTERN * (size // 256 + 1))[:size]


@pytest.fixture(scope="module")
def origin():
    proc = subprocess.Popen([sys.executable, str(ORIGIN), "--port", "0", "--name", "t1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("origin t1 listening on 127.0.0.1:"), line
        yield ("127.0.0.1", int(line.rsplit(":", 1)[1]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    """A raw HTTP/1.1 client over one socket; reads responses by their framing."""

    def __init__(self, addr, timeout=10.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def request(self, method="GET", target="/", headers=(), body=b"", host=True):
        lines = [f"{method} {target} HTTP/1.1"] + (["Host: origin.test"] if host else [])
        lines += [f"{n}: {v}" for n, v in headers]
        if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_head(self):
        status_line = self._line().decode()
        headers = []
        while line := self._line():
            name, _, value = line.decode().partition(":")
            headers.append((name, value.strip()))
        return int(status_line.split()[1]), headers

    def response(self, head_request=False):
        """(status, headers list, body bytes, trailers list)."""
        status, headers = self.read_head()
        lower = {n.lower(): v for n, v in headers}
        body, trailers = b"", []
        if head_request or status in (204, 304) or 100 <= status < 200:
            return status, headers, body, trailers
        if lower.get("transfer-encoding") == "chunked":
            while size := int(self._line(), 16):
                body += self._exact(size)
                assert self._line() == b""
            while line := self._line():
                name, _, value = line.decode().partition(":")
                trailers.append((name, value.strip()))
        elif "content-length" in lower:
            body = self._exact(int(lower["content-length"]))
        return status, headers, body, trailers


def get(addr, target, **kw):
    c = Client(addr)
    try:
        c.request(target=target, **kw)
        return c.response(head_request=kw.get("method") == "HEAD")
    finally:
        c.close()


def hget(headers, name):
    return [v for n, v in headers if n.lower() == name.lower()]


def test_root_and_unknown_paths_say_hello_with_identity_headers(origin):
    for target in ("/", "/no/such/thing?x=1"):
        status, headers, body, _ = get(origin, target)
        assert status == 200 and body == b"hello from origin t1\n"
        assert hget(headers, "Server") == ["origin"] and hget(headers, "X-Powered-By") == ["demo"]
        assert hget(headers, "X-Origin") == ["t1"] and hget(headers, "X-Conn-Requests") == ["1"]


def test_keep_alive_counts_requests_per_connection_and_honours_close(origin):
    c = Client(origin)
    try:
        for n in (1, 2, 3):
            c.request(target="/")
            _, headers, _, _ = c.response()
            assert hget(headers, "X-Conn-Requests") == [str(n)] and not hget(headers, "Connection")
        c.request(target="/", headers=[("Connection", "close")])
        _, headers, _, _ = c.response()
        assert hget(headers, "Connection") == ["close"]
        assert c.sock.recv(10) == b""
    finally:
        c.close()


def test_echo_reports_raw_target_headers_in_order_and_body_digest(origin):
    body = b"x" * 100_000
    # the target is reported exactly as received: no decoding, no normalisation
    assert json.loads(get(origin, "/echo?p=%2F..%41//x")[2])["path"] == "/echo?p=%2F..%41//x"
    status, _, raw, _ = get(origin, "/echo?a=1&a=2", method="POST", body=body,
                            headers=[("X-Dup", "one"), ("x-dup", "two"), ("X-Mixed-Case", "V")])
    echo = json.loads(raw)
    assert echo["method"] == "POST" and echo["path"] == "/echo?a=1&a=2" and echo["query"] == "a=1&a=2"
    assert echo["headers"][:4] == [["Host", "origin.test"], ["X-Dup", "one"], ["x-dup", "two"], ["X-Mixed-Case", "V"]]
    assert echo["body_length"] == len(body) and echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echo["origin"] == "t1" and echo["request"] == 1 and echo["chunked"] is False


def test_echo_streams_a_chunked_body_with_trailers(origin):
    chunks = [b"a" * 10, b"b" * 70_000, b"c"]
    wire = b"".join(b"%x;ext=1\r\n%b\r\n" % (len(ch), ch) for ch in chunks) + b"0\r\nX-Sum: 1\r\n\r\n"
    c = Client(origin)
    try:
        c.request("PUT", "/echo", headers=[("Transfer-Encoding", "chunked")], body=wire)
        _, _, raw, _ = c.response()
        echo = json.loads(raw)
        assert echo["chunked"] and echo["trailers"] == [["X-Sum", "1"]]
        assert echo["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
        c.request("GET", "/echo")  # the connection is still in sync after the chunked body
        _, headers, raw, _ = c.response()
        assert json.loads(raw)["request"] == 2 and json.loads(raw)["body_length"] == 0
    finally:
        c.close()


def test_expect_100_continue_gets_an_interim_response(origin):
    c = Client(origin)
    try:
        c.request("POST", "/echo", headers=[("Content-Length", "5"), ("Expect", "100-continue")])
        assert c.read_head()[0] == 100
        c.send(b"hello")
        _, _, raw, _ = c.response()
        assert json.loads(raw)["body_length"] == 5
    finally:
        c.close()


@pytest.mark.parametrize("target", ["/bytes/300000", "/bytes/300000?chunked=1"])
def test_bytes_sends_the_pattern_with_either_framing(origin, target):
    status, headers, body, _ = get(origin, target)
    assert status == 200 and body == pattern(300_000)
    assert bool(hget(headers, "Transfer-Encoding")) == ("chunked" in target)


def test_bytes_rate_throttles(origin):
    start = time.monotonic()
    _, _, body, _ = get(origin, "/bytes/200000?rate=400000")
    assert len(body) == 200_000 and time.monotonic() - start >= 0.4


def test_chunked_endpoint_sends_k_chunks_and_a_trailer(origin):
    status, headers, body, trailers = get(origin, "/chunked?n=4&size=100000&trailer=1")
    assert status == 200 and body == pattern(400_000)
    assert hget(headers, "Trailer") == ["X-Body-Sha256"]
    assert trailers == [("X-Body-Sha256", hashlib.sha256(body).hexdigest())]


def test_delay_before_headers_or_before_body(origin):
    start = time.monotonic()
    assert get(origin, "/delay/0.3")[0] == 200
    assert time.monotonic() - start >= 0.3
    c = Client(origin)
    try:
        # the head comes before the delay, the body after it: a delay long enough that no
        # stall of this machine makes the head late (issue 8)
        start = time.monotonic()
        c.request(target="/delay/2?body=1")
        assert c.read_head()[0] == 200
        assert time.monotonic() - start < 2
        c._exact(len(b"delayed 2s\n"))
        assert time.monotonic() - start >= 2
    finally:
        c.close()


@pytest.mark.parametrize("code", [201, 204, 304, 404, 503])
def test_status_answers_that_code_and_no_body_for_204_304(origin, code):
    status, headers, body, _ = get(origin, f"/status/{code}")
    assert status == code
    assert (body == b"") == (code in (204, 304))
    assert not hget(headers, "Content-Length") or code not in (204, 304)


def test_head_gets_headers_only(origin):
    c = Client(origin)
    try:
        c.request("HEAD", "/static/1m")
        status, headers, _, _ = c.response(head_request=True)
        assert status == 200 and hget(headers, "Content-Length") == [str(1024 * 1024)]
        c.request("GET", "/static/1k")  # no body bytes were sent after the HEAD response
        status, headers, body, _ = c.response()
        assert len(body) == 1024 and hget(headers, "X-Conn-Requests") == ["2"]
    finally:
        c.close()


def test_headers_endpoint_keeps_duplicates(origin):
    _, headers, _, _ = get(origin, "/headers?Set-Cookie=a%3D1&Set-Cookie=b%3D2&X-Secret=s")
    assert hget(headers, "Set-Cookie") == ["a=1", "b=2"] and hget(headers, "X-Secret") == ["s"]


def test_close_mid_body_truncates(origin):
    c = Client(origin)
    try:
        c.request(target="/close-mid-body")
        _, headers = c.read_head()
        assert hget(headers, "Content-Length") == ["100000"]
        with pytest.raises(EOFError):
            c._exact(100_000)
        assert 0 < len(c.buf) < 100_000
    finally:
        c.close()


def test_reset_sends_rst(origin):
    c = Client(origin)
    try:
        c.request(target="/reset")
        with pytest.raises(ConnectionResetError):
            while c.sock.recv(100):
                pass
    finally:
        c.close()


def test_garbage_is_not_http(origin):
    c = Client(origin)
    try:
        c.request(target="/garbage")
        data = b""
        while chunk := c.sock.recv(1000):
            data += chunk
        assert data and not data.startswith(b"HTTP/")
    finally:
        c.close()


def test_malformed_request_gets_400_and_close(origin):
    c = Client(origin)
    try:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header : v\r\n\r\n")
        status, headers, _, _ = c.response()
        assert status == 400 and hget(headers, "Connection") == ["close"]
    finally:
        c.close()


def _ws_frame(opcode: int, payload: bytes, fin=True) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = struct.pack("!B", (0x80 if fin else 0) | opcode)
    head += struct.pack("!B", 0x80 | n) if n < 126 else struct.pack("!BH", 0x80 | 126, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_read(c: Client):
    b0, b1 = c._exact(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", c._exact(2))
    assert not b1 & 0x80  # server frames are unmasked
    return b0 & 0x0F, c._exact(n)


def test_websocket_echo_ping_and_close(origin):
    # RFC 6455 §1.3's worked example, so a wrong GUID cannot hide in both client and server
    key, expected = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    c = Client(origin)
    try:
        c.request(target="/ws", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                         ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")])
        status, headers = c.read_head()
        assert status == 101 and hget(headers, "Sec-WebSocket-Accept") == [expected]
        c.send(_ws_frame(0x1, "héllo".encode()))
        assert _ws_read(c) == (0x1, "héllo".encode())
        big = os.urandom(60_000)
        c.send(_ws_frame(0x2, big))
        assert _ws_read(c) == (0x2, big)
        c.send(_ws_frame(0x9, b"pp"))
        assert _ws_read(c) == (0xA, b"pp")
        c.send(_ws_frame(0x8, struct.pack("!H", 1000)))
        assert _ws_read(c) == (0x8, struct.pack("!H", 1000))
        assert c.sock.recv(10) == b""
    finally:
        c.close()


def test_stats_count_connections_and_requests_and_reset(origin):
    get(origin, "/stats/reset")
    c = Client(origin)
    try:
        for _ in range(5):
            c.request(target="/static/1k")
            c.response()
    finally:
        c.close()
    _, _, raw, _ = get(origin, "/stats")
    assert json.loads(raw) == {"connections": 2, "requests": 6}
