"""The worked example of docs/plugins.md: loaded through the real loader checks, then run."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.errors import ConfigError
from edge.plugins import load_plugin_file, load_plugins
from edge.testing import make_ctx, run_plugin

EXAMPLE_DIR = Path(__file__).resolve().parents[3] / "docs" / "examples" / "plugins"
Maintenance = load_plugin_file(EXAMPLE_DIR / "maintenance.py")


def window(start_min: int, end_min: int) -> dict:
    now = datetime.now(timezone.utc)
    return {"start": (now + timedelta(minutes=start_min)).isoformat(), "end": (now + timedelta(minutes=end_min)).isoformat()}


def test_listed_path_gets_503_with_retry_after():
    run = run_plugin(Maintenance, {"paths": ["/admin"], "retry_after_s": 120}, ctx=make_ctx(path="/admin/users"))
    assert run.status == 503
    assert run.headers.get("Retry-After") == "120"
    assert run.body == b"503 down for maintenance\n"
    assert run.upstream is None            # the backend was not asked


def test_other_paths_pass():
    for path in ("/", "/administrator", "/shop/admin"):
        run = run_plugin(Maintenance, {"paths": ["/admin"]}, ctx=make_ctx(path=path))
        assert run.answered is None and run.status == 200


def test_open_window_answers_everything_until_its_end():
    run = run_plugin(Maintenance, window(-5, 10), ctx=make_ctx(path="/anything"))
    assert run.status == 503
    assert 590 <= int(run.headers.get("Retry-After")) <= 600


def test_past_and_future_windows_do_nothing():
    for w in (window(-10, -5), window(5, 10)):
        assert run_plugin(Maintenance, w).status == 200


def test_staff_network_gets_through():
    settings = {**window(-5, 10), "allow": ["10.0.0.0/8"]}
    assert run_plugin(Maintenance, settings, ctx=make_ctx(client_ip="10.1.2.3")).status == 200
    assert run_plugin(Maintenance, settings, ctx=make_ctx(client_ip="192.0.2.1")).status == 503


def test_request_id_is_quoted():
    ctx = make_ctx(path="/admin")
    ctx.request_id = "abc123"
    assert b"(request id abc123)" in run_plugin(Maintenance, {"paths": ["/admin"]}, ctx=ctx).body


@pytest.mark.parametrize("settings, message", [
    ({"start": "2026-05-01T02:00:00+00:00"}, "<test>: plugins.maintenance: give both start and end, or neither"),
    ({"start": "2026-05-01T02:00:00", "end": "2026-05-01T03:00:00"},
     "<test>: plugins.maintenance: start and end need a time zone, e.g. 2026-05-01T02:00:00+00:00"),
    ({"paths": ["admin"]}, "<test>: plugins.maintenance: paths must start with '/' (got 'admin')"),
    ({"retry_after": 5}, "<test>: plugins.maintenance.retry_after: unknown key"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError) as e:
        run_plugin(Maintenance, settings)
    assert str(e.value) == message


def test_deployed_per_route_through_plugin_dirs():
    # the conf/edge.yaml snippet of docs/plugins.md, "Deploy"
    cfg = parse_config({
        "plugin_dirs": [str(EXAMPLE_DIR)],
        "upstreams": {"shop": {"servers": ["127.0.0.1:9001"]}},
        "routes": [
            {"name": "shop", "match": {"path": "/"}, "upstream": "shop",
             "plugins": {"maintenance": {"paths": ["/checkout"], "retry_after_s": 600}}},
        ],
    }, "conf/edge.yaml")
    registry = load_plugins(cfg)
    chain = registry.chain_for(0)
    assert "maintenance" in chain.plugin_names
    answer = chain.run_request(make_ctx(path="/checkout/pay"))
    assert answer.status == 503 and answer.headers.get("Retry-After") == "600"
    assert chain.run_request(make_ctx(path="/products")) is None
    assert registry.default_chain.plugin_names == ()
