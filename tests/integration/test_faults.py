"""Backend failures map to 502/503/504 with short bodies; timeouts fire; the worker keeps serving."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from edge.launch import free_port
from tests.integration.conftest import read_until_close, simple_config


def _cfg(origin_port: int, **timeouts) -> dict:
    return {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin_port}"], "timeouts": timeouts, "retries": 0}},
        "routes": [{"match": {"path": "/"}, "upstream": "app"}],
    }


def test_connection_refused_is_502_short_body_no_address(edge_factory):
    dead = free_port()
    e = edge_factory(_cfg(dead), workers=1)
    r = requests.get(f"{e.url}/x", headers={"X-Request-ID": "abc123"})
    assert r.status_code == 502
    assert len(r.content) < 100
    assert str(dead) not in r.text and "127.0.0.1" not in r.text
    assert "abc123" in r.text  # the request id is quoted so a user can report it
    assert "connect to 127.0.0.1:%d failed" % dead in e.log()  # logged with its cause


def test_connect_timeout_is_504(edge_factory):
    # A listener whose accept queue is full: the kernel drops further SYNs, so connect hangs.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    fillers = []
    try:
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(lst.getsockname())
            fillers.append(f)
        time.sleep(0.2)
        e = edge_factory(_cfg(lst.getsockname()[1], connect="300ms"), workers=1)
        t0 = time.monotonic()
        r = requests.get(f"{e.url}/", timeout=10)
        assert r.status_code == 504
        assert time.monotonic() - t0 < 8  # the connect timeout ended it, not requests' 10 s (issue 8: no tighter bound)
    finally:
        for f in fillers:
            f.close()
        lst.close()


def test_read_timeout_is_504(origin, edge_factory):
    e = edge_factory(_cfg(origin.port, read="300ms"), workers=1)
    t0 = time.monotonic()
    r = requests.get(f"{e.url}/delay/30", timeout=60)
    assert r.status_code == 504
    assert time.monotonic() - t0 < 15  # the read timeout ended it, not the backend's answer (issue 8: no tighter bound)
    assert requests.get(f"{e.url}/").status_code == 200  # the same worker serves on


def test_total_timeout_is_504(origin, edge_factory):
    e = edge_factory(_cfg(origin.port, read="5s", total="500ms"), workers=1)
    t0 = time.monotonic()
    r = requests.get(f"{e.url}/delay/30", timeout=60)
    assert r.status_code == 504
    assert time.monotonic() - t0 < 15  # the total timeout ended it, not the backend's answer


def test_read_timeout_before_first_body_byte_is_504(origin, edge_factory):
    # The backend sent its head, then nothing: edge has not written to the client yet
    # (the head rides with the first body chunk), so the client still gets a clean 504.
    e = edge_factory(_cfg(origin.port, read="300ms"), workers=1)
    r = requests.get(f"{e.url}/delay/3?body=1")
    assert r.status_code == 504


def test_read_timeout_mid_body_cuts_response(origin, edge_factory):
    e = edge_factory(_cfg(origin.port, read="300ms"), workers=1)
    with socket.create_connection(("127.0.0.1", e.port), timeout=5) as c:
        c.sendall(b"GET /bytes/100000?rate=2048 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = read_until_close(c)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert 0 < len(body) < 100000  # the head was out: the body is cut, not completed


@pytest.mark.parametrize("path", ["/reset", "/garbage"])
def test_backend_protocol_failures_are_502(origin, edge_factory, path):
    e = edge_factory(_cfg(origin.port), workers=1)
    r = requests.get(f"{e.url}{path}")
    assert r.status_code == 502
    assert requests.get(f"{e.url}/").status_code == 200


def test_connect_failure_retried_on_next_server(origin, edge_factory):
    cfg = {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{origin.port}"], "retries": 1}},
        "routes": [{"match": {"path": "/"}, "upstream": "app"}],
    }
    e = edge_factory(cfg, workers=1)
    for _ in range(4):
        assert requests.get(f"{e.url}/").status_code == 200


def test_stale_pooled_connection_is_retried_transparently(edge_factory, tmp_path):
    """The origin closes idle connections after 1 s; edge must not surface that as a 502."""
    import subprocess, sys
    from edge.launch import ORIGIN_SCRIPT, Process, wait_for_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ORIGIN_SCRIPT), "--port", str(port), "--name", "short", "--idle-timeout", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    o = Process(proc, port)
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        e = edge_factory(simple_config(o), workers=1)
        with requests.Session() as s:
            assert s.get(f"{e.url}/").status_code == 200
            time.sleep(1.5)  # the origin has closed the pooled connection by now
            assert s.get(f"{e.url}/").status_code == 200
            time.sleep(1.5)
            assert s.post(f"{e.url}/echo", data=b"x" * 10).status_code == 200
    finally:
        o.stop()


def test_unmatched_route_is_404(origin, edge_factory):
    cfg = {"upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
           "routes": [{"match": {"path": "/only"}, "upstream": "app"}]}
    e = edge_factory(cfg, workers=1)
    assert requests.get(f"{e.url}/other").status_code == 404
    assert requests.get(f"{e.url}/only").status_code == 200


def test_send_timeout_is_504_when_backend_stops_reading(edge_factory):
    """A backend that accepts but never reads: edge's writes block, and the send timeout answers."""
    import threading

    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(8)
    held = []
    stop = threading.Event()

    def accept_and_hold():
        backend.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = backend.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                held.append(conn)  # never read from
            except socket.timeout:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept_and_hold, daemon=True)
    t.start()
    try:
        e = edge_factory(_cfg(backend.getsockname()[1], send="300ms"), workers=1)
        size = 64 * 1024 * 1024
        c = socket.create_connection(("127.0.0.1", e.port), timeout=10)
        c.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        c.setblocking(False)
        chunk = b"x" * 65536
        sent, answer = 0, b""
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30 and not answer.startswith(b"HTTP/1.1 "):
            try:
                if sent < size:
                    sent += c.send(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            try:
                answer += c.recv(4096)
            except BlockingIOError:
                time.sleep(0.01)
            except (ConnectionResetError, OSError):
                break
        c.close()
        assert answer.startswith(b"HTTP/1.1 504"), answer[:60]  # the send timeout, not the 64 MiB upload, ended it
    finally:
        stop.set()
        t.join()
        for h in held:
            h.close()
        backend.close()


def test_timeouts_hold_on_a_reused_connection_with_per_route_lengths(origin, edge_factory):
    """The client re-arms one timer per connection and timeout length (issue 7): a pooled connection
    reused by a route with a short read timeout times out, and the longer default still lets a
    slow answer through on the same connection afterwards."""
    cfg = {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"], "timeouts": {"read": "5s"}, "retries": 0,
                              "keepalive": {"max_idle": 1}}},
        "routes": [
            {"match": {"path": "/delay/3"}, "upstream": "app", "timeouts": {"read": "300ms"}},
            {"match": {"path": "/"}, "upstream": "app"},
        ],
    }
    e = edge_factory(cfg, workers=1)
    with requests.Session() as s:
        first = s.get(f"{e.url}/echo").json()["connection"]
        t0 = time.monotonic()
        assert s.get(f"{e.url}/delay/3").status_code == 504
        assert time.monotonic() - t0 < 2.5
        assert s.get(f"{e.url}/echo").status_code == 200
        r = s.get(f"{e.url}/delay/1")  # 1 s of silence: under the route's 5 s, over the other route's 300 ms
        assert r.status_code == 200
        assert s.get(f"{e.url}/echo").json()["connection"] != first  # the timed-out connection was discarded


def test_backend_that_died_with_pooled_connections_costs_no_failed_request(origin, edge_factory, tmp_path):
    # A reused connection found closed is retried on a fresh one; when that connect fails too
    # (the server is gone), the request moves on to the next server instead of a 502.
    from edge.launch import start_origin

    doomed = start_origin("doomed", log_dir=str(tmp_path))
    try:
        e = edge_factory({"upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}", f"127.0.0.1:{doomed.port}"]}},
                          "routes": [{"match": {"path": "/"}, "upstream": "app"}]}, workers=1)
        with requests.Session() as s:
            served_by = {s.get(f"{e.url}/").headers.get("X-Origin") for _ in range(20)}
        assert len(served_by) == 2  # both servers were used: the worker holds pooled connections to each
    finally:
        doomed.stop()
    statuses = [requests.get(f"{e.url}/", timeout=10).status_code for _ in range(20)]
    assert statuses == [200] * 20
