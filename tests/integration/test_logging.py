"""Edge's log lines through gunicorn's error log, end to end (issue 8, part 1).

Real gunicorn masters with two workers: edge's and plugins' lines carry gunicorn's
format, follow ``loglevel``, go to ``errorlog`` and survive a USR1 reopen; an
unreachable statsd is one line, not a traceback; an unknown upstream chosen by a
plugin and a failing plugin leave their cause in the error and access logs.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import textwrap
import time

import requests

from tests.integration.conftest import until
from edge.launch import Process

LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[(\d+)\] \[([A-Z]+)\] (.*)$")

CHATTY = '''
import logging
from edge.plugins import Plugin

module_log = logging.getLogger(__name__)

class Chatty(Plugin):
    name = "chatty"

    def __init__(self, config, services):
        self.log = services.logger
        self.log.info("chatty built")

    def on_request(self, ctx):
        if ctx.path == "/say":
            self.log.info("chatty says %s", ctx.headers.get("X-Word"))
            module_log.warning("chatty module warns %s", ctx.headers.get("X-Word"))
            module_log.info("chatty module info is below the root's warning level")
        if ctx.path == "/nowhere":
            ctx.upstream = "nope"
        if ctx.path == "/boom":
            raise RuntimeError("chatty bug")
'''


def plugin_config(origin, tmp_path, **server):
    d = tmp_path / "p"
    d.mkdir(exist_ok=True)
    (d / "chatty.py").write_text(textwrap.dedent(CHATTY))
    return {
        "server": {"errorlog": str(tmp_path / "error.log"), "accesslog": str(tmp_path / "access.log"), **server},
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [{"name": "main", "match": {"path": "/"}, "upstream": "app"}],
        "plugin_dirs": [str(d)],
        "plugins": {"chatty": {}},
    }


def start(edge_factory, cfg, tmp_path, workers=2):
    """edge with its error log in a file: wait for the workers' boot lines there."""
    e = edge_factory(cfg, workers=workers, wait=False)
    errorlog = tmp_path / "error.log"
    if cfg["server"].get("loglevel", "info") == "info":
        until(lambda: sum(m.startswith("Booting worker") for m in messages(errorlog)) >= workers
              and requests.get(f"{e.url}/").status_code == 200, timeout_s=30)
    else:  # no boot lines below INFO
        until(lambda: len(e.worker_pids()) >= workers and requests.get(f"{e.url}/").status_code == 200, timeout_s=30)
    return e


def access_entry(tmp_path, path):
    """The access-log entry of ``path`` (written after the last byte: wait for it)."""
    found = []

    def written():
        found[:] = [json.loads(x) for x in (tmp_path / "access.log").read_text().splitlines()
                    if json.loads(x)["path"] == path]
        return found

    until(written)
    assert len(found) == 1
    return found[0]


def lines(path):
    if not path.exists():
        return []
    out = []
    for text in path.read_text().splitlines():
        m = LINE.match(text)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


def messages(path, level=None):
    return [m for _pid, lvl, m in lines(path) if level is None or lvl == level]


def test_edge_and_plugin_lines_use_gunicorns_format_level_and_file(origin, edge_factory, tmp_path):
    e = start(edge_factory, plugin_config(origin, tmp_path, loglevel="info"), tmp_path, workers=2)
    errorlog = tmp_path / "error.log"
    until(lambda: messages(errorlog, "INFO").count("chatty built") == 2)
    workers = set(e.worker_pids())
    assert {pid for pid, _lvl, m in lines(errorlog) if m == "chatty built"} == workers
    requests.get(f"{e.url}/say", headers={"X-Word": "hello"})
    until(lambda: "chatty says hello" in messages(errorlog, "INFO"))
    # a plugin's module logger reaches the same file from WARNING up
    assert "chatty module warns hello" in messages(errorlog, "WARNING")
    assert not any("below the root" in m for m in messages(errorlog))
    # nothing of edge's went to Python's last-resort handler (stderr, no timestamp)
    assert "chatty" not in Process.log(e)  # the process output alone, without the error log file


def test_loglevel_warning_drops_info_lines(origin, edge_factory, tmp_path):
    e = start(edge_factory, plugin_config(origin, tmp_path, loglevel="warning"), tmp_path, workers=2)
    errorlog = tmp_path / "error.log"
    requests.get(f"{e.url}/say", headers={"X-Word": "quiet"})
    until(lambda: "chatty module warns quiet" in messages(errorlog, "WARNING"))
    assert "chatty built" not in messages(errorlog)
    assert "chatty says quiet" not in messages(errorlog)


def test_usr1_reopens_the_error_log_for_edges_lines_too(origin, edge_factory, tmp_path):
    e = start(edge_factory, plugin_config(origin, tmp_path, loglevel="info"), tmp_path, workers=2)
    errorlog = tmp_path / "error.log"
    until(lambda: messages(errorlog).count("chatty built") == 2)
    rotated = tmp_path / "error.log.1"
    errorlog.rename(rotated)
    e.signal(signal.SIGUSR1)
    until(lambda: errorlog.exists())
    # each worker reopens on its own USR1; ask until both wrote to the new file
    n = 0

    def both_workers_wrote():
        nonlocal n
        n += 1
        requests.get(f"{e.url}/say", headers={"X-Word": f"after{n}"})
        return {pid for pid, _lvl, m in lines(errorlog) if m.startswith("chatty says after")} == set(e.worker_pids())

    until(both_workers_wrote)
    assert not any(m.startswith("chatty says after") for m in messages(rotated))


def test_usr1_reopens_the_json_access_log(origin, edge_factory, tmp_path):
    e = start(edge_factory, plugin_config(origin, tmp_path, loglevel="info"), tmp_path, workers=2)
    access = tmp_path / "access.log"
    requests.get(f"{e.url}/before-rotation")
    until(lambda: access.exists() and "/before-rotation" in access.read_text())
    rotated = tmp_path / "access.log.1"
    access.rename(rotated)
    e.signal(signal.SIGUSR1)

    def a_batch_went_to_the_new_file_only():
        # every worker reopens on its own USR1: once a batch of new connections (spread over
        # the workers) adds nothing to the rotated file, both have reopened
        before = rotated.read_text().count("\n")
        for i in range(20):
            requests.get(f"{e.url}/after-{i}")
        return access.exists() and rotated.read_text().count("\n") == before

    until(a_batch_went_to_the_new_file_only)
    until(lambda: access.read_text().count('"/after-') >= 20)  # the last line is written after the last byte
    assert "/before-rotation" in rotated.read_text()


def test_unknown_upstream_set_by_a_plugin_is_logged_with_its_name(origin, edge_factory, tmp_path):
    e = start(edge_factory, plugin_config(origin, tmp_path), tmp_path, workers=2)
    r = requests.get(f"{e.url}/nowhere", headers={"X-Request-ID": "rid-nowhere"})
    assert r.status_code == 500
    errorlog = tmp_path / "error.log"
    until(lambda: any("unknown upstream" in m for m in messages(errorlog, "ERROR")))
    [line] = [m for m in messages(errorlog, "ERROR") if "unknown upstream" in m]
    assert line == "route main: plugin chatty set unknown upstream 'nope'; GET /nowhere request_id=rid-nowhere"
    entry = access_entry(tmp_path, "/nowhere")
    assert entry["status"] == 500 and entry["error"] == "unknown_upstream"


def test_failing_plugin_is_the_error_in_the_access_log(origin, edge_factory, tmp_path):
    e = start(edge_factory, plugin_config(origin, tmp_path), tmp_path, workers=1)
    assert requests.get(f"{e.url}/boom").status_code == 500
    entry = access_entry(tmp_path, "/boom")
    assert entry["status"] == 500 and entry["error"] == "plugin_error"
    [line] = [m for m in messages(tmp_path / "error.log", "ERROR") if "chatty bug" in m]
    assert line.startswith("plugin chatty on_request raised RuntimeError: chatty bug; request failed (on_failure: closed); "
                           "request GET /boom")


def test_unreachable_statsd_is_one_warning_line_not_a_traceback(origin, edge_factory, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # a UDP port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = plugin_config(origin, tmp_path)
    cfg["metrics"] = {"statsd": f"127.0.0.1:{port}"}
    e = start(edge_factory, cfg, tmp_path, workers=2)
    # each change of the worker count is a gauge the master sends; the first send reaches
    # the closed port (ICMP "port unreachable"), the next ones fail with ECONNREFUSED
    for sig, count in ((signal.SIGTTIN, 3), (signal.SIGTTOU, 2), (signal.SIGTTIN, 3), (signal.SIGTTOU, 2)):
        e.signal(sig)
        until(lambda: len(e.worker_pids()) == count)
        time.sleep(0.3)
    until(lambda: any("unreachable" in m for m in messages(tmp_path / "error.log", "WARNING")))
    text = (tmp_path / "error.log").read_text() + e.log()
    assert "Traceback" not in text
    assert "Error sending message to statsd" not in text
    unreachable = [(pid, m) for pid, lvl, m in lines(tmp_path / "error.log") if lvl == "WARNING" and "unreachable" in m]
    assert [pid for pid, _m in unreachable] == [e.pid]   # the master's, once, not one per metric
    unreachable = [m for _pid, m in unreachable]
    assert all(m.startswith(f"statsd 127.0.0.1:{port} unreachable, metrics are dropped until it answers") for m in unreachable)


def test_unresolvable_statsd_host_does_not_stop_workers_from_booting(origin, edge_factory, tmp_path):
    cfg = plugin_config(origin, tmp_path)
    cfg["metrics"] = {"statsd": "statsd.invalid:8125"}
    e = start(edge_factory, cfg, tmp_path, workers=2)
    assert requests.get(f"{e.url}/").status_code == 200

    def warned():
        return [m for m in messages(tmp_path / "error.log", "WARNING") if m.startswith("statsd statsd.invalid:8125 unusable")]

    until(lambda: len(warned()) >= 2)
    time.sleep(0.5)
    assert len(warned()) == 2   # one line per worker, not one per metric


def test_client_errors_are_logged_at_info_with_address_reason_and_request_id(origin, edge_factory, tmp_path):
    e = start(edge_factory, plugin_config(origin, tmp_path, loglevel="info"), tmp_path, workers=1)
    errorlog = tmp_path / "error.log"
    # a bad request that still has a request line and an id: the line names both
    with socket.create_connection(("127.0.0.1", e.port), timeout=10) as s:
        s.sendall(b"GET /x?a=<b> HTTP/1.1\r\nHost: example.com\r\nX-Request-ID: rid-client-1\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 400 ")
    until(lambda: any("client error 400 from 127.0.0.1" in m for m in messages(errorlog, "INFO")))
    line = next(m for m in messages(errorlog, "INFO") if "client error 400 from 127.0.0.1" in m)
    assert "request_id=rid-client-1" in line
    # a burst is rate-limited: fewer lines than errors, then one line saying how many were left out
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", e.port), timeout=10) as s:
            s.sendall(b"GET /\x01 HTTP/1.1\r\nHost: example.com\r\n\r\n")
            s.recv(65536)
    until(lambda: any("more client errors suppressed" in m for m in messages(errorlog, "INFO")), timeout_s=40)
    logged = [m for m in messages(errorlog, "INFO") if m.startswith("client error")]
    assert 1 < len(logged) < 31
