"""Fixtures that start real processes: demo origins and edge (gunicorn master + workers)."""

from __future__ import annotations

import uuid

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


def store_config(request, backend: str, name: str) -> dict:
    """A ``store`` section for ``backend`` (local, redis or memcached) with a key prefix of its
    own, for module fixtures parametrised over the stores. Remote stores get a 1 s call
    timeout: 512 KiB chunk writes on a machine shared with other test runs must not time out
    (a store call that does stores nothing, correctly, which would make counts flaky)."""
    store: dict = {"backend": backend, "key_prefix": f"{name}-{uuid.uuid4().hex[:8]}:"}
    if backend == "redis":
        store["url"] = request.getfixturevalue("redis_server").url
        store["timeout"] = "1s"
    elif backend == "memcached":
        server = request.getfixturevalue("memcached_server")
        store["servers"] = [f"{server.host}:{server.port}"]
        store["timeout"] = "1s"
    return store


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
