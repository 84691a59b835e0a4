"""The ``edge_server`` fixture of edge.testing, as a plugin author uses it (docs/plugins.md §11).

Real edge, real origins: several pools, a reload that returns only once the new
workers alone serve, a refused reload, and a config writer that keeps the
instance's server and store sections.
"""

import textwrap
from pathlib import Path

import pytest
import requests

from edge.launch import ReloadRefused

TAG = '''
import os

from edge.plugins import Plugin


class Tag(Plugin):
    name = "tag"

    def on_response(self, ctx, response):
        response.headers.set("X-Tag", "{version}")
        response.headers.set("X-Worker", str(os.getpid()))
'''


def _write_tag(d: Path, version: str) -> None:
    (d / "tag.py").write_text(textwrap.dedent(TAG.format(version=version)))


def _fresh_get(url: str) -> requests.Response:
    # A new connection per request: a kept-alive one would stay with whichever worker accepted it.
    return requests.get(url, headers={"Connection": "close"}, timeout=10)


def test_several_pools_of_origins(edge_server):
    edge = edge_server(origins={"eu": 2, "us": 1}, routes=[
        {"name": "us", "match": {"path": "/us"}, "upstream": "us"},
        {"name": "eu", "match": {"path": "/"}, "upstream": "eu"},
    ])
    assert sorted(edge.pools) == ["eu", "us"] and len(edge.origins) == 3 and edge.origin is edge.pools["eu"][0]
    eu = {_fresh_get(f"{edge.url}/").headers["X-Origin"] for _ in range(6)}
    assert eu == {"eu0", "eu1"}                           # round robin over the pool's two origins
    assert _fresh_get(f"{edge.url}/us").headers["X-Origin"] == "us0"


def test_default_is_one_origin_behind_one_route(edge_server):
    edge = edge_server()
    assert list(edge.pools) == ["origin"] and len(edge.origins) == 1
    r = _fresh_get(f"{edge.url}/x")
    assert r.status_code == 200 and r.headers["X-Origin"] == "origin0"


def test_origins_must_be_counted(edge_server):
    with pytest.raises(ValueError, match="origins"):
        edge_server(origins={"eu": 0})


def test_reload_returns_when_only_new_workers_serve(edge_server, tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    _write_tag(d, "v1")
    edge = edge_server(plugins={"tag": {}}, plugin_dirs=[str(d)], workers=2)
    old_workers = set(edge.process.worker_pids())
    assert len(old_workers) == 2
    assert _fresh_get(edge.url).headers["X-Tag"] == "v1"

    _write_tag(d, "v2")
    edge.reload()
    # No polling: right after reload() returns, every request meets the new code in a new worker.
    seen = [_fresh_get(edge.url) for _ in range(20)]
    assert {r.headers["X-Tag"] for r in seen} == {"v2"}
    assert not {int(r.headers["X-Worker"]) for r in seen} & old_workers
    assert not set(edge.process.worker_pids()) & old_workers

    # A plugin that does not load: the reload is refused, and v2 keeps serving.
    (d / "tag.py").write_text("from edge.plugins import Plugin\nclass Tag(Plugin):\n    name = 'tag'\n"
                              "    def on_respons(self, ctx, r):\n        pass\n")
    with pytest.raises(ReloadRefused, match="on_respons is not a known hook"):
        edge.reload()
    assert edge.process.alive()
    assert {_fresh_get(edge.url).headers["X-Tag"] for _ in range(5)} == {"v2"}


def test_write_config_keeps_server_and_store(edge_server, tmp_path):
    edge = edge_server(workers=1)
    before = edge.config()
    access = tmp_path / "access.log"
    edge.reconfigure({
        # bind is the fixture's and stays; other server keys are taken
        "server": {"bind": ["127.0.0.1:1"], "accesslog": str(access)},
        "upstreams": {"origin": {"servers": [f"127.0.0.1:{edge.origin.port}"]}},
        "routes": [
            {"name": "hello", "match": {"path": {"exact": "/hello"}}, "respond": {"status": 200, "body": "hi\n"}},
            {"name": "default", "match": {"path": "/"}, "upstream": "origin"},
        ],
    })
    after = edge.config()
    assert after["server"]["bind"] == before["server"]["bind"]
    assert after["server"]["workers"] == before["server"]["workers"]
    assert after["server"]["accesslog"] == str(access)
    assert after["store"] == before["store"]              # the instance's own local store directory
    r = _fresh_get(f"{edge.url}/hello")
    assert r.status_code == 200 and r.text == "hi\n"
    assert _fresh_get(f"{edge.url}/").headers["X-Origin"] == "origin0"
    assert '"route":"hello"' in access.read_text()


def test_fixture_is_registered_for_plugin_authors(pytestconfig):
    # pip install -e '.[test]' registers edge.testing as a pytest plugin (pyproject entry point),
    # so a plugin author's tests get edge_server without a conftest.
    assert pytestconfig.pluginmanager.has_plugin("edge")


# The example of docs/plugins.md §11, as written there (EXAMPLES is the docs' plugin directory).
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "plugins"


def test_maintenance_end_to_end(edge_server):
    edge = edge_server(
        plugins={"maintenance": {"paths": ["/down"]}},
        plugin_dirs=[str(EXAMPLES)],
        origins={"main": 2, "spare": 1},
        routes=[{"name": "spare", "match": {"path": "/spare"}, "upstream": "spare"},
                {"name": "main", "match": {"path": "/"}, "upstream": "main"}],
        workers=2,
    )
    assert requests.get(f"{edge.url}/down").status_code == 503
    assert requests.get(f"{edge.url}/spare").headers["X-Origin"] == "spare0"

    # New settings; the fixture's server and store sections are kept.
    config = edge.config()
    config["plugins"]["maintenance"]["paths"] = ["/spare"]
    edge.reconfigure(config)                        # returns once only new workers serve
    assert requests.get(f"{edge.url}/spare").status_code == 503
    assert requests.get(f"{edge.url}/down").status_code == 200
