"""scripts/edge.service is a unit systemd accepts, and its commands exist in this checkout.

``systemd-analyze verify`` checks the keys and that every Exec command is executable;
the unit names /opt/edge, so the check runs on a copy pointed at this worktree.
Skipped where systemd-analyze is not installed.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "scripts" / "edge.service"

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
