"""TLS to backends (issue 13 item 4), against real TLS origins (scripts/origin.py --certfile) and a test CA.

One edge (two workers) fronts several pools that reach the same TLS origins with different
settings; each route shows one behaviour: verified against the test CA, a wrong name, an
unknown CA, the server_name override, mutual TLS with and without a client certificate,
verify: false, a handshake that never completes, and pooled TLS connections being reused.
"""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
import requests

from edge.launch import free_port, start_edge, start_origin
from tests.integration.conftest import until
from tests.integration.testca import TestCA

NAME = "backend.test"  # the only name in the origins' certificates: 127.0.0.1 is not one


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = TestCA(d, "backend CA")
    client_ca = TestCA(d, "client CA")
    return {
        "ca": ca,
        "server": ca.issue("server", (NAME,)),
        "client": client_ca.issue("client", ("edge-client",), client=True),
        "client_ca": client_ca,
    }


@pytest.fixture(scope="module")
def origins(pki, tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("origins"))
    cert, key = pki["server"]
    tls = start_origin("tls", log_dir=logs, args=("--certfile", str(cert), "--keyfile", str(key)))
    mtls = start_origin("mtls", log_dir=logs, args=("--certfile", str(cert), "--keyfile", str(key),
                                                    "--client-ca", str(pki["client_ca"].ca_path)))
    # A backend that accepts TCP (the kernel's backlog) and never answers the ClientHello.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    yield {"tls": tls, "mtls": mtls, "silent": silent.getsockname()[1]}
    tls.stop()
    mtls.stop()
    silent.close()


@pytest.fixture(scope="module")
def statsd():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.2)
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def edge(pki, origins, statsd, tmp_path_factory):
    ca = str(pki["ca"].ca_path)
    client_cert, client_key = (str(p) for p in pki["client"])
    tls_url = f"https://127.0.0.1:{origins['tls'].port}"
    mtls_url = f"https://127.0.0.1:{origins['mtls'].port}"
    pools = {
        "good": {"servers": [tls_url], "tls": {"ca_file": ca, "server_name": NAME}},
        "wrongname": {"servers": [tls_url], "tls": {"ca_file": ca}},
        "othername": {"servers": [tls_url], "tls": {"ca_file": ca, "server_name": "other.test"}},
        "unknownca": {"servers": [tls_url], "tls": {"server_name": NAME}},
        "mtls": {"servers": [mtls_url], "tls": {"ca_file": ca, "server_name": NAME,
                                                 "client_cert": client_cert, "client_key": client_key}},
        "mtlsnocert": {"servers": [mtls_url], "tls": {"ca_file": ca, "server_name": NAME}},
        "insecure": {"servers": [{"host": "127.0.0.1", "port": origins["tls"].port, "tls": True}],
                     "tls": {"verify": False}},
        "silent": {"servers": [f"https://127.0.0.1:{origins['silent']}"], "retries": 0,
                   "timeouts": {"connect": "500ms"}, "tls": {"ca_file": ca, "server_name": NAME}},
    }
    cfg = {
        "upstreams": pools,
        "routes": [{"match": {"path": f"/{name}"}, "upstream": name, "strip_prefix": True} for name in pools],
        "metrics": {"statsd": f"127.0.0.1:{statsd.getsockname()[1]}", "prefix": "t"},
    }
    e = start_edge(cfg, workers=2, work_dir=str(tmp_path_factory.mktemp("edge")))
    yield e
    e.stop()


def _metrics(listener, want: str, timeout_s: float = 30) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(g.startswith(want) for g in got):
        try:
            got.extend(listener.recv(65536).decode().split("\n"))
        except socket.timeout:
            pass
    return got


def test_verified_backend_streams_a_large_body(edge):
    size = 3 * 1024 * 1024 + 17
    r = requests.get(f"{edge.url}/good/bytes/{size}", stream=True)
    assert r.status_code == 200
    digest, got = hashlib.sha256(), 0
    for chunk in r.iter_content(65536):
        digest.update(chunk)
        got += len(chunk)
    expected = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert got == size
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()


def test_echo_over_tls_shows_http11_alpn_and_the_forwarded_request(edge):
    r = requests.post(f"{edge.url}/good/echo", data=b"x" * 100000)
    assert r.status_code == 200
    body = r.json()
    assert body["body_length"] == 100000
    assert body["tls"]["alpn"] == "http/1.1"
    assert body["tls"]["version"] in ("TLSv1.2", "TLSv1.3")


def test_pooled_tls_connections_are_reused(edge):
    with requests.Session() as s:  # one client connection: one worker, one backend pool
        ids = [s.get(f"{edge.url}/good/echo").json()["connection"] for _ in range(5)]
    assert len(set(ids)) == 1, ids


@pytest.mark.parametrize("route, reason", [
    ("wrongname", "IP address mismatch"),  # the certificate names backend.test, not 127.0.0.1
    ("othername", "Hostname mismatch"),    # server_name other.test: not in the certificate either
    ("unknownca", "unable to get local issuer certificate"),  # the system store does not know the test CA
])
def test_failed_verification_is_502_with_a_logged_reason(edge, statsd, route, reason):
    r = requests.get(f"{edge.url}/{route}/echo")
    assert r.status_code == 502
    line = next((ln for ln in edge.log().splitlines() if f"upstream {route}:" in ln and "certificate verification failed" in ln), None)
    assert line is not None, edge.log()[-3000:]
    assert reason in line and "127.0.0.1" in line
    got = _metrics(statsd, f"t.upstream.{route}.tls_error")
    assert any(g.startswith(f"t.upstream.{route}.tls_error:") for g in got), got


def test_mutual_tls_with_a_client_certificate(edge):
    r = requests.get(f"{edge.url}/mtls/echo")
    assert r.status_code == 200
    assert r.json()["tls"]["client_cn"] == "edge-client"


def test_mutual_tls_without_a_client_certificate_is_502(edge, origins, statsd):
    r = requests.get(f"{edge.url}/mtlsnocert/echo")
    assert r.status_code == 502
    # TLS 1.3: the refusal comes as an alert on the first read, and is still a TLS failure
    assert "the server refused edge's client certificate" in edge.log()
    got = _metrics(statsd, "t.upstream.mtlsnocert.tls_error")
    assert any(g.startswith("t.upstream.mtlsnocert.tls_error:") for g in got), got
    until(lambda: "TLS with" in origins["mtls"].log())  # the origin refused the handshake (its own line)


def test_verify_false_connects_and_is_logged_once_per_worker(edge):
    def warnings() -> list[str]:
        return [ln for ln in edge.log().splitlines() if "upstream insecure: TLS verification is off" in ln]

    until(lambda: len(warnings()) >= 2)  # each worker builds its pools right after booting
    for _ in range(4):
        assert requests.get(f"{edge.url}/insecure/echo").status_code == 200
    assert len(warnings()) == 2, warnings()  # one per worker, at start, not per request
    assert "WARNING" in warnings()[0]


def test_handshake_timeout_is_a_connect_timeout(edge):
    r = requests.get(f"{edge.url}/silent/echo")
    assert r.status_code == 504
    assert "TLS handshake with 127.0.0.1:" in edge.log()


def test_stale_pooled_tls_connection_is_replaced(edge, pki, tmp_path):
    """The backend goes away between two requests on one pooled TLS connection: a POST (which
    peeks first) and a GET (retried after the fact) both reach the restarted backend."""
    cert, key = pki["server"]
    origin = start_origin("restart", log_dir=str(tmp_path), args=("--certfile", str(cert), "--keyfile", str(key)))
    cfg = {"upstreams": {"app": {"servers": [f"https://127.0.0.1:{origin.port}"],
                                 "tls": {"ca_file": str(pki["ca"].ca_path), "server_name": NAME}}},
           "routes": [{"match": {"path": "/"}, "upstream": "app"}]}
    (tmp_path / "edge").mkdir()
    e = start_edge(cfg, workers=1, work_dir=str(tmp_path / "edge"))
    try:
        with requests.Session() as s:
            assert s.get(f"{e.url}/echo").status_code == 200
            origin.stop()
            origin = start_origin("restart", port=origin.port, log_dir=str(tmp_path),
                                  args=("--certfile", str(cert), "--keyfile", str(key)))
            assert s.post(f"{e.url}/echo", data=b"body").json()["body_length"] == 4
            origin.stop()
            origin = start_origin("restart", port=origin.port, log_dir=str(tmp_path),
                                  args=("--certfile", str(cert), "--keyfile", str(key)))
            assert s.get(f"{e.url}/echo").status_code == 200
    finally:
        e.stop()
        origin.stop()


def test_websocket_through_a_tls_backend(edge):
    """A 101 hands the backend's TLS socket to the tunnel: frames both ways stay encrypted to the origin."""
    import websocket

    ws = websocket.create_connection(f"ws://127.0.0.1:{edge.port}/good/ws", timeout=5)
    try:
        for message in ("hello", "x" * 100000):
            ws.send(message)
            assert ws.recv() == message
    finally:
        ws.close()


def test_active_probes_speak_tls_to_tls_servers(pki, origins, edge_factory):
    """Probes use the pool's TLS (context, SNI, verification name): a verified TLS pool with
    active checks stays up and serves, and a server whose certificate does not carry the
    name checked is marked down by the probes, with the reason in the log."""
    ca = str(pki["ca"].ca_path)
    tls_url = f"https://127.0.0.1:{origins['tls'].port}"
    active = {"path": "/echo", "interval": "200ms", "timeout": "1s", "rise": 2, "fall": 2}
    pools = {
        "checked": {"servers": [tls_url], "tls": {"ca_file": ca, "server_name": NAME}, "health": {"active": active}},
        "checkedwrong": {"servers": [tls_url], "tls": {"ca_file": ca, "server_name": "other.test"},
                         "health": {"active": active}},
    }
    cfg = {"upstreams": pools,
           "routes": [{"match": {"path": f"/{name}"}, "upstream": name, "strip_prefix": True} for name in pools]}
    edge = edge_factory(cfg, workers=2)
    server = f"127.0.0.1:{origins['tls'].port}"

    def down_line(pool):
        return next((ln for ln in edge.log().splitlines() if f"upstream {pool}: {server} is down" in ln), None)

    until(lambda: down_line("checkedwrong") is not None)
    assert "Hostname mismatch" in down_line("checkedwrong"), down_line("checkedwrong")
    # both pools are probed at the same interval: by now the good one had its fall probes too,
    # and then some more (a few intervals of margin)
    time.sleep(4 * 0.2 * active["fall"])
    assert down_line("checked") is None, edge.log()[-3000:]
    for _ in range(5):
        r = requests.get(f"{edge.url}/checked/echo", timeout=10)
        assert r.status_code == 200, r.text
