"""plugins/headers.py through edge.testing."""

import pytest

from edge.errors import ConfigError
from edge.plugins import SHIPPED_DIR, load_plugin_file
from edge.testing import make_ctx, make_upstream_response, run_plugin

Headers = load_plugin_file(SHIPPED_DIR / "headers.py")


def test_request_operations_remove_then_set_then_add():
    ctx = make_ctx(headers=[("X-Drop", "1"), ("X-Env", "dev"), ("X-Env", "dev2"), ("Accept", "*/*")])
    run = run_plugin(Headers, {"request": {"remove": ["x-drop"], "set": {"X-Env": "prod"}, "add": {"X-Via-Edge": "1", "Accept": "text/html"}}}, ctx=ctx)
    h = run.request_headers
    assert "X-Drop" not in h
    assert h.get_all("X-Env") == ["prod"]
    assert h.get_all("Accept") == ["*/*", "text/html"]
    assert h.get("X-Via-Edge") == "1"


def test_response_operations():
    resp = make_upstream_response(headers={"Server": "apache", "Cache-Control": "no-store"})
    run = run_plugin(Headers, {"response": {"remove": ["Server"], "set": {"Cache-Control": "max-age=60"}, "add": {"X-Cache": "edge"}}}, response=resp)
    assert "Server" not in run.headers
    assert run.headers.get_all("Cache-Control") == ["max-age=60"]
    assert run.headers.get("X-Cache") == "edge"


def test_security_preset_over_https():
    run = run_plugin(Headers, {"security": True}, ctx=make_ctx(scheme="https"))
    assert run.headers.get("Strict-Transport-Security") == "max-age=31536000; includeSubDomains"
    assert run.headers.get("X-Content-Type-Options") == "nosniff"
    assert run.headers.get("X-Frame-Options") == "DENY"
    assert run.headers.get("Referrer-Policy") == "strict-origin-when-cross-origin"
    assert "Content-Security-Policy" not in run.headers


def test_no_hsts_over_plain_http():
    # RFC 6797 §7.2: no STS header field over non-secure transport
    run = run_plugin(Headers, {"security": True}, ctx=make_ctx(scheme="http"))
    assert "Strict-Transport-Security" not in run.headers
    assert run.headers.get("X-Frame-Options") == "DENY"


def test_preset_keeps_backend_values_but_explicit_set_overrides():
    resp = make_upstream_response(headers={"X-Frame-Options": "SAMEORIGIN", "Referrer-Policy": "no-referrer"})
    run = run_plugin(Headers, {"security": True, "response": {"set": {"Referrer-Policy": "same-origin"}}}, response=resp)
    assert run.headers.get_all("X-Frame-Options") == ["SAMEORIGIN"]
    assert run.headers.get_all("Referrer-Policy") == ["same-origin"]


def test_content_security_policy_and_preset_values():
    run = run_plugin(Headers, {"security": True, "content_security_policy": "default-src 'self'", "hsts": "max-age=60",
                               "frame_options": "SAMEORIGIN"}, ctx=make_ctx(scheme="https"))
    assert run.headers.get("Content-Security-Policy") == "default-src 'self'"
    assert run.headers.get("Strict-Transport-Security") == "max-age=60"
    assert run.headers.get("X-Frame-Options") == "SAMEORIGIN"


def test_headers_apply_to_a_replacement_response():
    from edge.context import Response
    resp = make_upstream_response(500)
    resp.replacement = Response(503, [("Content-Type", "text/plain")], b"later")
    run = run_plugin(Headers, {"response": {"add": {"X-A": "1"}}}, response=resp)
    assert run.status == 503 and run.headers.get("X-A") == "1"


def test_body_untouched():
    run = run_plugin(Headers, {"security": True}, body=[b"he", b"llo"])
    assert run.body == b"hello" and run.status == 200


@pytest.mark.parametrize("settings, message", [
    ({"request": {"set": {"X-A": "a\r\nInjected: 1"}}},
     "plugins.headers.request.set: invalid value for header X-A: 'a\\r\\nInjected: 1' contains a control character, a character above U+00FF or surrounding whitespace"),
    ({"response": {"add": {"X-A": "tab\x01"}}},
     "plugins.headers.response.add: invalid value for header X-A: 'tab\\x01' contains a control character, a character above U+00FF or surrounding whitespace"),
    ({"response": {"set": {"X A": "1"}}}, "plugins.headers.response.set: invalid header name 'X A': must be a token (RFC 9110 §5.1)"),
    ({"response": {"remove": ["Bad:Name"]}}, "plugins.headers.response.remove: invalid header name 'Bad:Name': must be a token (RFC 9110 §5.1)"),
    ({"hsts": "max-age=1\nX: y"},
     "plugins.headers.hsts: invalid value for header Strict-Transport-Security: 'max-age=1\\nX: y' contains a control character, a character above U+00FF or surrounding whitespace"),
    ({"content_security_policy": " default-src 'self'"},
     "plugins.headers.content_security_policy: invalid value for header Content-Security-Policy: \" default-src 'self'\" contains a control character, a character above U+00FF or surrounding whitespace"),
    ({"secuirty": True}, "plugins.headers.secuirty: unknown key"),
])
def test_bad_settings_refused_at_load(settings, message):
    with pytest.raises(ConfigError) as e:
        run_plugin(Headers, settings)
    assert str(e.value) == f"<test>: {message}"
