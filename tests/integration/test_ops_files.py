"""The operations files of scripts/ work as docs/operations.md says.

- ``edge.service``: ``systemd-analyze verify`` checks the keys and that every Exec
  command is executable; the unit names /opt/edge, so the check runs on a copy
  pointed at this worktree. Skipped where systemd-analyze is not installed.
- ``edge.logrotate``: run for real (``logrotate -f``) against a running edge whose
  logs and pidfile are in a temporary directory: afterwards both logs are written
  afresh and the rotated access log holds the earlier lines. Skipped without logrotate.
"""

import grp
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import simple_config, until

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "scripts" / "edge.service"
LOGROTATE = REPO / "scripts" / "edge.logrotate"

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def _verify(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    unit = tmp_path / "edge.service"
    unit.write_text(text.replace("/opt/edge", str(REPO)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Only what concerns our file: a container's own units may add unrelated noise.
    complaints = [ln for ln in (done.stdout + done.stderr).splitlines() if "edge.service" in ln]
    return done.returncode, complaints


@needs_systemd
def test_unit_verifies(tmp_path):
    rc, complaints = _verify(tmp_path, UNIT.read_text())
    assert rc == 0 and complaints == [], complaints


@needs_systemd
def test_verify_would_catch_a_broken_unit(tmp_path):
    # The check above is only worth something if systemd-analyze reports mistakes here.
    rc, complaints = _verify(tmp_path, UNIT.read_text().replace("KillMode=mixed", "KillMod=mixed"))
    assert complaints, "systemd-analyze did not report an unknown key"


def test_unit_runs_the_documented_commands():
    text = UNIT.read_text()
    assert "ExecStart=/opt/edge/.venv/bin/gunicorn -c /opt/edge/gunicorn.conf.py" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "KillMode=mixed" in text and "Type=notify" in text
    assert (REPO / "gunicorn.conf.py").exists()


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed")
def test_logrotate_snippet_rotates_both_logs_of_a_running_edge(origin, edge_factory, tmp_path):
    logs = tmp_path / "log"
    logs.mkdir()
    pidfile = tmp_path / "edge.pid"
    cfg = simple_config(origin)
    cfg["server"] = {"pidfile": str(pidfile), "errorlog": str(logs / "error.log"), "accesslog": str(logs / "access.log")}
    e = edge_factory(cfg, workers=1)
    until(lambda: pidfile.exists() and pidfile.read_text().strip() == str(e.pid))
    assert requests.get(f"{e.url}/before", headers={"Connection": "close"}).status_code == 200
    until(lambda: "/before" in (logs / "access.log").read_text())

    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    conf = tmp_path / "edge.logrotate"
    conf.write_text(LOGROTATE.read_text()
                    .replace("/var/log/edge", str(logs))
                    .replace("/run/edge/edge.pid", str(pidfile))
                    .replace("create 0640 edge edge", f"create 0640 {user} {group}"))
    done = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    assert "/before" in (logs / "access.log.1").read_text()

    worker = e.worker_pids()

    def fresh_lines() -> bool:
        requests.get(f"{e.url}/after", headers={"Connection": "close"})
        with socket.create_connection(("127.0.0.1", e.port), timeout=10) as bad:  # a client error: one INFO line
            bad.sendall(b"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n")
            bad.recv(4096)
        access = logs / "access.log"
        error = logs / "error.log"
        return ("/after" in access.read_text() and "/before" not in access.read_text()
                and "client error 400" in error.read_text())

    until(fresh_lines)  # the worker reopens a moment after the signal
    assert e.alive()
    assert e.worker_pids() == worker  # USR1 reopens files; nothing was restarted
