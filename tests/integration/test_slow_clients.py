"""Slow and idle clients, head bounds and keep-alive settings through a real edge (issue 7, defects 5, 6, 9)."""

from __future__ import annotations

import socket
import threading
import time

import requests
import websocket

from tests.integration.conftest import read_until_close, simple_config

GET = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _trickle(port: int, head: bytes, interval_s: float, out: dict, key: int) -> None:
    """Send ``head`` one byte per ``interval_s``; record how much was sent and what came back."""
    s = _connect(port)
    sent = 0
    try:
        for i in range(len(head)):
            try:
                s.sendall(head[i:i + 1])
            except OSError:
                break
            sent += 1
            s.settimeout(interval_s)
            try:
                got = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                got = b""
            s.settimeout(30)
            out[key] = (sent, got + read_until_close(s))
            return
        s.settimeout(30)
        out[key] = (sent, read_until_close(s))
    finally:
        s.close()


def test_trickling_clients_closed_at_header_deadline_while_others_answered(origin, edge_factory):
    cfg = simple_config(origin)
    cfg["server"] = {"header_timeout": "2s"}
    e = edge_factory(cfg, workers=2)
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"  # 70 bytes: 70 s at 1 byte/s
    n = 40
    out: dict = {}
    threads = [threading.Thread(target=_trickle, args=(e.port, head, 1.0, out, i)) for i in range(n)]
    for t in threads:
        t.start()
    answered = 0
    for _ in range(20):  # normal requests keep being answered meanwhile
        assert requests.get(f"{e.url}/echo", timeout=10).status_code == 200
        answered += 1
        time.sleep(0.1)
    for t in threads:
        t.join(60)
    assert answered == 20
    assert len(out) == n
    for sent, got in out.values():
        assert sent < len(head)                  # cut off long before the head was complete
        assert got.startswith(b"HTTP/1.1 408"), got[:40]


def test_idle_connection_without_any_byte_closed_quietly(origin, edge_factory):
    cfg = simple_config(origin)
    cfg["server"] = {"header_timeout": "1s"}
    e = edge_factory(cfg, workers=2)
    s = _connect(e.port)
    assert read_until_close(s) == b""
    s.close()


def test_unterminated_field_line_bounded_by_field_size(origin, edge_factory):
    cfg = simple_config(origin)
    cfg["server"] = {"max_header_field_size": 1024}
    e = edge_factory(cfg, workers=2)
    s = _connect(e.port)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 4000)  # no end of line, ever
    got = read_until_close(s)
    s.close()
    assert got.startswith(b"HTTP/1.1 431"), got[:40]


def test_head_size_bound(origin, edge_factory):
    cfg = simple_config(origin)
    cfg["server"] = {"max_head_size": "4KiB"}
    e = edge_factory(cfg, workers=2)
    s = _connect(e.port)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Field: 0123456789\r\n" * 300)  # 6 KB, never ends
    got = read_until_close(s)
    s.close()
    assert got.startswith(b"HTTP/1.1 431"), got[:40]
    assert requests.get(f"{e.url}/echo", timeout=10).status_code == 200


def test_stalled_request_body_closed_after_body_idle_timeout(origin, edge_factory):
    cfg = simple_config(origin)
    cfg["server"] = {"body_idle_timeout": "1s"}
    e = edge_factory(cfg, workers=2)
    s = _connect(e.port)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)  # then nothing
    got = read_until_close(s)
    s.close()
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:40]
    assert "408" in e.log() or got.startswith(b"HTTP/1.1 408") or got == b""


def test_keepalive_zero_means_no_keepalive(origin, edge_factory):
    cfg = simple_config(origin)
    cfg["server"] = {"keepalive": 0}
    e = edge_factory(cfg, workers=2)
    s = _connect(e.port)
    s.sendall(GET + GET)  # two pipelined requests: only the first is answered, then close
    got = read_until_close(s)
    s.close()
    assert got.startswith(b"HTTP/1.1 200")
    assert got.count(b"HTTP/1.1 200") == 1
    assert b"Connection: close" in got.split(b"\r\n\r\n", 1)[0]
    for _ in range(5):
        assert requests.get(f"{e.url}/echo", timeout=10).status_code == 200


def test_tunnel_kept_while_only_one_direction_is_active(origin, edge_factory):
    cfg = simple_config(origin)
    cfg["server"] = {"keepalive": "1s"}  # also the tunnel idle timeout when tunnel_idle_timeout is unset
    e = edge_factory(cfg, workers=2)
    ws = websocket.create_connection(f"ws://127.0.0.1:{e.port}/ws", timeout=5)
    try:
        # Pongs go to the backend, which never answers them: only client->backend is active,
        # for three idle timeouts.
        for _ in range(15):
            ws.pong(b"keep")
            time.sleep(0.2)
        ws.send("still there")
        assert ws.recv() == "still there"
    finally:
        ws.close()


def test_tunnel_closed_when_both_directions_idle(origin, edge_factory):
    cfg = simple_config(origin)
    cfg["server"] = {"keepalive": "1s"}  # also the tunnel idle timeout when tunnel_idle_timeout is unset
    e = edge_factory(cfg, workers=2)
    ws = websocket.create_connection(f"ws://127.0.0.1:{e.port}/ws", timeout=5)
    ws.send("x")
    assert ws.recv() == "x"
    time.sleep(2.5)
    try:
        ws.send("after idle")
        closed = ws.recv() != "after idle"
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        closed = True
    assert closed
