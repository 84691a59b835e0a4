"""TLS termination end to end (issue 13): real handshakes against a real edge with 2 workers.

One edge per module serves a plain and a TLS listener with three certificates (an
exact name, a wildcard, a default); the reload and redirect tests start their own.
Certificates come from ``edge.certs`` (the local CA tooling), so the client verifies
them against that CA as a homelab browser would.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from cryptography import x509

from edge import certs
from edge.launch import free_port, start_edge
from tests.integration.h2client import h2_concurrent

PATTERN = bytes(range(256)) * 256  # the origin's /bytes pattern (scripts/origin.py)


def pattern(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = d / "ca"
    certs.make_local_ca(ca)
    return SimpleNamespace(
        ca=ca,
        ca_pem=str(ca / certs.CA_CERT),
        exact=certs.issue(["exact.test"], ca, d / "exact"),
        wild=certs.issue(["*.wild.test"], ca, d / "wild"),
        default=certs.issue(["default.test", "127.0.0.1"], ca, d / "default"),
    )


def _entry(issued) -> dict:
    return {"cert": str(issued.cert_path), "key": str(issued.key_path)}


def _config(origin, plain: int, secure: int, certificates: list[dict], **tls) -> dict:
    return {
        "server": {"listeners": [{"bind": f"127.0.0.1:{plain}"}, {"bind": f"127.0.0.1:{secure}", "tls": True}]},
        "tls": {"certificates": certificates, **tls},
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [
            {"name": "secure_only", "match": {"path": "/secure", "scheme": "https"}, "respond": {"body": "secure"}},
            {"name": "acme", "match": {"path": "/.well-known/acme-challenge/"}, "respond": {"body": "challenge"}},
            {"name": "app", "match": {"path": "/"}, "upstream": "app"},
        ],
    }


@pytest.fixture(scope="module")
def edge_tls(origin, pki, tmp_path_factory):
    plain, secure = free_port(), free_port()
    cfg = _config(origin, plain, secure, [_entry(pki.exact), _entry(pki.wild), _entry(pki.default)],
                  default="default.test", http2_settings={"max_concurrent_streams": 32})
    p = start_edge(cfg, workers=2, port=plain, work_dir=str(tmp_path_factory.mktemp("edge")))
    p.plain, p.secure = plain, secure
    yield p
    p.stop()


def served_certificate(port: int, server_name: str | None) -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test compares the certificate itself
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True))


def serial_of(path) -> int:
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).serial_number


@pytest.mark.parametrize("server_name, expected", [
    ("exact.test", "exact"),
    ("EXACT.test", "exact"),
    ("a.wild.test", "wild"),
    ("b.a.wild.test", "default"),  # a wildcard covers one label only (RFC 6125 §6.4.3)
    ("wild.test", "default"),
    ("unknown.test", "default"),
    (None, "default"),             # no SNI at all
])
def test_certificate_served_matches_the_sni_name(edge_tls, pki, server_name, expected):
    got = served_certificate(edge_tls.secure, server_name)
    assert got.serial_number == serial_of(getattr(pki, expected).cert_path)


def test_served_chain_verifies_against_the_local_ca(edge_tls, pki):
    ctx = ssl.create_default_context(cafile=pki.ca_pem)
    with socket.create_connection(("127.0.0.1", edge_tls.secure), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="x.wild.test") as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")


def test_tls_1_1_is_refused_by_edge(edge_tls):
    # The client is set up so that *it* would accept TLS 1.1 (security level 0 lets OpenSSL 3
    # offer it): the handshake then fails on edge's protocol_version alert, not on the client.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", edge_tls.secure), timeout=10) as raw:
        with pytest.raises(ssl.SSLError) as e:
            ctx.wrap_socket(raw, server_hostname="exact.test")
    assert "ALERT_PROTOCOL_VERSION" in str(e.value)  # an alert received from the server
    # and TLS 1.2 with the same client works
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", edge_tls.secure), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="exact.test") as s:
            assert s.version() == "TLSv1.2"


def _forwarded_proto(body: dict) -> list[str]:
    return [v for n, v in body["headers"] if n.lower() == "x-forwarded-proto"]


def test_plain_and_tls_listeners_at_once_with_x_forwarded_proto_each(edge_tls, pki):
    plain = requests.get(f"http://127.0.0.1:{edge_tls.plain}/echo", timeout=10)
    secure = requests.get(f"https://127.0.0.1:{edge_tls.secure}/echo", timeout=10, verify=pki.ca_pem)
    assert plain.status_code == secure.status_code == 200
    assert _forwarded_proto(plain.json()) == ["http"]
    assert _forwarded_proto(secure.json()) == ["https"]


def test_route_with_match_scheme_answers_only_on_its_listener(edge_tls, pki):
    secure = requests.get(f"https://127.0.0.1:{edge_tls.secure}/secure", timeout=10, verify=pki.ca_pem)
    plain = requests.get(f"http://127.0.0.1:{edge_tls.plain}/secure", timeout=10)
    assert secure.text == "secure"
    assert plain.text.startswith("hello from origin")  # the next route: the origin


def test_h2_concurrent_streams_reach_an_http11_origin_with_correct_bodies(edge_tls, pki):
    sizes = [1000 * (i + 1) + i for i in range(10)]
    paths = [f"/bytes/{n}" for n in sizes] + ["/chunked?n=3&size=1000&trailer=1", "/echo?h2=1"]
    results = h2_concurrent(edge_tls.secure, paths, server_name="exact.test", cafile=pki.ca_pem)
    for n, r in zip(sizes, results):
        assert r.status == 200 and r.reset is None
        assert r.data == pattern(n)
    chunked, echo = results[-2], results[-1]
    assert chunked.status == 200 and len(chunked.data) == 3000 and chunked.trailers
    body = json.loads(echo.data)
    assert body["version"] == "HTTP/1.1" and _forwarded_proto(body) == ["https"]


def test_h2_error_mid_stream_resets_only_that_stream(edge_tls, pki):
    results = h2_concurrent(edge_tls.secure, ["/bytes/5000", "/close-mid-body", "/bytes/7000"],
                            server_name="exact.test", cafile=pki.ca_pem)
    assert results[1].reset == 0x2  # INTERNAL_ERROR (RFC 9113 §7)
    assert results[0].data == pattern(5000) and results[2].data == pattern(7000)
    assert not results[0].goaway


# --------------------------------------------------------------------------- reload


def _download(port: int, ca_pem: str, size: int, rate: int, got: dict, started: threading.Event) -> None:
    ctx = ssl.create_default_context(cafile=ca_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname="reload.test") as s:
                got["serial"] = x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number
                s.sendall(f"GET /bytes/{size}?rate={rate} HTTP/1.1\r\nHost: reload.test\r\n"
                          "Connection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                    started.set()
                got["data"] = data
    except (OSError, ssl.SSLError) as e:
        got["error"] = e
    finally:
        started.set()


def test_hup_serves_a_replaced_certificate_while_a_download_on_the_old_one_completes(origin, pki, edge_factory,
                                                                                       tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    first = certs.issue(["reload.test"], pki.ca, tmp_path / "first")
    shutil.copy(first.cert_path, live / "site.pem")
    shutil.copy(first.key_path, live / "site.key")
    plain, secure = free_port(), free_port()
    cfg = _config(origin, plain, secure, [{"cert": str(live / "site.pem"), "key": str(live / "site.key")}])
    e = edge_factory(cfg, port=plain)
    size, rate = 600_000, 200_000  # about three seconds
    got: dict = {}
    started = threading.Event()
    t = threading.Thread(target=_download, args=(secure, pki.ca_pem, size, rate, got, started), daemon=True)
    t.start()
    assert started.wait(20)
    assert got.get("serial") == serial_of(first.cert_path)

    second = certs.issue(["reload.test"], pki.ca, tmp_path / "second")
    shutil.copy(second.cert_path, live / "site.pem")
    shutil.copy(second.key_path, live / "site.key")
    e.reload()  # HUP; the old worker finishes the download meanwhile
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if served_certificate(secure, "reload.test").serial_number == serial_of(second.cert_path):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the replaced certificate was never served")
    t.join(30)
    assert "error" not in got, got.get("error")
    head, _, body = got["data"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == pattern(size)


def test_reload_with_a_mismatched_key_is_refused_and_the_old_certificate_kept(origin, pki, edge_factory, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    first = certs.issue(["reload.test"], pki.ca, tmp_path / "first")
    other = certs.issue(["other.test"], pki.ca, tmp_path / "other")
    shutil.copy(first.cert_path, live / "site.pem")
    shutil.copy(first.key_path, live / "site.key")
    plain, secure = free_port(), free_port()
    e = edge_factory(_config(origin, plain, secure, [{"cert": str(live / "site.pem"), "key": str(live / "site.key")}]),
                     port=plain)
    shutil.copy(other.key_path, live / "site.key")  # a deploy that got the key wrong
    from edge.launch import ReloadRefused

    with pytest.raises(ReloadRefused) as refused:
        e.reload(wait=True)
    assert "is not the key of" in str(refused.value)
    assert served_certificate(secure, "reload.test").serial_number == serial_of(first.cert_path)


# --------------------------------------------------------------------------- redirect


@pytest.fixture(scope="module")
def edge_redirect(origin, pki, tmp_path_factory):
    plain, secure = free_port(), free_port()
    cfg = _config(origin, plain, secure, [_entry(pki.default)], redirect_http=True)
    cfg["server"]["trusted_proxies"] = ["127.0.0.1/32"]  # the tests' client plays a TLS-terminating balancer too
    p = start_edge(cfg, workers=2, port=plain, work_dir=str(tmp_path_factory.mktemp("edge")))
    p.plain, p.secure = plain, secure
    yield p
    p.stop()


@pytest.mark.parametrize("method, status", [("GET", 301), ("HEAD", 301), ("POST", 308), ("DELETE", 308)])
def test_redirect_http_to_https(edge_redirect, method, status):
    r = requests.request(method, f"http://127.0.0.1:{edge_redirect.plain}/a/b?x=1", allow_redirects=False,
                         timeout=10)
    assert r.status_code == status
    assert r.headers["Location"] == f"https://127.0.0.1:{edge_redirect.secure}/a/b?x=1"


def test_redirect_leaves_the_acme_challenge_on_http_and_https_unredirected(edge_redirect, pki):
    r = requests.get(f"http://127.0.0.1:{edge_redirect.plain}/.well-known/acme-challenge/tok", allow_redirects=False,
                     timeout=10)
    assert r.status_code == 200 and r.text == "challenge"
    s = requests.get(f"https://127.0.0.1:{edge_redirect.secure}/echo", allow_redirects=False, timeout=10,
                     verify=pki.ca_pem)
    assert s.status_code == 200 and _forwarded_proto(s.json()) == ["https"]
    # following the redirect lands on the HTTPS listener
    f = requests.get(f"http://127.0.0.1:{edge_redirect.plain}/echo", timeout=10, verify=pki.ca_pem)
    assert f.status_code == 200 and f.url.startswith("https://") and _forwarded_proto(f.json()) == ["https"]


# --------------------------------------------------------------------------- HTTP/2 streams run concurrently


def _h2_connect(port: int, ca_pem: str):
    import h2.config
    import h2.connection

    ctx = ssl.create_default_context(cafile=ca_pem)
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname="exact.test")
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _h2_pump(sock, conn, until, results: dict, deadline_s: float = 20.0) -> None:
    """Read frames until ``until(results)`` holds: results[sid] = {"status", "data", "ended"}."""
    deadline = time.monotonic() + deadline_s
    while not until(results):
        assert time.monotonic() < deadline, f"HTTP/2 exchange did not complete: {results}"
        data = sock.recv(65536)
        assert data, "edge closed the connection"
        _h2_take(sock, conn, data, results)


def _h2_take(sock, conn, data: bytes, results: dict) -> None:
    import h2.events

    for ev in conn.receive_data(data):
        sid = getattr(ev, "stream_id", None)
        r = results.setdefault(sid, {"status": None, "data": b"", "ended": False})
        if isinstance(ev, h2.events.ResponseReceived):
            r["status"] = int(dict(ev.headers)[":status"])
        elif isinstance(ev, h2.events.DataReceived):
            r["data"] += ev.data
            conn.acknowledge_received_data(ev.flow_controlled_length, sid)
        elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
            r["ended"] = True
    pending = conn.data_to_send()
    if pending:
        sock.sendall(pending)


def test_h2_stream_is_answered_while_another_waits_for_its_request_body(edge_tls, pki):
    # Stream 1 is an upload whose body the client holds back; stream 3 must be answered
    # meanwhile. Served one stream at a time (gunicorn's own loop), stream 3 would wait
    # for stream 1's body, which never comes until stream 3 is answered.
    sock, conn = _h2_connect(edge_tls.secure, pki.ca_pem)
    try:
        hdrs = [(":scheme", "https"), (":authority", "exact.test")]
        conn.send_headers(1, [(":method", "POST"), (":path", "/echo"), *hdrs, ("content-length", "10")])
        conn.send_data(1, b"12345")
        conn.send_headers(3, [(":method", "GET"), (":path", "/bytes/300000"), *hdrs], end_stream=True)
        sock.sendall(conn.data_to_send())
        results: dict = {}
        _h2_pump(sock, conn, lambda r: r.get(3, {}).get("ended"), results)
        assert results[3]["status"] == 200 and results[3]["data"] == pattern(300000)  # beyond the 64 KiB window
        assert not results.get(1, {}).get("ended")
        conn.send_data(1, b"67890", end_stream=True)
        sock.sendall(conn.data_to_send())
        _h2_pump(sock, conn, lambda r: r.get(1, {}).get("ended"), results)
        echo = json.loads(results[1]["data"])
        assert results[1]["status"] == 200 and echo["body_length"] == 10
    finally:
        sock.close()


def test_h2_concurrent_uploads_arrive_whole(edge_tls, pki):
    import hashlib

    sock, conn = _h2_connect(edge_tls.secure, pki.ca_pem)
    bodies = {1: bytes(range(256)) * 800, 3: b"x" * 150_000, 5: b"y" * 10}
    try:
        for sid, body in bodies.items():
            conn.send_headers(sid, [(":method", "POST"), (":path", "/echo"), (":scheme", "https"),
                                    (":authority", "exact.test"), ("content-length", str(len(body)))])
        sock.sendall(conn.data_to_send())
        results: dict = {}
        left = dict(bodies)
        deadline = time.monotonic() + 30
        while left:  # send as the window allows, interleaving the streams
            assert time.monotonic() < deadline, "uploads stalled"
            for sid in list(left):
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window > 0:
                    chunk, left[sid] = left[sid][:window], left[sid][window:]
                    conn.send_data(sid, chunk, end_stream=not left[sid])
                    if not left[sid]:
                        del left[sid]
            sock.sendall(conn.data_to_send())
            if left:  # wait for WINDOW_UPDATEs (edge credits the window as it forwards the body)
                sock.settimeout(0.2)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    data = None
                finally:
                    sock.settimeout(20)
                if data is not None:
                    assert data, "edge closed the connection"
                    _h2_take(sock, conn, data, results)
        _h2_pump(sock, conn, lambda r: all(r.get(s, {}).get("ended") for s in bodies), results)
        for sid, body in bodies.items():
            echo = json.loads(results[sid]["data"])
            assert echo["body_length"] == len(body) and echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    finally:
        sock.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_sessions_resume_across_workers(edge_tls, pki, version):
    # The contexts (and their ticket keys) are built in the master: a ticket issued by one
    # worker resumes on the other. With a key per worker about half would not resume.
    ctx = ssl.create_default_context(cafile=pki.ca_pem)
    ctx.maximum_version = version
    session, reused, tries = None, 0, 12
    for i in range(tries + 1):
        with socket.create_connection(("127.0.0.1", edge_tls.secure), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="exact.test", session=session) as s:
                s.sendall(b"GET /secure HTTP/1.1\r\nHost: exact.test\r\nConnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
                reused += bool(i) and s.session_reused
                session = s.session
    assert reused == tries


def test_on_connect_refusal_applies_to_http2_connections_too(origin, pki, edge_factory, tmp_path):
    from tests.integration.test_plugins import DENY_ON_CONNECT, write_plugins

    d = write_plugins(tmp_path / "p", {"gate.py": DENY_ON_CONNECT})
    plain, secure = free_port(), free_port()
    cfg = _config(origin, plain, secure, [_entry(pki.default)])
    edge_factory({**cfg, "plugin_dirs": [str(d)], "plugins": {"gate": {}}}, port=plain)
    requests.get(f"{origin.url}/stats/reset", timeout=10)
    assert requests.get(f"https://127.0.0.1:{secure}/echo", timeout=10, verify=pki.ca_pem).status_code == 403
    refused = h2_concurrent(secure, ["/echo"], server_name="default.test", cafile=pki.ca_pem)
    assert refused[0].status is None  # closed without serving the stream
    assert requests.get(f"{origin.url}/stats", timeout=10).json()["requests"] == 1  # the backend saw none


def test_days_to_expiry_gauge_from_one_worker(origin, pki, edge_factory, tmp_path):
    import datetime
    import re

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.2)
    plain, secure = free_port(), free_port()
    cfg = _config(origin, plain, secure, [_entry(pki.exact), _entry(pki.wild)])
    cfg["metrics"] = {"statsd": f"127.0.0.1:{listener.getsockname()[1]}", "prefix": "edgetest"}
    e = edge_factory(cfg, port=plain)
    gauge = re.compile(r"edgetest\.tls\.cert\.(exact_test|wildcard_wild_test)\.days_left:(-?\d+(?:\.\d+)?)\|g")
    seen: list[tuple[str, float]] = []
    deadline = time.monotonic() + 30
    quiet_until = None
    # every worker has booted (start_edge waits for it) and tried to report; read until both
    # gauges came and then one more second, to see that a second worker did not send them too
    while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
        try:
            lines = listener.recv(65536).decode().split("\n")
        except socket.timeout:
            continue
        seen += [(m.group(1), float(m.group(2))) for m in map(gauge.fullmatch, lines) if m]
        if quiet_until is None and {n for n, _ in seen} == {"exact_test", "wildcard_wild_test"}:
            quiet_until = time.monotonic() + 1.0
    listener.close()
    assert sorted(n for n, _ in seen) == ["exact_test", "wildcard_wild_test"], (seen, e.log()[-2000:])
    now = datetime.datetime.now(datetime.timezone.utc)
    expected = int((pki.exact.not_after - now).total_seconds() // 86400)
    assert all(expected - 1 <= days <= expected for _, days in seen)


def test_idle_h2_connection_gets_goaway_on_reload(origin, pki, edge_factory):
    import h2.events

    plain, secure = free_port(), free_port()
    e = edge_factory(_config(origin, plain, secure, [_entry(pki.exact)]), port=plain)
    sock, conn = _h2_connect(secure, pki.ca_pem)
    try:
        conn.send_headers(1, [(":method", "GET"), (":path", "/bytes/10"), (":scheme", "https"),
                              (":authority", "exact.test")], end_stream=True)
        sock.sendall(conn.data_to_send())
        results: dict = {}
        _h2_pump(sock, conn, lambda r: r.get(1, {}).get("ended"), results)
        e.reload()  # the connection is idle: the stopping worker closes it with GOAWAY (last stream 1)
        goaway = None
        deadline = time.monotonic() + 30
        while goaway is None and time.monotonic() < deadline:
            data = sock.recv(65536)
            assert data, "closed without GOAWAY"
            goaway = next((ev for ev in conn.receive_data(data) if isinstance(ev, h2.events.ConnectionTerminated)),
                          None)
        assert goaway is not None and goaway.error_code == 0 and goaway.last_stream_id == 1
    finally:
        sock.close()


def test_no_redirect_for_a_trusted_proxy_that_terminated_tls(edge_redirect):
    r = requests.get(f"http://127.0.0.1:{edge_redirect.plain}/echo", headers={"X-Forwarded-Proto": "https"},
                     allow_redirects=False, timeout=10)
    assert r.status_code == 200 and _forwarded_proto(r.json()) == ["https"]


def test_a_trickled_client_hello_is_cut_at_the_handshake_timeout(origin, pki, edge_factory):
    """server.header_timeout bounds the whole TLS handshake, not each read: a client sending
    its ClientHello one byte every 0.4 s (each byte well inside the 1 s timeout) is closed,
    while a normal client on the same listener is served meanwhile."""
    plain, secure = free_port(), free_port()
    cfg = _config(origin, plain, secure, [_entry(pki.default)])
    cfg["server"]["header_timeout"] = "1s"
    edge_factory(cfg, workers=1, port=plain)
    ctx = ssl.create_default_context(cafile=pki.ca_pem)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello_maker = ctx.wrap_bio(incoming, outgoing, server_hostname="default.test")
    with pytest.raises(ssl.SSLWantReadError):
        hello_maker.do_handshake()
    hello = outgoing.read()
    bound_s = 10 * 1.0  # ten header timeouts: generous for a loaded machine, far below the trickle's length
    assert len(hello) * 0.4 > 2 * bound_s  # the trickle would outlast the bound many times over
    served = False
    closed_after = None
    with socket.create_connection(("127.0.0.1", secure), timeout=10) as s:
        s.settimeout(0.05)
        started = time.monotonic()
        for i, byte in enumerate(hello[:-1]):
            try:
                if s.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except socket.timeout:
                pass
            except OSError:
                closed_after = time.monotonic() - started
                break
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            if i == 1 and not served:
                r = requests.get(f"https://127.0.0.1:{secure}/", verify=pki.ca_pem, timeout=10)
                served = r.status_code == 200
            if time.monotonic() - started > bound_s:
                break
            time.sleep(0.4)
    assert served
    assert closed_after is not None, f"still open after {bound_s}s with header_timeout 1s"
