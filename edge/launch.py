"""Starting and stopping real processes: edge (a gunicorn master with workers) and demo origins.

Used by the test suite, by ``edge.testing``'s pytest fixture for plugin authors, by
``scripts/bench`` and by ``make run``. Every process is started on a free loopback
port, waited for until it answers, and stopped by its own PID (never by name).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
ORIGIN_SCRIPT = REPO / "scripts" / "origin.py"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


class Process:
    """A child process we started; ``stop`` ends it by PID (TERM, then KILL)."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path | None = None) -> None:
        self.proc = proc
        self.port = port
        self.pid = proc.pid
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        """The process's output so far."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


def start_origin(name: str = "o1", port: int | None = None, log_dir: str | None = None,
                 args: tuple[str, ...] = ()) -> Process:
    """``scripts/origin.py`` on ``port``; ``args`` are further options (``--certfile``... for TLS)."""
    port = port or free_port()
    log_path = Path(log_dir or tempfile.mkdtemp(prefix="edge-origin-")) / f"origin-{name}-{port}.log"
    out = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, str(ORIGIN_SCRIPT), "--port", str(port), "--name", name, *args],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    out.close()
    p = Process(proc, port, log_path)
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
    except Exception:
        p.stop()
        raise
    return p


#: the line edge/boot.py logs when a HUP brings a configuration that does not validate
RELOAD_REFUSED = "reload refused, keeping the running configuration"


class ReloadRefused(RuntimeError):
    """``reload(wait=True)`` saw edge refuse the new configuration (the old one keeps serving)."""


#: a quick stop waits this long for the workers to exit on SIGQUIT before it kills them
QUICK_STOP_S = 1.0


class EdgeProcess(Process):
    """A gunicorn master running edge; ``config_path`` can be rewritten and ``reload`` sent."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path, config_path: Path,
                 tls: bool = False, errorlog: str | None = None) -> None:
        super().__init__(proc, port, log_path)
        self.config_path = config_path
        self.tls = tls
        self.errorlog = errorlog  # server.errorlog when it names a file (read by log())

    def stop(self, timeout_s: float = 10.0, graceful: bool = False) -> None:
        """Stop the master by PID: quickly by default (SIGQUIT: workers exit at once), or with
        ``graceful`` (SIGTERM: workers finish their requests within ``graceful_timeout``).
        Teardowns use the quick stop: a graceful one waits out the graceful timeout whenever
        a worker still holds a keep-alive connection, about 5 s per edge in the test suite."""
        if self.proc.poll() is not None:
            return
        if graceful:
            self.proc.send_signal(signal.SIGTERM)
        else:
            workers = self.worker_pids()
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(QUICK_STOP_S)
            except subprocess.TimeoutExpired:
                # A worker that has not exited by now would hold the master for its whole graceful
                # timeout: these are our own processes (the master's children), stopped by PID.
                for pid in workers:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        """The process's output, followed by gunicorn's error log file when ``server.errorlog`` names one."""
        out = super().log()
        if self.errorlog not in (None, "-"):
            path = REPO / self.errorlog  # edge runs in REPO; an absolute errorlog stays as it is
            if path.exists():
                out += path.read_text(errors="replace")
        return out

    def config(self) -> dict[str, Any]:
        """The configuration file edge was started with or last given, as a dict."""
        return yaml.safe_load(self.config_path.read_text()) or {}

    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config`` for the next ``reload``, keeping this instance's server and store sections.

        See ``keep_instance_sections``: ``bind`` always stays (the URL stays valid), other
        ``server`` keys given in ``config`` win, and ``store`` is kept unless ``config``
        gives one. Nothing changes in the running edge until ``reload``.
        """
        full = keep_instance_sections(self.config(), config, self.config_path.parent)
        self.config_path.write_text(yaml.safe_dump(full, sort_keys=False))
        self.tls = _probe_is_tls(full, self.port)
        self.errorlog = full["server"].get("errorlog")

    def reload(self, *, wait: bool = False, timeout_s: float = 30.0) -> None:
        """``kill -HUP``: gunicorn re-reads the config and replaces the workers gracefully.

        With ``wait=True``, return only once every worker that was running before the
        HUP has exited and edge answers: from then on only workers started with the new
        configuration (and plugin code) serve. Raises ``ReloadRefused`` (after the
        workers were replaced, still with the old configuration) when edge refused the
        file, and ``TimeoutError`` after ``timeout_s``.
        """
        if not wait:
            self.signal(signal.SIGHUP)
            return
        old = set(self.worker_pids())
        refusals = self.log().count(RELOAD_REFUSED)
        self.signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"edge exited during a reload:\n{self.log()}")
            current = set(self.worker_pids())
            if current and not current & old and _answers(self.port, self.tls):
                lines = [ln for ln in self.log().splitlines() if RELOAD_REFUSED in ln]
                if len(lines) > refusals:
                    raise ReloadRefused(lines[-1])
                return
            time.sleep(0.05)
        raise TimeoutError(f"workers {sorted(old)} still running {timeout_s}s after HUP:\n{self.log()}")

    def worker_pids(self) -> list[int]:
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return []
        return [int(c) for c in children]


def keep_instance_sections(current: dict[str, Any], new: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """``new`` with the running instance's ``server`` and ``store`` sections kept (pure).

    - ``server``: the current section, updated with the keys ``new`` gives, except
      ``bind``, which stays (the instance's port is what its URL and probes use);
    - ``store``: ``new``'s when it gives one, otherwise the current one; a ``local``
      store without a ``path`` gets the instance's own directory, as at start.
    """
    out = dict(new)
    server = dict(current.get("server") or {})
    server.update({k: v for k, v in (new.get("server") or {}).items() if k != "bind"})
    out["server"] = server
    store = dict(new["store"]) if new.get("store") is not None else dict(current.get("store") or {})
    if store.get("backend", "local") == "local" and "path" not in store:
        store["path"] = str(work_dir / "store")
    out["store"] = store
    return out


def edge_config(config: dict[str, Any], port: int, workers: int) -> dict[str, Any]:
    """``config`` with the server section filled in for a test instance on ``port``."""
    out = dict(config)
    server = dict(out.get("server") or {})
    if "listeners" not in server:  # a config with listeners says its own addresses (one of them on ``port``)
        server.setdefault("bind", [f"127.0.0.1:{port}"])
    server.setdefault("workers", workers)
    server.setdefault("loglevel", "info")
    server.setdefault("graceful_timeout", "5s")
    out["server"] = server
    return out


def start_edge(
    config: dict[str, Any],
    workers: int = 2,
    port: int | None = None,
    work_dir: str | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> EdgeProcess:
    """Start ``gunicorn -c gunicorn.conf.py`` with ``config`` (a dict, written as YAML)."""
    port = port or free_port()
    d = Path(work_dir or tempfile.mkdtemp(prefix="edge-"))
    config_path = d / "edge.yaml"
    full = edge_config(config, port, workers)
    store = dict(full.get("store") or {})
    if store.get("backend", "local") == "local" and "path" not in store:
        store["path"] = str(d / "store")  # each test instance gets its own node store
        full["store"] = store
    config_path.write_text(yaml.safe_dump(full, sort_keys=False))
    log_path = d / "edge.log"
    out = open(log_path, "wb")
    proc_env = {**os.environ, "EDGE_CONFIG": str(config_path), **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py")],
        cwd=str(REPO), env=proc_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    out.close()
    p = EdgeProcess(proc, port, log_path, config_path, tls=_probe_is_tls(full, port),
                    errorlog=full["server"].get("errorlog"))
    if wait:
        try:
            wait_for_port("127.0.0.1", port, timeout_s=20, proc=proc)
            wait_for_workers(p, workers, tls=p.tls)
        except Exception:
            p.stop()
            raise RuntimeError(f"edge did not start:\n{p.log()}") from None
    return p


def _probe_is_tls(config: dict[str, Any], port: int) -> bool:
    """Whether the listener on ``port`` (the one probed) speaks TLS."""
    listeners = (config.get("server") or {}).get("listeners")
    if not listeners:
        return "tls" in config
    return any(lc.get("tls", False) for lc in listeners if str(lc["bind"]).endswith(f":{port}"))


def wait_for_workers(p: EdgeProcess, workers: int, timeout_s: float = 20.0, tls: bool = False) -> None:
    """Until every worker has booted (its 'Booting worker' line) and a request is answered."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not p.alive():
            raise RuntimeError("edge exited")
        if p.log().count("Booting worker") >= workers and _answers(p.port, tls):
            return
        time.sleep(0.05)
    raise TimeoutError("edge workers did not boot")


def _answers(port: int, tls: bool = False) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            s = raw
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # a probe of our own test certificate
                s = ctx.wrap_socket(raw)
            # A request edge refuses by itself (400): the probe never depends on a backend.
            s.sendall(b"PROBE\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/1.1")
    except OSError:
        return False
