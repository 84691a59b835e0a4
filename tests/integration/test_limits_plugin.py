"""limits end to end: every status, and a chunked upload cut at the limit with the backend
seeing no more than the limit (a recording backend counts the body bytes it received)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from edge.launch import start_edge
from tests.integration import rawhttp

LIMIT = 1000


class RecordingOrigin:
    """Counts, per request, the body payload bytes it received, and whether the body ended."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock) -> None:
        sock.settimeout(15)
        buf = b""
        with sock:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                rec = {"line": lines[0], "received": 0, "complete": False}
                with self.lock:
                    self.requests.append(rec)
                buf, ok = self._body(sock, buf, hdrs, rec)
                if not ok:
                    return
                rec["complete"] = True
                body = b"got %d" % rec["received"]
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def _body(self, sock, buf, hdrs, rec):
        def more():
            try:
                return sock.recv(65536)
            except OSError:
                return b""
        if "content-length" in hdrs:
            left = int(hdrs["content-length"])
            while left:
                if not buf:
                    buf = more()
                    if not buf:
                        return b"", False
                take = buf[:left]
                buf = buf[left:]
                left -= len(take)
                rec["received"] += len(take)
            return buf, True
        if hdrs.get("transfer-encoding") != "chunked":
            return buf, True
        while True:
            while b"\r\n" not in buf:
                data = more()
                if not data:
                    return b"", False
                buf += data
            line, _, buf = buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while not buf.startswith(b"\r\n"):
                    data = more()
                    if not data:
                        return b"", False
                    buf += data
                return buf[2:], True
            while len(buf) < size + 2:
                # count payload as it arrives, so a cut body still shows what got through
                data = more()
                if not data:
                    rec["received"] += min(len(buf), size)
                    return b"", False
                buf += data
            rec["received"] += size
            buf = buf[size + 2:]

    def stop(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    origin = RecordingOrigin()
    d = tmp_path_factory.mktemp("limits")
    config = {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [
            {"match": {"path": "/up"}, "upstream": "app",
             "plugins": {"limits": {"methods": ["GET", "POST", "PUT"], "max_uri_length": 100,
                                    "max_header_count": 20, "max_header_bytes": "2KiB", "max_body_size": LIMIT}}},
            {"match": {"path": "/"}, "upstream": "app"},
        ],
    }
    edge = start_edge(config, workers=2, work_dir=str(d))
    yield edge, origin
    edge.stop()
    origin.stop()


def test_method_not_allowed_with_allow(setup):
    edge, _ = setup
    r = rawhttp.request(edge.port, path="/up", method="DELETE")
    assert r.status == 405 and r.headers["allow"] == "GET, POST, PUT, HEAD"
    assert rawhttp.request(edge.port, path="/other", method="DELETE").status == 200   # per route


def test_uri_too_long(setup):
    edge, _ = setup
    assert rawhttp.request(edge.port, path="/up?" + "q" * 96).status == 200   # 100 bytes
    assert rawhttp.request(edge.port, path="/up?" + "q" * 97).status == 414


def test_header_count_and_size(setup):
    edge, _ = setup
    assert rawhttp.request(edge.port, path="/up", headers={f"X-{i}": "v" for i in range(17)}).status == 200
    assert rawhttp.request(edge.port, path="/up", headers={f"X-{i}": "v" for i in range(25)}).status == 431
    assert rawhttp.request(edge.port, path="/up", headers={"X-Big": "v" * 2100}).status == 431


def test_content_length_over_the_limit_refused_without_100_continue(setup):
    edge, origin = setup
    before = len(origin.requests)
    with rawhttp.connect(edge.port) as s:
        s.sendall(rawhttp.head("POST", "/up", {"Content-Length": str(LIMIT + 1), "Expect": "100-continue"}))
        r = rawhttp.read_reply(s)
    assert r.status == 413                      # the first answer is the 413, not a 100 Continue
    assert len(origin.requests) == before       # the backend never heard of it


def test_content_length_at_the_limit_passes(setup):
    edge, origin = setup
    with rawhttp.connect(edge.port) as s:
        s.sendall(rawhttp.head("POST", "/up", {"Content-Length": str(LIMIT)}) + b"x" * LIMIT)
        r = rawhttp.read_reply(s)
    assert r.status == 200 and r.body == b"got %d" % LIMIT


def send_chunked(port, chunks, pause_s=0.05):
    with rawhttp.connect(port) as s:
        s.sendall(rawhttp.head("POST", "/up", {"Transfer-Encoding": "chunked"}))
        for c in chunks:
            time.sleep(pause_s)
            s.sendall(b"%x\r\n%s\r\n" % (len(c), c))
        if sum(map(len, chunks)) <= LIMIT:
            s.sendall(b"0\r\n\r\n")
        return rawhttp.read_reply(s)


def test_chunked_upload_cut_at_the_limit(setup):
    edge, origin = setup
    before = len(origin.requests)
    r = send_chunked(edge.port, [b"a" * 300] * 4)        # 1200 bytes, no Content-Length
    assert r.status == 413 and r.closed
    deadline = time.monotonic() + 10
    while len(origin.requests) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    rec = origin.requests[-1]
    time.sleep(0.3)                                        # let the origin notice the abandoned request
    assert not rec["complete"]                             # the backend request was abandoned
    assert 0 < rec["received"] <= LIMIT                    # never more than the limit


def test_chunked_upload_under_the_limit_passes(setup):
    edge, origin = setup
    r = send_chunked(edge.port, [b"b" * 300] * 3)
    assert r.status == 200 and r.body == b"got 900"
