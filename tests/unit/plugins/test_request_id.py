"""plugins/request_id.py through edge.testing."""

import re

import pytest

from edge.plugins import SHIPPED_DIR, load_plugin_file
from edge.testing import make_ctx, run_plugin

RequestId = load_plugin_file(SHIPPED_DIR / "request_id.py")


def test_generates_id_when_absent_and_passes_it_everywhere():
    run = run_plugin(RequestId)
    rid = run.ctx.request_id
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert run.ctx.facts["request_id"] == rid
    assert run.request_headers.get("X-Request-ID") == rid     # to the backend
    assert run.headers.get("X-Request-ID") == rid             # to the client


def test_generated_ids_differ():
    assert run_plugin(RequestId).ctx.request_id != run_plugin(RequestId).ctx.request_id


def test_valid_incoming_id_is_kept():
    run = run_plugin(RequestId, ctx=make_ctx(headers={"x-request-id": "abc-123.def:9"}))
    assert run.ctx.request_id == "abc-123.def:9"
    assert run.request_headers.get_all("X-Request-ID") == ["abc-123.def:9"]
    assert run.headers.get("X-Request-ID") == "abc-123.def:9"


@pytest.mark.parametrize("incoming", ["", "a" * 129, "has space", "semi;colon", "new\nline", "<script>", "ünïcode"])
def test_invalid_incoming_id_is_replaced(incoming):
    run = run_plugin(RequestId, ctx=make_ctx(headers=[("X-Request-ID", incoming)]))
    assert run.ctx.request_id != incoming
    assert re.fullmatch(r"[0-9a-f]{32}", run.ctx.request_id)
    assert run.request_headers.get_all("X-Request-ID") == [run.ctx.request_id]


def test_untrusted_incoming_is_always_replaced_and_uuid_format():
    run = run_plugin(RequestId, {"trust_incoming": False, "format": "uuid"}, ctx=make_ctx(headers={"X-Request-ID": "abc"}))
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", run.ctx.request_id)


def test_custom_header_length_and_no_echo():
    run = run_plugin(RequestId, {"header": "X-Correlation-ID", "max_length": 8, "response": False},
                     ctx=make_ctx(headers={"X-Correlation-ID": "12345678"}))
    assert run.ctx.request_id == "12345678"
    assert run.request_headers.get("X-Correlation-ID") == "12345678"
    assert "X-Correlation-ID" not in run.headers and "X-Request-ID" not in run.headers
    run = run_plugin(RequestId, {"header": "X-Correlation-ID", "max_length": 8}, ctx=make_ctx(headers={"X-Correlation-ID": "123456789"}))
    assert run.ctx.request_id != "123456789"


@pytest.mark.parametrize("header", ["X Request", "X-Id:", "", "X-Id\r\n"])
def test_header_name_that_is_not_a_token_refused_at_load(header):
    with pytest.raises(Exception) as e:
        run_plugin(RequestId, {"header": header})
    assert str(e.value) == f"<test>: plugins.request_id.header: invalid header name {header!r}: must be a token (RFC 9110 §5.1)"
