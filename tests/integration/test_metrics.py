"""Metrics reach a real UDP statsd listener; a dead statsd never fails a request."""

from __future__ import annotations

import socket
import time

import requests

from edge.launch import free_port
from tests.integration.conftest import simple_config


def test_route_counters_and_latency_reach_statsd(origin, edge_factory):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.2)
    cfg = simple_config(origin, name="web")
    cfg["metrics"] = {"statsd": f"127.0.0.1:{listener.getsockname()[1]}", "prefix": "edgetest"}
    e = edge_factory(cfg, workers=1)
    for path in ("/", "/status/404", "/status/503"):
        requests.get(f"{e.url}{path}")
    def complete() -> bool:
        return (all(f"edgetest.route.web.requests.{c}:1|c" in got for c in ("2xx", "4xx", "5xx"))
                and any(g.startswith("edgetest.route.web.latency:") for g in got)
                and any(g.startswith("edgetest.gunicorn.") for g in got))

    # until every expected line arrived (datagrams of a busy worker come when they come,
    # issue 8); the bound only matters if one never does
    got: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not complete():
        try:
            got.extend(listener.recv(65536).decode().split("\n"))
        except socket.timeout:
            pass
    listener.close()
    assert "edgetest.route.web.requests.2xx:1|c" in got
    assert "edgetest.route.web.requests.4xx:1|c" in got
    assert "edgetest.route.web.requests.5xx:1|c" in got
    assert any(g.startswith("edgetest.route.web.latency:") and g.endswith("|ms") for g in got)
    assert any(g.startswith("edgetest.gunicorn.") for g in got)  # gunicorn's own metrics, same host and prefix


def test_unreachable_statsd_does_not_affect_requests(origin, edge_factory):
    cfg = simple_config(origin)
    cfg["metrics"] = {"statsd": f"127.0.0.1:{free_port()}"}  # nothing listens: ICMP port unreachable
    e = edge_factory(cfg, workers=1)
    with requests.Session() as s:
        for _ in range(50):
            assert s.get(f"{e.url}/").status_code == 200


def test_json_access_log_line_per_request(origin, edge_factory, tmp_path):
    import json

    log_path = tmp_path / "access.log"
    cfg = simple_config(origin, name="web")
    cfg["server"] = {"accesslog": str(log_path)}
    e = edge_factory(cfg, workers=1)
    requests.get(f"{e.url}/echo?x=1", headers={"X-Forwarded-For": "203.0.113.1"})
    requests.post(f"{e.url}/status/503", data=b"z" * 1000)
    deadline = time.monotonic() + 30  # until both lines are there; a bound, not an expectation
    lines = []
    while time.monotonic() < deadline and len(lines) < 2:
        lines = [entry for entry in map(json.loads, log_path.read_text().splitlines()) if entry["status"] != 400]  # not the start-up probe
        time.sleep(0.05)
    first, second = lines[:2]
    assert first["method"] == "GET" and first["path"] == "/echo?x=1" and first["status"] == 200
    assert first["client"] == "127.0.0.1"  # not a trusted proxy: its X-Forwarded-For is not believed
    assert first["route"] == "web" and first["upstream"] == f"127.0.0.1:{origin.port}"
    assert first["bytes"] > 0 and first["duration_ms"] >= first["upstream_ms"] >= 0
    assert second["status"] == 503 and second["method"] == "POST"
    assert second["bytes_received"] == 1000 and first["bytes_received"] == 0
