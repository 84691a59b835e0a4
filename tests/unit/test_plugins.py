"""The plugin contract: loader checks (exact messages), per-route chains, order, isolation, reload."""

from __future__ import annotations

import logging
import textwrap
import time
import timeit
from pathlib import Path

import gevent
import pytest

from edge.config import parse_config
from edge.context import Response
from edge.errors import ConfigError, PluginError, PluginLoadError
from edge.plugins import SHIPPED_DIR, Plugin, PluginConfig, Services, load_plugin_file, load_plugins
from edge.testing import make_ctx, make_upstream_response

UPSTREAMS = {"a": {"servers": ["127.0.0.1:9001"]}, "b": {"servers": ["127.0.0.1:9002"]}}

# Three plugins that record the order in which their hooks run, in ctx.facts["trace"].
TRACER = '''
from edge.plugins import Plugin, PluginConfig

class {cls}(Plugin):
    name = "{name}"
    priority = {priority}

    def on_request(self, ctx):
        ctx.facts.setdefault("trace", []).append("req:{name}")

    def on_response(self, ctx, response):
        ctx.facts.setdefault("trace", []).append("resp:{name}")

    def on_body(self, ctx, chunk, end):
        ctx.facts.setdefault("trace", []).append("body:{name}")
        return chunk

    def on_log(self, ctx):
        ctx.facts.setdefault("trace", []).append("log:{name}")
'''


def write(directory: Path, filename: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(textwrap.dedent(source))
    return path


def config(tmp_path: Path, **data) -> object:
    data.setdefault("plugin_dirs", [str(tmp_path / "p")])
    if "routes" in data:
        data.setdefault("upstreams", UPSTREAMS)
    return parse_config(data, "conf/edge.yaml")


@pytest.fixture
def empty_shipped(tmp_path: Path) -> Path:
    d = tmp_path / "shipped"
    d.mkdir()
    return d


@pytest.fixture
def tracers(tmp_path: Path) -> Path:
    d = tmp_path / "p"
    for cls, name, prio in (("Low", "low", 10), ("Mid", "mid", 500), ("High", "high", 2000)):
        write(d, f"{name}.py", TRACER.format(cls=cls, name=name, priority=prio))
    return d


def load(cfg, shipped: Path, services: Services | None = None):
    return load_plugins(cfg, services, shipped_dir=shipped)


# --------------------------------------------------------------------------- order


def test_request_phase_by_priority_and_response_phases_reversed(tmp_path, tracers, empty_shipped):
    reg = load(config(tmp_path, plugins={"low": {}, "mid": {}, "high": {}}), empty_shipped)
    chain = reg.default_chain
    ctx = make_ctx()
    resp = make_upstream_response(body=b"x")
    assert chain.run_request(ctx) is None
    chain.run_response(ctx, resp)
    assert b"".join(chain.filter_body(ctx, resp.body)) == b"x"
    chain.run_log(ctx)
    assert ctx.facts["trace"] == [
        "req:high", "req:mid", "req:low",
        "resp:low", "resp:mid", "resp:high",
        "body:low", "body:mid", "body:high",   # chunk b"x"
        "body:low", "body:mid", "body:high",   # end=True
        "log:low", "log:mid", "log:high",
    ]
    assert chain.plugin_names == ("high", "mid", "low")
    assert chain.hooks("on_request") == ("high", "mid", "low")
    assert chain.hooks("on_response") == ("low", "mid", "high")


def test_chain_holds_only_the_hooks_a_plugin_defines(tmp_path, empty_shipped):
    write(tmp_path / "p", "only_log.py", '''
        from edge.plugins import Plugin
        class OnlyLog(Plugin):
            name = "only_log"
            def on_log(self, ctx):
                ctx.facts["logged"] = True
    ''')
    chain = load(config(tmp_path, plugins={"only_log": {}}), empty_shipped).default_chain
    assert chain.hooks("on_request") == () and chain.hooks("on_response") == ()
    assert chain.hooks("on_log") == ("only_log",)
    assert not chain.has_body_filters and not chain.has_request_body_filters
    ctx = make_ctx()
    chunks = [b"a", b"b"]
    assert list(chain.filter_body(ctx, chunks)) == chunks


def test_empty_chain_passes_everything_through(tmp_path, empty_shipped):
    reg = load(config(tmp_path, plugin_dirs=[]), empty_shipped)
    chain = reg.default_chain
    ctx = make_ctx()
    resp = make_upstream_response()
    assert chain.run_connect(object()) is None
    assert chain.run_request(ctx) is None
    chain.run_response(ctx, resp)
    assert resp.replacement is None
    assert chain.run_error(ctx, PluginError("x", "y")) is None
    chain.run_log(ctx)
    assert chain.plugin_names == ()


# --------------------------------------------------------------------------- answering, rewriting


def test_short_circuit_answers_and_skips_lower_priority_plugins(tmp_path, tracers, empty_shipped):
    write(tmp_path / "p", "deny.py", '''
        from edge.context import Response
        from edge.plugins import Plugin
        class Deny(Plugin):
            name = "deny"
            priority = 1000
            def on_request(self, ctx):
                if ctx.path.startswith("/admin"):
                    return Response.error(403, "forbidden")
    ''')
    chain = load(config(tmp_path, plugins={"low": {}, "deny": {}, "high": {}}), empty_shipped).default_chain
    ctx = make_ctx(path="/admin/x")
    answer = chain.run_request(ctx)
    assert answer is not None and answer.status == 403
    assert ctx.facts["trace"] == ["req:high"]
    # a forgotten `return` (None) means continue
    ctx = make_ctx(path="/public")
    assert chain.run_request(ctx) is None
    assert ctx.facts["trace"] == ["req:high", "req:low"]


def test_plugin_switches_pool_and_rewrites_request(tmp_path, empty_shipped):
    write(tmp_path / "p", "geo.py", '''
        from edge.plugins import Plugin
        class Geo(Plugin):
            name = "geo"
            def on_request(self, ctx):
                if ctx.headers.get("X-Country") == "DE":
                    ctx.upstream = "b"
                    ctx.path = "/de" + ctx.path
                    ctx.facts["country"] = "DE"
    ''')
    cfg = config(tmp_path, routes=[{"upstream": "a", "plugins": {"geo": {}}}])
    chain = load(cfg, empty_shipped).chain_for(0)
    ctx = make_ctx(path="/shop", headers={"X-Country": "DE"}, upstream="a")
    assert chain.run_request(ctx) is None
    assert (ctx.upstream, ctx.path, ctx.facts["country"]) == ("b", "/de/shop", "DE")
    ctx = make_ctx(path="/shop", upstream="a")
    chain.run_request(ctx)
    assert (ctx.upstream, ctx.path) == ("a", "/shop")


def test_response_replacement_and_returned_response(tmp_path, empty_shipped):
    write(tmp_path / "p", "swap.py", '''
        from edge.context import Response
        from edge.plugins import Plugin
        class Swap(Plugin):
            name = "swap"
            def on_response(self, ctx, response):
                response.headers.set("X-Seen", "1")
                if response.status == 500:
                    response.replacement = Response(503, [("Retry-After", "5")], b"later")
                elif response.status == 404:
                    return Response(410, body=b"gone")
    ''')
    chain = load(config(tmp_path, plugins={"swap": {}}), empty_shipped).default_chain
    ctx = make_ctx()
    for status, final in ((200, None), (500, 503), (404, 410)):
        resp = make_upstream_response(status)
        chain.run_response(ctx, resp)
        assert resp.headers.get("X-Seen") == "1"
        assert (resp.replacement.status if resp.replacement else None) == final


# --------------------------------------------------------------------------- bodies

BODY_FILTERS = '''
from edge.plugins import Plugin

class Upper(Plugin):
    name = "upper"
    priority = 10
    def on_body(self, ctx, chunk, end):
        ctx.facts.setdefault("upper_calls", []).append((chunk, end))
        return chunk.upper()
'''

DOUBLER = '''
from edge.plugins import Plugin

class Doubler(Plugin):
    """Changes the length; holds back the last byte of each chunk until the end flag."""
    name = "doubler"
    priority = 20
    def on_body(self, ctx, chunk, end):
        held = ctx.facts.pop("held", b"")
        data = held + chunk
        if not end:
            ctx.facts["held"], data = data[-1:], data[:-1]
        return bytes(b for c in data for b in (c, c))
    def on_request_body(self, ctx, chunk, end):
        if end:
            return chunk + b"|end"
        # a forgotten return passes the chunk on unchanged
'''


def test_body_filters_change_length_and_see_end_flag(tmp_path, empty_shipped):
    write(tmp_path / "p", "upper.py", BODY_FILTERS)
    write(tmp_path / "p", "doubler.py", DOUBLER)
    chain = load(config(tmp_path, plugins={"upper": {}, "doubler": {}}), empty_shipped).default_chain
    assert chain.has_body_filters and chain.has_request_body_filters
    assert chain.hooks("on_body") == ("upper", "doubler")   # reverse of request order
    ctx = make_ctx()
    out = list(chain.filter_body(ctx, iter([b"ab", b"cd"])))
    assert b"".join(out) == b"AABBCCDD"
    assert b"" not in out
    # the last call has end=True and whatever remains (here nothing)
    assert ctx.facts["upper_calls"] == [(b"ab", False), (b"cd", False), (b"", True)]
    ctx = make_ctx(method="POST")
    assert b"".join(chain.filter_request_body(ctx, [b"x", b"y"])) == b"xy|end"


def test_body_filter_failure_closed_ends_stream_open_passes_through(tmp_path, empty_shipped):
    write(tmp_path / "p", "broken.py", '''
        from edge.plugins import Plugin
        class Broken(Plugin):
            name = "broken"
            def on_body(self, ctx, chunk, end):
                raise ValueError("bad gzip")
    ''')
    reg = load(config(tmp_path, plugins={"broken": {}}), empty_shipped)
    with pytest.raises(PluginError) as e:
        list(reg.default_chain.filter_body(make_ctx(), [b"a"]))
    assert (e.value.plugin, e.value.phase, e.value.status) == ("broken", "on_body", 500)
    reg = load(config(tmp_path, plugins={"broken": {"on_failure": "open"}}), empty_shipped)
    assert list(reg.default_chain.filter_body(make_ctx(), [b"a", b"b"])) == [b"a", b"b"]
    assert reg.errors[("broken", "on_body")] == 1   # then skipped for the rest of that body


# --------------------------------------------------------------------------- isolation

RAISER = '''
from edge.plugins import Plugin

class Raiser(Plugin):
    name = "raiser"
    priority = 100
    def on_request(self, ctx):
        if ctx.path == "/boom":
            raise RuntimeError("boom")
    def on_response(self, ctx, response):
        if ctx.path == "/boom-late":
            raise KeyError("late")
    def on_log(self, ctx):
        raise RuntimeError("log boom")
'''


class FakeMetrics:
    def __init__(self):
        self.counts: dict[str, int] = {}

    def incr(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


def test_raising_plugin_fail_closed_gives_500_counted_and_next_request_served(tmp_path, tracers, empty_shipped, caplog):
    write(tmp_path / "p", "raiser.py", RAISER)
    metrics = FakeMetrics()
    reg = load(config(tmp_path, plugins={"raiser": {}, "low": {}}), empty_shipped,
               Services(metrics=metrics, logger=logging.getLogger("t")))
    chain = reg.default_chain
    ctx = make_ctx(path="/boom")
    ctx.request_id = "rid-1"
    with caplog.at_level(logging.ERROR, logger="t"):
        answer = chain.run_request(ctx)
        assert answer.status == 500 and b"rid-1" in answer.body
        assert "trace" not in ctx.facts     # lower-priority plugins did not run
        # the same chain (worker) answers the next request normally
        ok = make_ctx(path="/fine")
        assert chain.run_request(ok) is None and ok.facts["trace"] == ["req:low"]
        # a second failure inside the burst is counted but not logged again
        chain.run_request(make_ctx(path="/boom"))
    assert reg.errors[("raiser", "on_request")] == 2
    assert metrics.counts["plugin.raiser.on_request.error"] == 2
    logged = [r for r in caplog.records if "raiser on_request" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    # response phase, closed: the response is replaced by a 500
    resp = make_upstream_response()
    chain.run_response(make_ctx(path="/boom-late"), resp)
    assert resp.replacement.status == 500
    # log phase never raises
    chain.run_log(ok)
    assert reg.errors[("raiser", "on_log")] == 1


def test_raising_plugin_fail_open_is_skipped(tmp_path, tracers, empty_shipped):
    write(tmp_path / "p", "raiser.py", RAISER)
    reg = load(config(tmp_path, plugins={"raiser": {"on_failure": "open"}, "low": {}}), empty_shipped)
    chain = reg.default_chain
    ctx = make_ctx(path="/boom")
    assert chain.run_request(ctx) is None
    assert ctx.facts["trace"] == ["req:low"]          # the chain went on
    resp = make_upstream_response()
    chain.run_response(make_ctx(path="/boom-late"), resp)
    assert resp.replacement is None
    assert reg.errors[("raiser", "on_request")] == 1
    assert reg.errors[("raiser", "on_response")] == 1


def test_wrong_return_type_is_a_plugin_error(tmp_path, empty_shipped):
    write(tmp_path / "p", "wrong.py", '''
        from edge.plugins import Plugin
        class Wrong(Plugin):
            name = "wrong"
            def on_request(self, ctx):
                return 403
    ''')
    reg = load(config(tmp_path, plugins={"wrong": {}}), empty_shipped)
    assert reg.default_chain.run_request(make_ctx()).status == 500
    assert reg.errors[("wrong", "on_request")] == 1


SLEEPER = '''
import gevent
from edge.plugins import Plugin

class Sleeper(Plugin):
    name = "sleeper"
    priority = 100
    def on_request(self, ctx):
        if ctx.path == "/slow":
            gevent.sleep(30)
        ctx.facts["sleeper_done"] = True
    def on_connect(self, conn):
        gevent.sleep(30)
'''


@pytest.mark.parametrize("on_failure, expected", [("closed", 503), ("open", None)])
def test_overrunning_hook_is_cut_at_its_budget(tmp_path, tracers, empty_shipped, on_failure, expected):
    write(tmp_path / "p", "sleeper.py", SLEEPER)
    metrics = FakeMetrics()
    reg = load(config(tmp_path, plugins={"sleeper": {"timeout": "50ms", "on_failure": on_failure}, "low": {}}),
               empty_shipped, Services(metrics=metrics))
    ctx = make_ctx(path="/slow")
    t0 = time.monotonic()
    answer = reg.default_chain.run_request(ctx)
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 10  # cut at its budget, not when the plugin is done (no tighter bound: issue 8)
    assert (answer.status if answer else None) == expected
    assert "sleeper_done" not in ctx.facts
    assert ctx.facts.get("trace") == (None if expected else ["req:low"])
    assert reg.errors[("sleeper", "on_request")] == 1
    assert metrics.counts["plugin.sleeper.on_request.timeout"] == 1
    # the timer is disarmed after the phase: a later wait in the same greenlet is not interrupted
    fast = make_ctx(path="/fast")
    assert reg.default_chain.run_request(fast) is None and fast.facts["sleeper_done"]
    gevent.sleep(0.08)
    # on_connect is budgeted too
    t0 = time.monotonic()
    answer = reg.default_chain.run_connect(object())
    assert time.monotonic() - t0 < 10
    assert (answer.status if answer else None) == expected


def test_on_error_first_response_wins_and_failures_are_skipped(tmp_path, empty_shipped):
    write(tmp_path / "p", "pages.py", '''
        from edge.context import Response
        from edge.plugins import Plugin
        class Pages(Plugin):
            name = "pages"
            priority = 10
            def on_error(self, ctx, error):
                return Response(error.status, [("Content-Type", "text/html")], b"<h1>sorry</h1>")
    ''')
    write(tmp_path / "p", "flaky.py", '''
        from edge.plugins import Plugin
        class Flaky(Plugin):
            name = "flaky"
            priority = 5
            def on_error(self, ctx, error):
                raise RuntimeError("no")
    ''')
    from edge.errors import NoHealthyServer
    reg = load(config(tmp_path, plugins={"pages": {}, "flaky": {}}), empty_shipped)
    answer = reg.default_chain.run_error(make_ctx(), NoHealthyServer())
    assert answer.status == 503 and answer.body == b"<h1>sorry</h1>"
    assert reg.errors[("flaky", "on_error")] == 1


# --------------------------------------------------------------------------- loader refusals


@pytest.mark.parametrize("source, reason", [
    ('''
     from edge.plugins import Plugin
     class Foo(Plugin):
         name = "foo"
         def on_reqeust(self, ctx):
             pass
     ''', "Foo: on_reqeust is not a known hook (did you mean on_request?)"),
    ('''
     from edge.plugins import Plugin
     class Foo(Plugin):
         name = "foo"
         def on_request(self):
             pass
     ''', "Foo: on_request(self) does not accept the hook's arguments: def on_request(self, ctx)"),
    ('''
     from edge.plugins import Plugin
     class Foo(Plugin):
         name = "foo"
         async def on_request(self, ctx):
             pass
     ''', "Foo: on_request must not be async (hooks are plain blocking calls under gevent)"),
    ('''
     from edge.plugins import Plugin
     class Foo(Plugin):
         name = "foo"
         class Config:
             x: int = 1
     ''', "Foo: Config must be a subclass of edge.plugins.PluginConfig (got <class 'MOD.Foo.Config'>)"),
    ('''
     from pydantic import ConfigDict
     from edge.plugins import Plugin, PluginConfig
     class Foo(Plugin):
         name = "foo"
         class Config(PluginConfig):
             model_config = ConfigDict(extra="allow")
     ''', "Foo: Config must stay frozen with extra='forbid' (do not override model_config)"),
    ('''
     from edge.plugins import Plugin
     class Foo(Plugin):
         name = "foo"
         priority = "high"
     ''', "Foo: priority must be an integer (got 'high')"),
    ('''
     from edge.plugins import Plugin
     class Foo(Plugin):
         priority = 1
     ''', "Foo: name must be a string of lowercase letters, digits, '_' or '-' (got None)"),
    ('''
     import edge.plugins
     class NotAPlugin:
         name = "foo"
     ''', "no Plugin subclass (define one class derived from edge.plugins.Plugin)"),
    ('''
     from edge.plugins import Plugin
     class A(Plugin):
         name = "a"
     class B(Plugin):
         name = "b"
     ''', "A, B: one Plugin subclass per module (found 2)"),
    ('''
     from edge.plugins import Plugin
     import does_not_exist
     ''', "import failed: ModuleNotFoundError: No module named 'does_not_exist'"),
    ('''
     from edge.plugins import Plugin
     class Foo(Plugin)
         name = "foo"
     ''', "syntax error line 3: expected ':'"),
])
def test_loader_refuses_bad_plugin_with_exact_message(tmp_path, empty_shipped, source, reason):
    path = write(tmp_path / "p", "foo.py", source)
    with pytest.raises(PluginLoadError) as e:
        load(config(tmp_path), empty_shipped)
    # the message names the file, the class and the reason
    mod = str(e.value).split("<class '")[1].split(".Foo")[0] if "<class '" in str(e.value) else "MOD"
    assert str(e.value) == f"{path}: {reason.replace('MOD', mod)}"
    # load_plugin_file applies the same checks
    with pytest.raises(PluginLoadError):
        load_plugin_file(path)


def test_typo_hook_message_matches_the_documented_format(tmp_path, monkeypatch, empty_shipped):
    # run from the directory holding plugins/, as edge does: paths are shown relative to it
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "plugins", "foo.py", '''
        from edge.plugins import Plugin
        class Foo(Plugin):
            name = "foo"
            def on_reqeust(self, ctx):
                pass
    ''')
    with pytest.raises(PluginLoadError) as e:
        load(parse_config({}), tmp_path / "plugins")
    assert str(e.value) == "plugins/foo.py: Foo: on_reqeust is not a known hook (did you mean on_request?)"
    assert (e.value.file, e.value.key_path) == ("plugins/foo.py", "Foo")


def test_duplicate_name_refused_naming_both_files(tmp_path, tracers, empty_shipped):
    path = write(tmp_path / "p", "z_low_again.py", TRACER.format(cls="Again", name="low", priority=1))
    with pytest.raises(PluginLoadError) as e:
        load(config(tmp_path), empty_shipped)
    assert str(e.value) == f"{path}: Again: duplicate plugin name 'low' (also {tmp_path / 'p' / 'low.py'}: Low)"


def test_user_plugin_cannot_reuse_a_shipped_name(tmp_path):
    path = write(tmp_path / "p", "my_headers.py", TRACER.format(cls="MyHeaders", name="headers", priority=1))
    with pytest.raises(PluginLoadError, match=r"my_headers.py: MyHeaders: duplicate plugin name 'headers' \(also .*headers.py: Headers\)"):
        load(config(tmp_path), SHIPPED_DIR)
    assert path.exists()


def test_unknown_plugin_name_in_config(tmp_path):
    cfg = parse_config({"upstreams": UPSTREAMS, "routes": [
        {"upstream": "a"}, {"upstream": "a"}, {"upstream": "b", "plugins": {"ratelimt": {}}}]}, "conf/edge.yaml")
    known = ", ".join(sorted(p.stem for p in SHIPPED_DIR.glob("*.py") if not p.name.startswith("_")))
    with pytest.raises(ConfigError) as e:
        load_plugins(cfg)
    assert str(e.value) == f"conf/edge.yaml: routes[2].plugins.ratelimt: unknown plugin (known: {known})"
    cfg = parse_config({"plugins": {"cros": {}}}, "conf/edge.yaml")
    with pytest.raises(ConfigError) as e:
        load_plugins(cfg)
    assert str(e.value) == f"conf/edge.yaml: plugins.cros: unknown plugin (known: {known})"


@pytest.mark.parametrize("data, message", [
    ({"plugins": {"headers": {"sett": {}}}}, "conf/edge.yaml: plugins.headers.sett: unknown key"),
    ({"plugins": {"headers": {"response": {"set": {"Bad Name": "x"}}}}},
     "conf/edge.yaml: plugins.headers.response.set: invalid header name 'Bad Name': must be a token (RFC 9110 §5.1)"),
    ({"plugins": {"headers": {"timeout": "soon"}}},
     "conf/edge.yaml: plugins.headers.timeout: expected a duration such as '2s' or '500ms' (got 'soon')"),
    ({"plugins": {"headers": {"on_failure": "maybe"}}},
     "conf/edge.yaml: plugins.headers.on_failure: Input should be 'closed' or 'open' (got 'maybe')"),
    ({"plugins": {"headers": {"security": True}}, "routes": [{"upstream": "a", "plugins": {"headers": {"security": "often"}}}]},
     "conf/edge.yaml: routes[0].plugins.headers.security: Input should be a valid boolean, unable to interpret input (got 'often')"),
    ({"plugins": {"cors": {"origins": ["*"], "credentials": True}}},
     "conf/edge.yaml: plugins.cors: origins '*' cannot be combined with credentials: true; list the allowed origins"),
])
def test_invalid_settings_name_the_key_path(tmp_path, data, message):
    if "routes" in data:
        data["upstreams"] = UPSTREAMS
    with pytest.raises(ConfigError) as e:
        load_plugins(parse_config(data, "conf/edge.yaml"))
    assert str(e.value) == message


def test_plugin_dir_must_exist(tmp_path):
    cfg = parse_config({"plugin_dirs": [str(tmp_path / "nope")]}, "conf/edge.yaml")
    with pytest.raises(ConfigError) as e:
        load_plugins(cfg)
    assert str(e.value) == f"conf/edge.yaml: plugin_dirs[0]: not a directory: {tmp_path / 'nope'}"


def test_failing_init_refuses_the_load(tmp_path, empty_shipped):
    path = write(tmp_path / "p", "needy.py", '''
        from edge.plugins import Plugin
        class Needy(Plugin):
            name = "needy"
            def __init__(self, config, services):
                raise RuntimeError("no geo database")
    ''')
    with pytest.raises(PluginLoadError) as e:
        load(config(tmp_path, plugins={"needy": {}}), empty_shipped)
    assert str(e.value) == f"{path}: Needy: __init__ failed: RuntimeError: no geo database"


# --------------------------------------------------------------------------- per-route configuration

COUNTER = '''
from pydantic import Field
from edge.plugins import Plugin, PluginConfig

class Tag(Plugin):
    name = "tag"
    priority = 50
    class Config(PluginConfig):
        value: str = "global"
        extra: str = "e"
    def __init__(self, config, services):
        self.value = config.value + "/" + config.extra
    def on_request(self, ctx):
        ctx.headers.set("X-Tag", self.value)
'''


def test_per_route_enable_disable_and_settings_merge(tmp_path, tracers, empty_shipped):
    write(tmp_path / "p", "tag.py", COUNTER)
    cfg = config(tmp_path, plugins={"tag": {"extra": "E"}, "low": {}}, routes=[
        {"upstream": "a"},                                                # inherits global
        {"upstream": "a", "plugins": {"tag": False}},                     # disabled here
        {"upstream": "a", "plugins": {"tag": {"value": "route2"}}},       # merged over global
        {"upstream": "a", "plugins": {"high": {}, "low": False}},         # enabled only here
        {"upstream": "a", "plugins": {"tag": {"extra": "E"}}},            # same effective settings as global
        {"upstream": "a", "plugins": {"tag": True}},                      # explicit enable: global settings
    ])
    reg = load(cfg, empty_shipped)

    def tag_of(chain):
        ctx = make_ctx()
        chain.run_request(ctx)
        return ctx.headers.get("X-Tag")

    assert reg.default_chain.plugin_names == ("tag", "low")
    assert reg.chain_for(0).plugin_names == ("tag", "low") and tag_of(reg.chain_for(0)) == "global/E"
    assert reg.chain_for(1).plugin_names == ("low",) and tag_of(reg.chain_for(1)) is None
    assert tag_of(reg.chain_for(2)) == "route2/E"
    assert reg.chain_for(3).plugin_names == ("high", "tag")
    # one instance per (plugin, effective settings): global tag, route2 tag, low, high
    tag_instances = {id(e.instance) for i in (0, 2, 3, 4, 5) for e, _ in reg.chain_for(i)._request if e.name == "tag"}
    assert len(tag_instances) == 2
    assert len(reg.instances) == 4


def test_present_but_disabled_plugins_are_checked_not_instantiated(tmp_path, empty_shipped):
    write(tmp_path / "p", "tag.py", COUNTER)
    reg = load(config(tmp_path), empty_shipped)
    assert reg.plugin_names == ("tag",) and reg.instances == ()
    assert reg.default_chain.plugin_names == ()


# --------------------------------------------------------------------------- reload


def test_reload_loads_changed_code(tmp_path, empty_shipped):
    src = '''
        from edge.context import Response
        from edge.plugins import Plugin
        class Answer(Plugin):
            name = "answer"
            def on_request(self, ctx):
                return Response(200, body=b"VERSION")
    '''
    path = write(tmp_path / "p", "answer.py", src.replace("VERSION", "v1"))
    cfg = config(tmp_path, plugins={"answer": {}})
    first = load(cfg, empty_shipped)
    assert first.default_chain.run_request(make_ctx()).body == b"v1"
    path.write_text(textwrap.dedent(src.replace("VERSION", "v2 longer")))
    second = load(cfg, empty_shipped)
    assert second.default_chain.run_request(make_ctx()).body == b"v2 longer"
    # the old registry keeps its own code (old workers keep serving)
    assert first.default_chain.run_request(make_ctx()).body == b"v1"
    # a broken file refuses the load; nothing half-built
    path.write_text("raise SystemError('oops')\n")
    with pytest.raises(PluginLoadError, match="import failed: SystemError: oops"):
        load(cfg, empty_shipped)


def test_package_plugin_with_relative_import(tmp_path, empty_shipped):
    write(tmp_path / "p" / "pkg", "helpers.py", "GREETING = 'hi'\n")
    write(tmp_path / "p" / "pkg", "__init__.py", '''
        from edge.plugins import Plugin
        from .helpers import GREETING
        class Pkg(Plugin):
            name = "pkg"
            def on_request(self, ctx):
                ctx.facts["greeting"] = GREETING
    ''')
    chain = load(config(tmp_path, plugins={"pkg": {}}), empty_shipped).default_chain
    ctx = make_ctx()
    chain.run_request(ctx)
    assert ctx.facts["greeting"] == "hi"


# --------------------------------------------------------------------------- contract details


def test_plugin_config_defaults_and_services_extras():
    c = PluginConfig()
    assert (c.timeout, c.on_failure) == (0.25, "closed")  # 4 x the default store.timeout + 50 ms (issue 8)
    assert PluginConfig(timeout="2s").timeout == 2.0
    with pytest.raises(Exception):
        c.timeout = 1   # frozen
    s = Services(store="S", extras={"geo": "G"})
    assert (s.store, s.geo, s.metrics) == ("S", "G", None)
    with pytest.raises(AttributeError, match="no service 'redis'"):
        s.redis


def test_base_class_stubs_are_harmless():
    p = Plugin(PluginConfig(), Services())
    ctx = make_ctx()
    assert p.on_request(ctx) is None and p.on_body(ctx, b"x", False) == b"x"


def test_noop_plugins_overhead_is_a_few_microseconds(tmp_path, empty_shipped):
    """Five plugins defining on_request, on_response, on_log, doing nothing (issue 3 benchmark).

    The bound is generous (a loaded CI machine); the measured figure is ~2 µs."""
    for i in range(5):
        write(tmp_path / "p", f"noop{i}.py", f'''
            from edge.plugins import Plugin
            class Noop{i}(Plugin):
                name = "noop{i}"
                priority = {i}
                def on_request(self, ctx):
                    return None
                def on_response(self, ctx, response):
                    return None
                def on_log(self, ctx):
                    return None
        ''')
    chain = load(config(tmp_path, plugins={f"noop{i}": {} for i in range(5)}), empty_shipped).default_chain
    ctx, resp = make_ctx(), make_upstream_response()

    def one():
        chain.run_request(ctx)
        chain.run_response(ctx, resp)
        chain.run_log(ctx)

    n = 20000
    per_request_us = min(timeit.repeat(one, number=n, repeat=3)) / n * 1e6
    assert per_request_us < 25, per_request_us


def test_response_error_helper_is_what_closed_failures_send():
    assert Response.error(503, "service unavailable").body == b"503 service unavailable\n"


def test_request_body_filter_overrun_ends_upload_with_503(tmp_path, empty_shipped):
    write(tmp_path / "p", "scanner.py", '''
        import gevent
        from edge.plugins import Plugin
        class Scanner(Plugin):
            name = "scanner"
            def on_request_body(self, ctx, chunk, end):
                if chunk == b"slow":
                    gevent.sleep(30)
                return chunk
    ''')
    reg = load(config(tmp_path, plugins={"scanner": {"timeout": "30ms"}}), empty_shipped)
    chain = reg.default_chain
    assert b"".join(chain.filter_request_body(make_ctx(method="POST"), [b"a", b"b"])) == b"ab"
    t0 = time.monotonic()
    with pytest.raises(PluginError) as e:
        list(chain.filter_request_body(make_ctx(method="POST"), [b"a", b"slow"]))
    assert time.monotonic() - t0 < 10  # cut at its budget, long before the plugin's 30 s
    assert (e.value.plugin, e.value.phase, e.value.status) == ("scanner", "on_request_body", 503)
    assert reg.errors[("scanner", "on_request_body")] == 1


def test_run_plugin_isolate_shows_what_the_proxy_would_do(tmp_path):
    from edge.testing import run_plugin
    Raiser = load_plugin_file(write(tmp_path / "p", "raiser.py", RAISER))
    with pytest.raises(RuntimeError, match="boom"):
        run_plugin(Raiser, ctx=make_ctx(path="/boom"))
    run = run_plugin(Raiser, ctx=make_ctx(path="/boom"), isolate=True)
    assert run.status == 500 and run.answered is not None
    assert run.errors == {("raiser", "on_request"): 1, ("raiser", "on_log"): 1}
    run = run_plugin(Raiser, {"on_failure": "open"}, ctx=make_ctx(path="/boom"), isolate=True)
    assert run.status == 200


def test_make_ctx_and_make_upstream_response():
    ctx = make_ctx("post", "/a/b?x=1", {"Accept": "*/*"}, client_ip="192.0.2.7", host="shop.test", scheme="https")
    assert (ctx.method, ctx.path, ctx.query, ctx.client_ip, ctx.peer_ip, ctx.port) == ("post", "/a/b", "x=1", "192.0.2.7", "192.0.2.7", 443)
    assert ctx.headers.items() == [("Accept", "*/*"), ("Host", "shop.test")]
    resp = make_upstream_response(404, {"Content-Type": "text/plain"}, b"nope")
    assert (resp.status, resp.reason, resp.headers.get("Content-Length"), list(resp.body)) == (404, "Not Found", "4", [b"nope"])


# --------------------------------------------------------------------------- failures: throttle, ctx.error, upstream

MOODY = '''
import gevent
from edge.plugins import Plugin

class Moody(Plugin):
    name = "moody"
    priority = 100
    def on_request(self, ctx):
        if ctx.path == "/boom":
            raise RuntimeError("moody bug")
        if ctx.path == "/slow":
            gevent.sleep(1)
        if ctx.path == "/elsewhere":
            ctx.upstream = "nope"
'''


def test_failure_log_throttle_is_per_kind_and_a_burst_ends_with_its_count(tmp_path, empty_shipped, caplog):
    write(tmp_path / "p", "moody.py", MOODY)
    reg = load(config(tmp_path, plugins={"moody": {"timeout": "20ms"}}), empty_shipped,
               Services(logger=logging.getLogger("t")))
    chain = reg.default_chain
    with caplog.at_level(logging.ERROR, logger="t"):
        chain.run_request(make_ctx(path="/boom"))
        chain.run_request(make_ctx(path="/slow"))     # a timeout right after an exception: still shown
        for _ in range(3):
            chain.run_request(make_ctx(path="/boom"))  # inside the burst: counted only
        msgs = [r.getMessage() for r in caplog.records]
        assert len(msgs) == 2
        assert msgs[0].startswith("plugin moody on_request raised RuntimeError: moody bug; request failed "
                                  "(on_failure: closed); request GET /boom")
        assert msgs[1] == "plugin moody on_request overran its budget of 20ms; request failed (on_failure: closed); request GET /slow"
        reg._throttle.flush(now=time.monotonic() + 3600)   # the burst window ends
    assert [r.getMessage() for r in caplog.records][2:] == [
        "plugin moody on_request raised 3 more times in the last 10s (not logged one by one)"]
    assert reg.errors[("moody", "on_request")] == 5


@pytest.mark.parametrize("path, status, metric", [("/boom", 500, "plugin_error"), ("/slow", 503, "plugin_timeout")])
def test_fail_closed_request_failure_is_the_requests_error(tmp_path, empty_shipped, path, status, metric):
    write(tmp_path / "p", "moody.py", MOODY)
    reg = load(config(tmp_path, plugins={"moody": {"timeout": "20ms"}}), empty_shipped)
    ctx = make_ctx(path=path)
    assert reg.default_chain.run_request(ctx).status == status
    assert isinstance(ctx.error, PluginError) and ctx.error.plugin == "moody"
    assert (ctx.error.status, ctx.error.metric) == (status, metric)


def test_fail_open_failure_leaves_no_error(tmp_path, empty_shipped):
    write(tmp_path / "p", "moody.py", MOODY)
    reg = load(config(tmp_path, plugins={"moody": {"on_failure": "open"}}), empty_shipped)
    ctx = make_ctx(path="/boom")
    assert reg.default_chain.run_request(ctx) is None and ctx.error is None


def test_chain_notes_which_plugin_changed_the_upstream(tmp_path, tracers, empty_shipped):
    from edge.plugins import UPSTREAM_SET_BY

    write(tmp_path / "p", "moody.py", MOODY)
    reg = load(config(tmp_path, plugins={"moody": {}, "low": {}, "high": {}}), empty_shipped)
    ctx = make_ctx(path="/elsewhere", upstream="app")
    assert reg.default_chain.run_request(ctx) is None
    assert ctx.upstream == "nope" and ctx.facts[UPSTREAM_SET_BY] == "moody"
    same = make_ctx(path="/", upstream="app")
    reg.default_chain.run_request(same)
    assert UPSTREAM_SET_BY not in same.facts


# --------------------------------------------------------------------------- construction failing in a worker

FLAKY = '''
import os
from edge.plugins import Plugin

class Flaky(Plugin):
    name = "flaky"
    def __init__(self, config, services):
        if os.path.exists({flag!r}):
            raise ConnectionRefusedError("auth service down")
    def on_request(self, ctx):
        ctx.facts["flaky"] = True
'''


@pytest.mark.parametrize("on_failure, status", [("closed", 503), ("open", None)])
def test_init_failure_in_a_worker_follows_on_failure_and_is_retried(tmp_path, empty_shipped, monkeypatch,
                                                                   on_failure, status):
    import edge.plugins as plugins_mod

    monkeypatch.setattr(plugins_mod, "INIT_RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(plugins_mod, "INIT_RETRY_MAX_S", 0.02)
    flag = tmp_path / "down"
    flag.touch()
    write(tmp_path / "p", "flaky.py", FLAKY.format(flag=str(flag)))
    metrics = FakeMetrics()
    cfg = config(tmp_path, plugins={"flaky": {"on_failure": on_failure}})
    with pytest.raises(PluginLoadError):   # without deferral (edge check's strict load) it refuses
        load(cfg, empty_shipped)
    reg = load_plugins(cfg, Services(metrics=metrics), shipped_dir=empty_shipped, defer_init_failures=True)
    assert [e.name for e in reg.pending] == ["flaky"] and reg.instances == ()
    ctx = make_ctx()
    answer = reg.default_chain.run_request(ctx)
    assert (answer.status if answer else None) == status
    assert "flaky" not in ctx.facts
    if status:
        assert ctx.error.metric == "plugin_unavailable"
    reg.start_init_retries()
    try:
        gevent.sleep(0.1)
        assert reg.init_failures["flaky"] >= 2        # retried, counted
        flag.unlink()                                 # the service is back
        deadline = time.monotonic() + 5
        while reg.pending and time.monotonic() < deadline:
            gevent.sleep(0.01)
        ok = make_ctx()
        assert reg.default_chain.run_request(ok) is None and ok.facts["flaky"] is True
        assert reg.pending == () and len(reg.instances) == 1
        assert metrics.counts["plugin.flaky.init_ok"] == 1
        assert metrics.counts["plugin.flaky.init_error"] == reg.init_failures["flaky"]
        assert metrics.counts["plugin.flaky.on_request.unavailable"] == 1
    finally:
        reg.stop_init_retries()


# --------------------------------------------------------------------------- references to pools and routes

POOLED = '''
from edge.plugins import Plugin, PluginConfig, RouteName, UpstreamName

class Pooled(Plugin):
    name = "pooled"
    class Config(PluginConfig):
        pool: UpstreamName = "a"
        skip_route: RouteName | None = None
    def __init__(self, config, services):
        self.names = (services.upstreams, services.routes)
'''


@pytest.mark.parametrize("settings, message", [
    ({"pool": "eu"}, "conf/edge.yaml: plugins.pooled.pool: unknown upstream 'eu' (known: a, b)"),
    ({"skip_route": "nope"}, "conf/edge.yaml: plugins.pooled.skip_route: unknown route 'nope' (known: main)"),
])
def test_plugin_setting_naming_an_unknown_pool_or_route_is_a_config_error(tmp_path, empty_shipped, settings, message):
    write(tmp_path / "p", "pooled.py", POOLED)
    cfg = config(tmp_path, plugins={"pooled": settings},
                 routes=[{"name": "main", "match": {"path": "/"}, "upstream": "a"}])
    with pytest.raises(ConfigError) as e:
        load(cfg, empty_shipped)
    assert str(e.value) == message


def test_services_expose_pool_and_route_names(tmp_path, empty_shipped):
    write(tmp_path / "p", "pooled.py", POOLED)
    cfg = config(tmp_path, plugins={"pooled": {"skip_route": "main"}},
                 routes=[{"name": "main", "match": {"path": "/"}, "upstream": "a"}, {"respond": {"status": 204}}])
    reg = load(cfg, empty_shipped)
    assert reg.instances[0].names == (frozenset(cfg.upstreams), frozenset({"main"}))


# --------------------------------------------------------------------------- construction checked in a child process


@pytest.mark.parametrize("raise_stmt, refused", [
    ("raise RuntimeError('no geo database')", "Flaky: __init__ failed: RuntimeError: no geo database"),
    ("raise ConnectionRefusedError('auth service down')", None),
    ("raise SystemExit(3)", "Flaky: __init__ failed: SystemExit: 3"),   # would halt gunicorn's master
    ("import time; time.sleep(30)", "conf/edge.yaml: plugins: building a worker's state (its plugins) took longer "
                                    "than 2s: a plugin __init__ blocks"),
    ("import os; os._exit(7)", "the process building the worker state died before reporting"),
])
def test_check_construction_in_a_child(tmp_path, empty_shipped, monkeypatch, raise_stmt, refused):
    import edge.plugins as plugins_mod
    from edge.boot import Loaded, check_construction

    write(tmp_path / "p", "flaky.py", f'''
        from edge.plugins import Plugin
        class Flaky(Plugin):
            name = "flaky"
            def __init__(self, config, services):
                {raise_stmt}
    ''')
    monkeypatch.setattr(plugins_mod, "SHIPPED_DIR", empty_shipped)
    cfg = config(tmp_path, plugins={"flaky": {}}, routes=[{"respond": {"status": 204}}],
                 store={"backend": "memory"})
    loaded = Loaded("conf/edge.yaml", cfg, plugins_mod.PluginCatalog(cfg, empty_shipped))
    if refused:
        with pytest.raises(ConfigError) as e:
            check_construction(loaded, timeout_s=2.0)
        assert refused in str(e.value)
    else:
        [warning] = check_construction(loaded)
        assert "Flaky: __init__ failed: ConnectionRefusedError: auth service down (a transient failure" in warning
