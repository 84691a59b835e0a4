"""Connection caps in the worker: per address per worker, per worker in total, per address per node.

Clients open keep-alive connections from chosen loopback addresses and keep them open;
one over a cap gets a short 503 with Connection: close while other addresses are served."""

from __future__ import annotations

import contextlib
import time

import pytest

from edge.launch import start_edge, start_origin
from tests.integration import rawhttp


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    p = start_origin("o1", log_dir=str(tmp_path_factory.mktemp("origin")))
    yield p
    p.stop()


def start(tmp_path, origin, workers, **server):
    config = {"server": server, "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
              "routes": [{"match": {"path": "/"}, "upstream": "app"}]}
    return start_edge(config, workers=workers, work_dir=str(tmp_path))


def open_served(port, src):
    """A keep-alive connection from ``src`` that got one answer (so edge counts it); (socket, reply)."""
    s = rawhttp.connect(port, src)
    s.sendall(rawhttp.head("GET", "/"))
    return s, rawhttp.read_reply(s)


def until_served(port, src, deadline_s=10.0):
    """A slot is given back when edge sees the close: poll briefly for it."""
    deadline = time.monotonic() + deadline_s
    while True:
        s, reply = open_served(port, src)
        if reply is not None and reply.status == 200 or time.monotonic() > deadline:
            return s, reply
        s.close()
        time.sleep(0.05)


def test_per_address_and_total_caps_in_one_worker(tmp_path, origin):
    edge = start(tmp_path, origin, 1, max_connections_per_ip=3, max_connections=6)
    with contextlib.ExitStack() as stack:
        held = []
        for _ in range(3):
            s, reply = open_served(edge.port, "127.0.0.2")
            stack.callback(s.close)
            assert reply.status == 200
            held.append(s)
        s, reply = open_served(edge.port, "127.0.0.2")
        stack.callback(s.close)
        assert reply.status == 503 and reply.closed and reply.headers["retry-after"] == "1"
        assert reply.body == b"503 too many connections\n"
        assert rawhttp.closed_without_answer(s)
        # another address is served meanwhile
        other, reply = open_served(edge.port, "127.0.0.3")
        stack.callback(other.close)
        assert reply.status == 200
        # a slot given back is usable again
        held.pop().close()
        s, reply = until_served(edge.port, "127.0.0.2")
        stack.callback(s.close)
        assert reply.status == 200
        # 3 (.2) + 1 (.3) open: two more fill the worker, the next address is refused
        for src in ("127.0.0.4", "127.0.0.5"):
            s, reply = open_served(edge.port, src)
            stack.callback(s.close)
            assert reply.status == 200
        s, reply = open_served(edge.port, "127.0.0.6")
        stack.callback(s.close)
        assert reply.status == 503
    assert "over max_connections_per_ip" in edge.log() and "over max_connections" in edge.log()
    edge.stop()


def test_node_wide_cap_across_two_workers(tmp_path, origin):
    cap, attempts = 4, 12
    edge = start(tmp_path, origin, 2, max_connections_per_ip_node=cap)
    with contextlib.ExitStack() as stack:
        statuses = []
        for _ in range(attempts):
            s, reply = open_served(edge.port, "127.0.0.2")
            stack.callback(s.close)
            statuses.append(reply.status)
        # per worker it would be up to 2 x cap; the node counts every worker's connections
        assert statuses.count(200) == cap and statuses.count(503) == attempts - cap, statuses
        s, reply = open_served(edge.port, "127.0.0.3")
        stack.callback(s.close)
        assert reply.status == 200
    # once the clients close, the address is admitted again
    s, reply = until_served(edge.port, "127.0.0.2")
    s.close()
    assert reply.status == 200
    edge.stop()


def test_tls_clients_that_never_finish_a_handshake_count_and_time_out(tmp_path, origin):
    """A TCP connection to a TLS listener holds its place from accept, not from the end of its
    handshake, and a handshake that never comes is cut at server.header_timeout."""
    import socket
    import ssl

    from edge.tls import generate_self_signed

    cert, key = generate_self_signed(tmp_path / "cert", ("localhost", "127.0.0.1"))
    config = {"server": {"max_connections_per_ip": 2, "header_timeout": "1s"},
              "tls": {"certfile": str(cert), "keyfile": str(key)},
              "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
              "routes": [{"match": {"path": "/"}, "upstream": "app"}]}
    (tmp_path / "edge").mkdir()
    edge = start_edge(config, workers=1, work_dir=str(tmp_path / "edge"))
    try:
        silent = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", edge.port), source_address=("127.0.0.2", 0), timeout=10)
            silent.append(s)
        time.sleep(0.3)  # both accepted and counted
        extra = socket.create_connection(("127.0.0.1", edge.port), source_address=("127.0.0.2", 0), timeout=10)
        started = time.monotonic()
        assert extra.recv(1) == b""            # over the cap: closed at once, before any handshake
        assert time.monotonic() - started < 0.9  # well before the handshake timeout
        extra.close()
        # another address is served meanwhile
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", edge.port), source_address=("127.0.0.3", 0), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                assert t.recv(12).startswith(b"HTTP/1.1 200")
        for s in silent:                       # the silent ones are cut at the handshake timeout
            assert s.recv(1) == b""
            s.close()
    finally:
        edge.stop()
