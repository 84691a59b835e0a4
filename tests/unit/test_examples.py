"""Every shipped configuration loads: conf/edge.yaml and each file in conf/examples/.

The examples are documentation (README, docs/operations.md point at them); a key
renamed in edge/config.py or a plugin setting that changed must fail here, not in
the hands of a reader who copies one.
"""

from pathlib import Path

import pytest

from edge.boot import validate
from edge.config import load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "conf" / "examples").glob("*.yaml"))


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"fleet-redis.yaml", "fleet-memcached.yaml"} <= names


@pytest.mark.parametrize("path", [REPO / "conf" / "edge.yaml", *EXAMPLES], ids=lambda p: p.name)
def test_configuration_loads_and_validates(path):
    cfg = load_config(str(path))
    assert cfg.routes, f"{path.name} has no routes"
    validate(str(path), construct=False)  # routes compiled, plugins imported and their settings checked; building a worker (it may open sockets) is checked in tests/integration


@pytest.mark.parametrize("name,backend", [("fleet-redis.yaml", "redis"), ("fleet-memcached.yaml", "memcached")])
def test_fleet_examples_share_state_on_their_backend(name, backend):
    cfg = load_config(str(REPO / "conf" / "examples" / name))
    assert cfg.store.backend == backend
    assert "ratelimit" in cfg.plugins
    assert cfg.server.pidfile and cfg.server.accesslog and cfg.server.errorlog != "-"


def test_readme_starts_the_origins_conf_edge_yaml_expects():
    # The literal README steps must not end in 502: they start an origin on every port of the demo pool.
    cfg = load_config(str(REPO / "conf" / "edge.yaml"))
    readme = (REPO / "README.md").read_text()
    demo = (REPO / "scripts" / "run_demo.py").read_text()
    for server in cfg.upstreams["demo"].servers:
        assert server.host == "127.0.0.1"
        assert f"scripts/origin.py --port {server.port}" in readme
        assert f"{server.port})" in demo  # make run starts the same ones
