"""A minimal HTTP/2 client over TLS on the ``h2`` library, able to send raw pseudo-headers.

httpx normalises what it sends (it would percent-encode a space in the path); these
tests need to send exactly what an attacker would, so the frames are built here with
h2's outbound validation switched off.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class H2Result:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None       # RST_STREAM error code, if the stream was reset
    goaway: bool = False
    interim: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # 1xx HEADERS before the final ones


def h2_exchange(port: int, path: str, *, method: str = "GET", authority: str | None = None,
                headers: list[tuple[str, str]] = (), body: bytes | None = None, body_after_s: float = 0.0,
                timeout_s: float = 10.0) -> H2Result:
    """One request on a fresh HTTP/2 connection to 127.0.0.1:``port``; the raw outcome.

    ``body_after_s``: send the DATA frames that long after the HEADERS, so the server
    has dispatched the request before its body arrives.
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # our own self-signed test certificate
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    assert sock.selected_alpn_protocol() == "h2"
    cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=cfg)
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    hdrs = [(":method", method), (":scheme", "https"), (":authority", authority or f"127.0.0.1:{port}"),
            (":path", path), *headers]
    conn.send_headers(sid, hdrs, end_stream=body is None)
    if body is not None and body_after_s:
        sock.sendall(conn.data_to_send())
        time.sleep(body_after_s)
    if body is not None:
        conn.send_data(sid, body, end_stream=True)
    sock.sendall(conn.data_to_send())
    out = H2Result()
    deadline = time.monotonic() + timeout_s
    done = False
    try:
        while not done and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    hs = dict(ev.headers)
                    out.status = int(hs.pop(":status"))
                    out.headers = hs
                elif isinstance(ev, h2.events.InformationalResponseReceived) and ev.stream_id == sid:
                    hs = dict(ev.headers)
                    out.interim.append((int(hs.pop(":status")), hs))
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    out.data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    out.trailers = dict(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    done = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    out.reset = ev.error_code
                    done = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    out.goaway = True
                    done = True
            pending = conn.data_to_send()
            if pending:
                sock.sendall(pending)
    except (OSError, ssl.SSLError):
        pass  # the server closed the connection: what we got so far is the outcome
    finally:
        sock.close()
    return out


def h2_concurrent(port: int, paths: list[str], *, server_name: str = "localhost", cafile: str | None = None,
                  timeout_s: float = 20.0) -> list[H2Result]:
    """All ``paths`` as concurrent GET streams on one HTTP/2 connection; one result per path, in order.

    Every HEADERS frame goes out before any response is read, so the streams are open
    at the same time on the server."""
    ctx = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # our own test certificate
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock = ctx.wrap_socket(raw, server_hostname=server_name)
    assert sock.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    by_sid: dict[int, H2Result] = {}
    order = []
    for path in paths:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", server_name),
                                (":path", path)], end_stream=True)
        by_sid[sid] = H2Result()
        order.append(sid)
    sock.sendall(conn.data_to_send())
    open_streams = set(order)
    deadline = time.monotonic() + timeout_s
    try:
        while open_streams and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                out = by_sid.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived):
                    hs = dict(ev.headers)
                    out.status = int(hs.pop(":status"))
                    out.headers = hs
                elif isinstance(ev, h2.events.DataReceived):
                    out.data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    out.trailers = dict(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded):
                    open_streams.discard(ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    out.reset = ev.error_code
                    open_streams.discard(ev.stream_id)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    for r in by_sid.values():
                        r.goaway = True
                    open_streams.clear()
            pending = conn.data_to_send()
            if pending:
                sock.sendall(pending)
    finally:
        sock.close()
    return [by_sid[sid] for sid in order]
