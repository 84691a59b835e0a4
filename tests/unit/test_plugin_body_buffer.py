"""The whole-request-body opt-in of the plugin contract (issue 11): BodyBuffer, the loader's
check, the per-route need computed at load, Chain.inspect_request_body and run_plugin."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.context import Response
from edge.errors import BodyTooLarge, PluginLoadError
from edge.plugins import BodyBuffer, Plugin, PluginConfig, load_plugin_file, load_plugins
from edge.testing import make_ctx, run_plugin

UPSTREAMS = {"a": {"servers": ["127.0.0.1:9001"]}}

# Answers 403 when the body contains "bad"; records what it saw in ctx.facts.
INSPECTOR = '''
from pydantic import Field
from edge.context import Response
from edge.plugins import BodyBuffer, Plugin, PluginConfig

class {cls}(Plugin):
    name = "{name}"
    priority = {priority}

    class Config(PluginConfig):
        max_bytes: int = Field(0, ge=0)
        oversize: str = "reject"

    @classmethod
    def request_body_buffer(cls, config):
        return BodyBuffer(config.max_bytes, config.oversize) if config.max_bytes else None

    def on_request_body_complete(self, ctx, body, truncated):
        ctx.facts.setdefault("seen", []).append(("{name}", body, truncated))
        if b"bad" in body:
            return Response.error(403, "forbidden")
'''


def write(directory: Path, filename: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    d = tmp_path / "shipped"
    d.mkdir()
    return d


def registry(tmp_path: Path, shipped: Path, **data):
    d = tmp_path / "p"
    write(d, "big.py", INSPECTOR.format(cls="Big", name="big", priority=10))
    write(d, "small.py", INSPECTOR.format(cls="Small", name="small", priority=20))
    data.setdefault("plugin_dirs", [str(d)])
    data.setdefault("upstreams", UPSTREAMS)
    return load_plugins(parse_config(data, "conf/edge.yaml"), shipped_dir=shipped)


def test_body_buffer_validates_and_combines():
    with pytest.raises(ValueError, match="max_bytes"):
        BodyBuffer(0)
    with pytest.raises(ValueError, match="oversize"):
        BodyBuffer(10, "partial")  # type: ignore[arg-type]
    assert BodyBuffer.combine([]) is None
    assert BodyBuffer.combine([BodyBuffer(10, "truncate"), BodyBuffer(5)]) == BodyBuffer(10, "reject")
    assert BodyBuffer.combine([BodyBuffer(10, "truncate"), BodyBuffer(50, "truncate")]) == BodyBuffer(50, "truncate")


def test_loader_refuses_hook_without_declaration(tmp_path):
    path = write(tmp_path, "nodecl.py", '''
        from edge.plugins import Plugin
        class NoDecl(Plugin):
            name = "nodecl"
            def on_request_body_complete(self, ctx, body, truncated):
                return None
    ''')
    with pytest.raises(PluginLoadError, match="on_request_body_complete needs a request_body_buffer"):
        load_plugin_file(path)


def test_loader_refuses_declaration_that_is_not_a_classmethod(tmp_path):
    path = write(tmp_path, "plain.py", '''
        from edge.plugins import Plugin, BodyBuffer
        class Plain(Plugin):
            name = "plain"
            def request_body_buffer(self, config):
                return BodyBuffer(10)
            def on_request_body_complete(self, ctx, body, truncated):
                return None
    ''')
    with pytest.raises(PluginLoadError, match="request_body_buffer must be a classmethod"):
        load_plugin_file(path)


def test_route_need_is_known_at_load_and_per_route(tmp_path, shipped):
    reg = registry(tmp_path, shipped, plugins={"big": {"max_bytes": 100}}, routes=[
        {"name": "off", "match": {"path": "/off"}, "upstream": "a", "plugins": {"big": {"max_bytes": 0}}},
        {"name": "both", "match": {"path": "/both"}, "upstream": "a",
         "plugins": {"small": {"max_bytes": 10, "oversize": "truncate"}}},
        {"name": "plain", "match": {"path": "/"}, "upstream": "a", "plugins": {"big": False}},
    ])
    assert reg.default_chain.request_body_buffer == BodyBuffer(100)
    assert reg.chain_for(0).request_body_buffer is None   # settings say no: the body streams
    assert reg.chain_for(1).request_body_buffer == BodyBuffer(100, "reject")
    assert reg.chain_for(2).request_body_buffer is None


def test_inspect_replays_body_with_its_length(tmp_path, shipped):
    chain = registry(tmp_path, shipped, plugins={"big": {"max_bytes": 100}}).default_chain
    ctx = make_ctx(method="POST")
    answer, chunks, length = chain.inspect_request_body(ctx, iter([b"ab", b"cd", b"e"]), None)   # chunked in
    assert answer is None
    assert b"".join(chunks) == b"abcde" and length == 5                                     # sized out
    assert ctx.facts["seen"] == [("big", b"abcde", False)]


def test_inspect_answers_before_anything_is_sent(tmp_path, shipped):
    chain = registry(tmp_path, shipped, plugins={"big": {"max_bytes": 100}}).default_chain
    answer, chunks, length = chain.inspect_request_body(make_ctx(method="POST"), iter([b"a bad", b" body"]), None)
    assert isinstance(answer, Response) and answer.status == 403
    assert tuple(chunks) == () and length is None


def test_oversize_reject_from_content_length_reads_nothing(tmp_path, shipped):
    chain = registry(tmp_path, shipped, plugins={"big": {"max_bytes": 4}}).default_chain
    read = []

    def stream():
        read.append(1)
        yield b"12345"

    with pytest.raises(BodyTooLarge):
        chain.inspect_request_body(make_ctx(method="POST"), stream(), 5)
    assert read == []
    with pytest.raises(BodyTooLarge):   # chunked: refused once the cap is crossed
        chain.inspect_request_body(make_ctx(method="POST"), iter([b"12", b"345", b"never"]), None)


def test_oversize_truncate_inspects_prefix_and_streams_the_rest(tmp_path, shipped):
    chain = registry(tmp_path, shipped, plugins={"big": {"max_bytes": 4, "oversize": "truncate"}}).default_chain
    ctx = make_ctx(method="POST")
    answer, chunks, length = chain.inspect_request_body(ctx, iter([b"123", b"456", b"789"]), 9)
    assert answer is None
    assert b"".join(chunks) == b"123456789" and length == 9
    assert ctx.facts["seen"] == [("big", b"1234", True)]


def test_each_plugin_sees_its_own_cap(tmp_path, shipped):
    chain = registry(tmp_path, shipped, plugins={"big": {"max_bytes": 10},
                                                 "small": {"max_bytes": 3, "oversize": "truncate"}}).default_chain
    ctx = make_ctx(method="POST")
    answer, chunks, length = chain.inspect_request_body(ctx, iter([b"abcdef"]), 6)
    assert answer is None and length == 6
    # request order: small (20) before big (10)
    assert chain.hooks("on_request_body_complete") == ("small", "big")
    assert ctx.facts["seen"] == [("small", b"abc", True), ("big", b"abcdef", False)]


class Echo(Plugin):
    name = "echo_body"

    class Config(PluginConfig):
        pass

    @classmethod
    def request_body_buffer(cls, config):
        return BodyBuffer(8)

    def on_request_body_complete(self, ctx, body, truncated):
        if body.startswith(b"no"):
            return Response.error(403, "forbidden")
        return None


def test_run_plugin_runs_the_whole_body_hook():
    assert run_plugin(Echo, ctx=make_ctx(method="POST"), request_body=b"no way").status == 403
    run = run_plugin(Echo, ctx=make_ctx(method="POST"), request_body=[b"ok", b" fine"])
    assert run.status == 200 and run.request_body == b"ok fine"
    assert run_plugin(Echo, ctx=make_ctx(method="POST"), request_body=b"123456789").status == 413
