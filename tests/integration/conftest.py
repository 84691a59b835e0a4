"""Fixtures that start real processes: demo origins and edge (gunicorn master + workers)."""

from __future__ import annotations

import pytest

from edge.launch import start_edge, start_origin


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    p = start_origin("o1", log_dir=str(tmp_path_factory.mktemp("origin")))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def origin2(tmp_path_factory):
    p = start_origin("o2", log_dir=str(tmp_path_factory.mktemp("origin")))
    yield p
    p.stop()


@pytest.fixture
def edge_factory(tmp_path):
    """Start edge with a config dict; every instance is stopped by PID at the end of the test."""
    started = []

    def start(config, workers=2, **kw):
        d = tmp_path / f"edge{len(started)}"
        d.mkdir()
        p = start_edge(config, workers=workers, work_dir=str(d), **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def simple_config(*origins, **route):
    return {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{o.port}" for o in origins]}},
        "routes": [{"match": {"path": "/"}, "upstream": "app", **route}],
    }


def until(cond, timeout_s: float = 30.0, interval_s: float = 0.1) -> None:
    """Poll ``cond`` until it is true (connection errors count as not yet); fail after ``timeout_s``.

    The bound is generous on purpose (issue 8): a correct edge passes as soon as the
    condition holds, so it only matters when it never would, e.g. a reload that never
    takes effect; a busy machine must not turn a slow reload into a failure."""
    import time

    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except requests.RequestException:
            pass
        time.sleep(interval_s)
    raise AssertionError("condition not met in time")


def read_until_close(sock) -> bytes:
    """Everything a server sends until it closes (or resets) the connection."""
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got
