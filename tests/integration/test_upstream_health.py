"""Upstream health end to end (issue 9): real edge (gunicorn workers), three real origins
(tests/fixtures/health_origin.py, which logs each request with its arrival time), the node's
store read as ``python -m edge status`` reads it.

Timings are judged from what was observed (probes logged by a surviving origin, log
lines, the store's own timestamps), never against wall-clock bounds of a busy machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import requests

from edge.__main__ import main as edge_main
from edge.config import load_config
from edge.launch import REPO
from edge.store import build_store
from edge.upstream import shared_state as shared
from tests.fixtures.health_origin import records, start_health_origin
from tests.integration.conftest import until

INTERVAL = 0.2
ACTIVE = {"path": "/health", "interval": f"{int(INTERVAL * 1000)}ms", "timeout": "300ms", "rise": 2, "fall": 2, "jitter": 0.1}


def config(origins, active=None, passive=None, refresh="100ms"):
    health = {"refresh": refresh}
    if active is not None:
        health["active"] = active
    if passive is not None:
        health["passive"] = passive
    return {
        "upstreams": {"app": {
            "servers": [f"127.0.0.1:{o.port}" for o in origins],
            # these tests count who got what: an even spread, not the latency-driven default
            "balance": "round_robin",
            "timeouts": {"connect": "1s", "read": "10s"},
            "retries": 2,
            "health": health,
        }},
        "routes": [{"match": {"path": "/"}, "upstream": "app"}],
    }


def start_origins(tmp_path, names="abc"):
    return [start_health_origin(n, str(tmp_path)) for n in names]


def stop_all(origins):
    for o in origins:
        o.stop()


def label(o) -> str:
    return f"127.0.0.1:{o.port}"


def probes(o, since=0.0, until_t=float("inf")):
    return [r for r in records(o) if r["path"] == "/health" and since <= r["t"] < until_t]


def traffic(o, since=0.0):
    return [r for r in records(o) if r["path"] != "/health" and r["t"] >= since]


def open_store(edge):
    return build_store(load_config(str(edge.config_path)).store)


def snapshot(store, origins):
    return shared.read_pools(store, {"app": tuple(label(o) for o in origins)})["app"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=str(REPO), capture_output=True, text=True, timeout=60)


class Load:
    """Idempotent GETs from ``threads`` clients until stopped (bounded by ``limit`` each)."""

    def __init__(self, port: int, threads: int = 2, limit: int = 20000, path: str = "/") -> None:
        self.url = f"http://127.0.0.1:{port}{path}"
        self.errors: list[str] = []
        self.ok = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(limit,), daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, limit: int) -> None:
        with requests.Session() as s:
            for _ in range(limit):
                if self._stop.is_set():
                    return
                try:
                    r = s.get(self.url, timeout=30)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.errors.append(f"{r.status_code} {r.text[:80]}")
                except requests.RequestException as e:
                    self.errors.append(repr(e))
                time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def test_a_killed_origin_is_marked_down_without_client_errors_and_returns_after_rise_probes(edge_factory, tmp_path):
    origins = start_origins(tmp_path)
    a, b, c = origins
    try:
        edge = edge_factory(config(origins, active=ACTIVE))
        store = open_store(edge)
        until(lambda: all(len(probes(o)) >= 2 for o in origins))
        load = Load(edge.port)
        until(lambda: all(traffic(o) for o in origins))
        t_kill = time.time()
        b.stop()
        until(lambda: snapshot(store, origins).active.get(label(b), {}).get("state") == "unhealthy")
        down = snapshot(store, origins).active[label(b)]
        # Marked down within `fall` probe periods as this machine ran them: the survivors kept
        # being probed by the same prober meanwhile; at most fall + 1 of their probes fit
        # between the kill and the verdict (one may have been under way at the kill).
        seen = [len(probes(o, t_kill, down["since"])) for o in (a, c)]
        assert min(seen) <= ACTIVE["fall"] + 1, (seen, down)
        status = cli("status", "--config", str(edge.config_path))
        assert status.returncode == 0, status.stderr
        line = next(ln for ln in status.stdout.splitlines() if label(b) in ln)
        assert " down " in line and ("probe:" in line or "Connection refused" in line), status.stdout
        # No longer picked: once every worker has read the verdict (a few refresh periods, counted
        # in survivor probes), connect failures to b stop while the load goes on.
        settle = time.time()
        until(lambda: len(probes(a, settle)) >= 3)
        failures_then = edge.log().count(f"connect to {label(b)}")
        ok_then = load.ok
        until(lambda: load.ok >= ok_then + 100)
        assert edge.log().count(f"connect to {label(b)}") == failures_then
        # Restarted: back in rotation only after `rise` passing probes.
        t_restart = time.time()
        b2 = start_health_origin("b", str(tmp_path), port=b.port)
        origins[1] = b2
        until(lambda: traffic(b2, t_restart))
        first_request = traffic(b2, t_restart)[0]["t"]
        passed_before = len(probes(b2, t_restart, first_request))
        assert passed_before >= ACTIVE["rise"], passed_before
        # ... and soon after it: the verdict reaches every worker within about one period
        assert passed_before <= ACTIVE["rise"] + 3, passed_before
        assert snapshot(store, origins).active[label(b2)]["state"] == "healthy"
        load.stop()
        assert load.errors == [], load.errors[:5]
        assert load.ok > 100
        store.close()
    finally:
        stop_all(origins)


def probe_rate(edge_factory, tmp_path, workers: int, interval: float = 0.1, window_s: float = 2.5) -> float:
    """Probes per interval each origin received over ``window_s``, with ``workers`` workers."""
    origins = start_origins(tmp_path / f"w{workers}")
    try:
        active = dict(ACTIVE, interval=f"{int(interval * 1000)}ms")
        edge = edge_factory(config(origins, active=active), workers=workers)
        until(lambda: all(len(probes(o)) >= 3 for o in origins))
        t0 = time.time()
        time.sleep(window_s)
        t1 = time.time()
        counts = [len(probes(o, t0, t1)) for o in origins]
        edge.stop()
        return max(counts) / ((t1 - t0) / interval)
    finally:
        stop_all(origins)


def test_probes_per_interval_do_not_grow_with_the_worker_count(edge_factory, tmp_path):
    (tmp_path / "w1").mkdir()
    (tmp_path / "w3").mkdir()
    one = probe_rate(edge_factory, tmp_path, workers=1)
    three = probe_rate(edge_factory, tmp_path, workers=3)
    # One prober per node: about one probe per interval either way (a delayed greenlet only
    # lowers it; jitter is ±10 %). Three probers would triple it.
    assert three <= 1.0 / (1 - 0.1) + 0.15, (one, three)
    assert three <= one * 1.5 + 0.1, (one, three)
    assert one > 0.3 and three > 0.3, (one, three)


def test_origin_answering_5xx_is_ejected_then_recovers_through_a_half_open_trial(edge_factory, tmp_path, capsys):
    origins = start_origins(tmp_path)
    a, b, c = origins
    try:
        passive = {"consecutive_failures": 3, "on_5xx": [500], "base_ejection": "1s", "max_ejection": "10s"}
        edge = edge_factory(config(origins, passive=passive))
        store = open_store(edge)
        requests.get(f"http://127.0.0.1:{b.port}/_control?status=500", timeout=5)
        s = requests.Session()
        statuses = []
        until(lambda: statuses.append(s.get(f"http://127.0.0.1:{edge.port}/", timeout=10).status_code)
              or snapshot(store, origins).ejections.get(label(b), {}).get("until", 0) > time.time(), interval_s=0.01)
        rec = snapshot(store, origins).ejections[label(b)]
        assert rec["count"] == 1 and rec["reason"] == "status 500 (on_5xx)", rec
        # in process (the ejection lasts 1 s: a fresh interpreter may start slower than that here)
        store.close()  # LMDB opens an environment once per process: the command opens its own
        assert edge_main(["status", "--config", str(edge.config_path)]) == 0
        store = open_store(edge)
        out = capsys.readouterr().out
        line = next(ln for ln in out.splitlines() if label(b) in ln)
        assert "ejected" in line and "status 500 (on_5xx)" in line, out
        # the 500s the client saw are b's own answers (no retry on a status in this branch); at most
        # consecutive_failures per worker before the ejection took
        assert statuses.count(500) <= 3 * 2, statuses
        # while ejected (and still failing), b gets nothing but the half-open trials: one per worker
        # per ejection, and each failed trial ejects it again, for longer
        t_ej = time.time()
        for _ in range(60):
            assert s.get(f"http://127.0.0.1:{edge.port}/", timeout=10).status_code in (200, 500)
        until(lambda: snapshot(store, origins).ejections[label(b)]["count"] >= 2)
        got = traffic(b, t_ej)
        rec2 = snapshot(store, origins).ejections[label(b)]
        assert rec2["until"] - rec2["at"] >= 1.9, rec2        # doubled: 2 s
        assert len(got) <= 2 * rec2["count"], got              # only trials reached it
        # b answers 200 again: after the ejection, a trial succeeds and b is back in rotation
        requests.get(f"http://127.0.0.1:{b.port}/_control?status=200", timeout=5)
        t_fix = time.time()

        def back():
            assert s.get(f"http://127.0.0.1:{edge.port}/", timeout=10).status_code in (200, 500)
            return len(traffic(b, t_fix)) >= 5
        until(back, interval_s=0.02)
        rec3 = snapshot(store, origins).ejections[label(b)]
        assert rec3["until"] == 0, rec3
        for _ in range(30):
            assert s.get(f"http://127.0.0.1:{edge.port}/", timeout=10).status_code == 200
        store.close()
    finally:
        stop_all(origins)


def test_drain_lets_in_flight_requests_finish_and_sends_no_new_ones_and_undrain_restores(edge_factory, tmp_path):
    origins = start_origins(tmp_path)
    a, b, c = origins
    try:
        edge = edge_factory(config(origins))
        store = open_store(edge)
        # slow requests in flight on every server
        slow: list[int] = []
        threads = [threading.Thread(target=lambda: slow.append(
            requests.get(f"http://127.0.0.1:{edge.port}/slow?s=2", timeout=30).status_code)) for _ in range(9)]
        for t in threads:
            t.start()
        until(lambda: sum(r["path"].startswith("/slow") for o in origins for r in records(o)) == 9, interval_s=0.02)
        assert any(r["path"].startswith("/slow") for r in records(b))
        labels = {"app": tuple(label(o) for o in origins)}

        def inflight_on_b():
            return next(r.inflight for r in shared.server_statuses(store, labels, time.time()) if r.server == label(b))
        until(lambda: inflight_on_b() >= 1, interval_s=0.02)   # the workers' rows show it in flight
        in_flight_on_b = sum(r["path"].startswith("/slow") for r in records(b))
        out = cli("drain", "app", label(b), "--config", str(edge.config_path))
        assert out.returncode == 0 and "drained" in out.stdout, out
        t_drain = time.time()
        assert label(b) in snapshot(store, origins).drained
        status = cli("status", "--config", str(edge.config_path))
        line = next(ln for ln in status.stdout.splitlines() if label(b) in ln)
        assert "+drain" in line, status.stdout
        for t in threads:
            t.join(60)
        assert slow == [200] * 9                            # in-flight requests finished
        until(lambda: inflight_on_b() == 0, interval_s=0.02)
        assert sum(r["path"].startswith("/slow") for r in records(b)) == in_flight_on_b
        # every worker stops picking b within a refresh period (0.1 s; waited for as 5 of them)
        time.sleep(0.5)
        t_check = time.time()
        s = requests.Session()
        for _ in range(60):
            assert s.get(f"http://127.0.0.1:{edge.port}/", timeout=10).status_code == 200
        assert traffic(b, t_check) == []
        assert traffic(a, t_check) and traffic(c, t_check)
        assert all(r["t"] < t_drain + 0.5 or not r["path"] == "/" for r in traffic(b, t_drain))
        bad_pool = cli("drain", "nope", label(b), "--config", str(edge.config_path))
        assert bad_pool.returncode == 2 and "unknown pool 'nope'" in bad_pool.stderr
        bad_server = cli("undrain", "app", "127.0.0.1:1", "--config", str(edge.config_path))
        assert bad_server.returncode == 2 and "no server '127.0.0.1:1'" in bad_server.stderr
        out = cli("undrain", "app", label(b), "--config", str(edge.config_path))
        assert out.returncode == 0 and "in rotation" in out.stdout, out
        t_undrain = time.time()
        until(lambda: s.get(f"http://127.0.0.1:{edge.port}/", timeout=10).status_code == 200 and bool(traffic(b, t_undrain)),
              interval_s=0.02)
        store.close()
    finally:
        stop_all(origins)


def test_the_prober_lease_moves_to_another_worker_when_its_holder_dies(edge_factory, tmp_path):
    origins = start_origins(tmp_path, "a")
    try:
        edge = edge_factory(config(origins, active=ACTIVE))
        until(lambda: "probes the backends" in edge.log())
        line = next(ln for ln in edge.log().splitlines() if "probes the backends" in ln)
        holder = int(line.split("(")[1].split(")")[0].rsplit(":", 1)[1])
        assert holder in edge.worker_pids()
        os.kill(holder, signal.SIGKILL)
        t_kill = time.time()
        until(lambda: edge.log().count("probes the backends") >= 2)
        until(lambda: len(probes(origins[0], t_kill)) >= 3)
        got = [r["t"] for r in probes(origins[0], t_kill)]
        # probes resumed, one prober again: about one per interval after the takeover
        gaps = [y - x for x, y in zip(got, got[1:])]
        assert min(gaps) >= INTERVAL * 0.9 - 0.02, gaps
    finally:
        stop_all(origins)


def test_on_redis_one_prober_serves_the_fleet_and_a_store_outage_keeps_the_last_state(edge_factory, tmp_path, make_redis_server):
    redis = make_redis_server()
    origins = start_origins(tmp_path)
    a, b, c = origins
    try:
        cfg = config(origins, active=dict(ACTIVE, interval="100ms"))
        cfg["store"] = {"backend": "redis", "url": redis.url, "key_prefix": f"edge-health-{redis.port}:", "timeout": "100ms"}
        node1 = edge_factory(cfg)
        node2 = edge_factory(cfg)
        until(lambda: all(len(probes(o)) >= 3 for o in origins))
        # two nodes, four workers, one lease: about one probe per interval per origin
        t0 = time.time()
        time.sleep(2.0)
        t1 = time.time()
        rate = max(len(probes(o, t0, t1)) for o in origins) / ((t1 - t0) / 0.1)
        assert rate <= 1.0 / 0.9 + 0.15, rate
        assert (node1.log() + node2.log()).count("probes the backends") == 1
        # a drain through one node's configuration reaches the other node
        out = cli("drain", "app", label(b), "--config", str(node1.config_path))
        assert out.returncode == 0, out
        time.sleep(0.6)
        t_drained = time.time()
        s = requests.Session()
        for port in (node1.port, node2.port):
            for _ in range(30):
                assert s.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        assert traffic(b, t_drained) == []
        # redis goes away: the workers keep the last state (b stays drained), requests keep flowing
        redis.stop()
        status = cli("status", "--config", str(node1.config_path))
        assert status.returncode == 1 and "unavailable" in status.stderr, status
        until(lambda: node1.log().count("store unavailable, keeping the last known state") >= 2)
        t_down = time.time()
        for port in (node1.port, node2.port):
            for _ in range(30):
                assert s.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        assert traffic(b, t_down) == [] and traffic(a, t_down) and traffic(c, t_down)
        time.sleep(0.5)
        # logged once per change of availability, not once per attempt
        assert node1.log().count("store unavailable, keeping the last known state") == 2
    finally:
        stop_all(origins)


def test_probe_settings_host_status_body_and_timeout(edge_factory, tmp_path):
    origins = start_origins(tmp_path, "a")
    (o,) = origins
    try:
        base = dict(ACTIVE, interval="100ms", fall=1, rise=1)
        checks = {
            "good": dict(base, host="probe.example", expect_body="ok", expect_status=[200]),
            "body": dict(base, expect_body="missing"),
            "status": dict(base, expect_status=[204, "3xx"]),
            "slow": dict(base, path="/slow?s=1", timeout="100ms"),
        }
        cfg = {"upstreams": {name: {"servers": [label(o)], "health": {"active": check}} for name, check in checks.items()},
               "routes": [{"match": {"path": "/"}, "upstream": "good"}]}
        edge = edge_factory(cfg, workers=1)
        store = open_store(edge)

        def verdicts():
            snaps = shared.read_pools(store, {name: (label(o),) for name in checks})
            return {name: snaps[name].active.get(label(o), {}) for name in checks}
        until(lambda: all(v.get("state") == "unhealthy" for n, v in verdicts().items() if n != "good")
              and len([r for r in records(o) if r["host"] == "probe.example"]) >= 3)
        v = verdicts()
        assert v["good"].get("state", "healthy") == "healthy", v
        assert v["body"]["error"] == "expected body text not found"
        assert v["status"]["error"] == "status 200"
        assert v["slow"]["error"] == "no answer within 0.1s"
        assert all(r["method"] == "GET" for r in records(o) if r["path"] == "/health")
        store.close()
    finally:
        stop_all(origins)
