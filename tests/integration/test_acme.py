"""Automatic certificates (issue 13 item 6) end to end against Pebble, the ACME test server.

Pebble validates HTTP-01 for real: it resolves the names through pebble-challtestsrv
(everything is 127.0.0.1) and fetches ``/.well-known/acme-challenge/<token>`` from edge's
plain-HTTP port, which is why every edge here binds the one port Pebble was given.
Pebble issues certificates valid for VALIDITY_S, so renewal is made due by the config
(``renew_before`` close to the validity) instead of by waiting.
"""

from __future__ import annotations

import os
import re
import ssl
import socket
import stat
import time

import pytest
import requests

from edge.acme import cert_facts, set_id
from edge.launch import free_port, start_edge
from tests.integration import pebble as pebble_mod
from tests.integration.conftest import until

pytestmark = pytest.mark.skipif(not pebble_mod.available(), reason="pebble is not installed (scripts/install-system-deps)")

VALIDITY_S = 300
NAMES = ["app.edge.test", "www.edge.test"]


@pytest.fixture(scope="module")
def http_port():
    return free_port()


@pytest.fixture(scope="module")
def pebble(tmp_path_factory, http_port):
    p = pebble_mod.start_pebble(tmp_path_factory.mktemp("pebble"), http_port, validity_s=VALIDITY_S)
    yield p
    p.stop()


def acme_config(pebble, storage, origin, http_port=None, https_port=None, **acme):
    """tls.acme on a plain-HTTP listener (``http_port``: where Pebble validates HTTP-01, or a free
    port) next to an HTTPS listener (``https_port``) that serves what ACME obtained."""
    return {
        "server": {"listeners": [{"bind": f"127.0.0.1:{http_port or free_port()}"},
                                 {"bind": f"127.0.0.1:{https_port or free_port()}", "tls": True}]},
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [{"match": {"path": "/"}, "upstream": "app"}],
        "tls": {"acme": {"directory": pebble.directory, "accept_terms": True, "email": "ops@edge.test",
                         "names": NAMES, "storage_dir": str(storage), "ca_bundle": str(pebble.ca_bundle),
                         "check_interval": "1s", **acme}},
    }


def cert_path(storage, pebble) -> "os.PathLike":
    return storage / set_id(frozenset(NAMES), pebble.directory) / "cert.pem"


def orders_placed(edge) -> int:
    return edge.log().count("acme: ordering a certificate")


def served_certificate(port: int, name: str, roots: bytes) -> dict:
    """Handshake with SNI ``name``, verifying against Pebble's root: the certificate served."""
    ctx = ssl.create_default_context(cadata=roots.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=name) as s:
        return s.getpeercert()


def test_certificate_obtained_once_with_two_workers_and_served(pebble, http_port, origin, tmp_path, edge_factory):
    storage = tmp_path / "acme"
    orders_before = pebble.log().count("POST /order-plz")
    https_port = free_port()
    e = edge_factory(acme_config(pebble, storage, origin, http_port, https_port, renew_before="30s"), workers=2,
                     port=http_port)
    until(lambda: cert_path(storage, pebble).exists(), timeout_s=60)
    facts = cert_facts(cert_path(storage, pebble).read_bytes())
    assert facts.names == frozenset(NAMES)
    # both workers load it (the one that ordered, and the other at its next sync)
    until(lambda: e.log().count("acme: loaded the certificate") >= 2, timeout_s=30)
    time.sleep(3)  # three more checks per worker: none orders again
    assert orders_placed(e) == 1, e.log()
    assert pebble.log().count("POST /order-plz") - orders_before == 1
    assert "acme: obtained a certificate for app.edge.test, www.edge.test" in e.log()
    # keys are private; the challenge path is edge's own, before routing
    key = cert_path(storage, pebble).parent / "key.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in storage.glob("account-*.key"))
    assert requests.get(f"{e.url}/.well-known/acme-challenge/unknownToken").status_code == 404
    assert requests.get(f"{e.url}/.well-known/acme-challenge/bad%20token").status_code == 404
    assert requests.get(f"{e.url}/echo").status_code == 200

    # Served by the same edge, without a restart: its HTTPS listener presents the ACME certificate
    # for both names (it served a self-signed stand-in before), chaining to Pebble's root, from
    # every worker (several handshakes).
    roots = pebble.roots_pem()
    for name in NAMES * 3:
        peer = served_certificate(https_port, name, roots)
        assert ("DNS", name) in peer["subjectAltName"]


def test_renewed_when_due_and_loaded_without_restart(pebble, http_port, origin, tmp_path, edge_factory):
    storage = tmp_path / "acme"
    # due 4 s after issue: the first certificate is renewed while edge runs
    # (retry_initial: a certificate found due already at issue, on a slow machine, is retried soon)
    https_port = free_port()
    e = edge_factory(acme_config(pebble, storage, origin, http_port, https_port, renew_before=f"{VALIDITY_S - 4}s",
                                 retry_initial="1s"), workers=2, port=http_port)
    until(lambda: cert_path(storage, pebble).exists(), timeout_s=60)
    first = cert_facts(cert_path(storage, pebble).read_bytes()).fingerprint
    until(lambda: cert_facts(cert_path(storage, pebble).read_bytes()).fingerprint != first, timeout_s=60)
    second = cert_facts(cert_path(storage, pebble).read_bytes())
    assert second.names == frozenset(NAMES)
    # every worker swapped in the new certificate (a log line per load), with no restart
    until(lambda: e.log().count("acme: loaded the certificate") >= 4, timeout_s=30)
    from cryptography import x509

    renewed = x509.load_pem_x509_certificates(cert_path(storage, pebble).read_bytes())[0].serial_number
    roots = pebble.roots_pem()
    until(lambda: all(int(served_certificate(https_port, NAMES[0], roots)["serialNumber"], 16) == renewed
                      for _ in range(3)), timeout_s=30)
    assert e.log().count("Booting worker") == 2
    # never two orders at once: each "ordering" line is followed by its "obtained" before the next
    events = re.findall(r"acme: (ordering|obtained) a certificate", e.log())
    assert events[:4] == ["ordering", "obtained", "ordering", "obtained"], events


def test_failed_orders_back_off(pebble, origin, tmp_path, edge_factory):
    """Without the CA bundle Pebble's HTTPS is not trusted: every order fails, and the waits double."""
    storage = tmp_path / "acme"
    port = free_port()
    cfg = acme_config(pebble, storage, origin, port, retry_initial="300ms", retry_max="1s")
    del cfg["tls"]["acme"]["ca_bundle"]
    e = edge_factory(cfg, workers=1, port=port)
    until(lambda: "failed (3 in a row" in e.log(), timeout_s=60)
    log = e.log()
    assert re.search(r"failed \(1 in a row; next try in 0s\)", log)   # 0.3 s, printed rounded
    assert "failed (2 in a row; next try in 1s)" in log
    assert "failed (3 in a row; next try in 1s)" in log                 # capped at retry_max
    assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log
    assert not cert_path(storage, pebble).exists()


def test_a_fleet_sharing_redis_orders_once_and_serves_the_same_certificate(pebble, http_port, origin, tmp_path,
                                                                           edge_factory, redis_server):
    """Two nodes (two workers each) with their own disks and one Redis: one order in the fleet, whichever
    node places it, since Pebble's validation request reaches node A and node A answers any node's token."""
    orders_before = pebble.log().count("POST /order-plz")
    store = {"backend": "redis", "url": redis_server.url, "key_prefix": f"acme-fleet-{os.getpid()}:"}
    nodes = []
    for i, port in enumerate((http_port, free_port())):
        cfg = acme_config(pebble, tmp_path / f"node{i}", origin, port, renew_before="30s")
        cfg["store"] = store
        nodes.append(edge_factory(cfg, workers=2, port=port))
    paths = [cert_path(tmp_path / f"node{i}", pebble) for i in range(2)]
    until(lambda: all(p.exists() for p in paths), timeout_s=60)
    until(lambda: paths[0].read_bytes() == paths[1].read_bytes(), timeout_s=30)
    time.sleep(3)  # three more checks per worker on both nodes: nobody orders again
    assert sum(orders_placed(n) for n in nodes) == 1, [n.log()[-2000:] for n in nodes]
    assert pebble.log().count("POST /order-plz") - orders_before == 1
    assert cert_facts(paths[0].read_bytes()).names == frozenset(NAMES)
