"""plugins/limits.py through edge.testing: each status, the boundaries, the streaming body count."""

from __future__ import annotations

import pytest

from edge.errors import BodyTooLarge, ConfigError
from edge.plugins import SHIPPED_DIR, load_plugin_file
from edge.testing import make_ctx, make_plugin, run_plugin

Limits = load_plugin_file(SHIPPED_DIR / "limits.py")


def status(settings, **ctx):
    return run_plugin(Limits, settings, ctx=make_ctx(**ctx)).status


def test_method_not_allowed_carries_allow():
    run = run_plugin(Limits, {"methods": ["GET", "POST"]}, ctx=make_ctx("DELETE", "/x"))
    assert run.status == 405
    assert run.headers.get("Allow") == "GET, POST, HEAD"


@pytest.mark.parametrize("method,expected", [("GET", 200), ("HEAD", 200), ("POST", 200), ("PUT", 405),
                                             ("OPTIONS", 405), ("get", 405)])
def test_methods(method, expected):
    assert status({"methods": ["GET", "POST"]}, method=method) == expected


def test_head_only_with_get():
    assert status({"methods": ["POST"]}, method="HEAD") == 405
    assert run_plugin(Limits, {"methods": ["POST"]}, ctx=make_ctx("GET")).headers.get("Allow") == "POST"


# a limit of 20 bytes over path + "?" + query
URI = [("/" + "a" * 19, 200), ("/" + "a" * 20, 414), ("/abc?q=" + "x" * 13, 200), ("/abc?q=" + "x" * 14, 414)]


@pytest.mark.parametrize("target,expected", URI)
def test_uri_length_counts_path_and_query(target, expected):
    assert status({"max_uri_length": 20}, path=target) == expected


def test_uri_length_is_the_raw_target():
    # /./a/../b normalises to /b, but the client sent 9 bytes
    assert status({"max_uri_length": 8}, path="/./a/../b") == 414


def test_header_count():
    hs = {f"X-{i}": "v" for i in range(4)}           # + Host = 5 fields
    assert status({"max_header_count": 5}, headers=hs) == 200
    assert status({"max_header_count": 4}, headers=hs) == 431


def test_header_bytes_counted_as_on_the_wire():
    hs = {"X-A": "12345"}                             # "X-A: 12345\r\n" = 12, "Host: example.com\r\n" = 19
    assert status({"max_header_bytes": 31}, headers=hs) == 200
    assert status({"max_header_bytes": 30}, headers=hs) == 431
    assert status({"max_header_bytes": "1KiB"}, headers={"X-Big": "v" * 1100}) == 431


def test_content_length_over_the_limit_refused_before_the_body():
    ctx = make_ctx("POST", "/up", headers={"Content-Length": "11"})
    run = run_plugin(Limits, {"max_body_size": 10}, ctx=ctx, request_body=b"x" * 11)
    assert run.status == 413 and run.answered is not None
    ok = make_ctx("POST", "/up", headers={"Content-Length": "10"})
    run = run_plugin(Limits, {"max_body_size": 10}, ctx=ok, request_body=b"x" * 10)
    assert run.status == 200 and run.request_body == b"x" * 10


def test_streaming_count_refuses_the_chunk_that_crosses():
    p = make_plugin(Limits, {"max_body_size": "10B"})
    ctx = make_ctx("POST", "/up", headers={"Transfer-Encoding": "chunked"})
    assert p.on_request(ctx) is None
    assert p.on_request_body(ctx, b"x" * 6, False) is None
    assert p.on_request_body(ctx, b"x" * 4, False) is None       # exactly 10: admitted
    assert p.on_request_body(ctx, b"", True) is None
    with pytest.raises(BodyTooLarge) as e:
        p.on_request_body(ctx, b"x", False)
    assert e.value.status == 413


def test_body_over_the_limit_through_the_chain_is_a_413_not_a_plugin_failure():
    ctx = make_ctx("POST", "/up", headers={"Transfer-Encoding": "chunked"})
    with pytest.raises(BodyTooLarge):
        run_plugin(Limits, {"max_body_size": 5}, ctx=ctx, request_body=b"x" * 6, isolate=True)


def test_no_body_limit_defines_no_body_filter():
    from edge.plugins import Chain, _Entry
    p = make_plugin(Limits, {"methods": ["GET"]})
    chain = Chain([_Entry("limits", p, p_config := Limits.Config(), "limits.py", Limits)], lambda *a: None)
    assert not chain.has_request_body_filters
    q = make_plugin(Limits, {"max_body_size": 5})
    assert Chain([_Entry("limits", q, p_config, "limits.py", Limits)], lambda *a: None).has_request_body_filters


@pytest.mark.parametrize("settings,reason", [({"methods": ["GE T"]}, "not a method"),
                                             ({"max_uri_length": 0}, "greater than 0"),
                                             ({"max_body_size": "ten"}, "max_body_size")])
def test_bad_settings(settings, reason):
    with pytest.raises(ConfigError, match=reason):
        make_plugin(Limits, settings)


def test_nothing_configured_admits_everything():
    assert status({}, method="BREW", path="/" + "a" * 10000, headers={f"X-{i}": "v" for i in range(200)}) == 200
