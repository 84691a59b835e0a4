"""Field syntax checks used by every serialiser and config loader (RFC 9110 §5)."""

import pytest

from edge.fields import field_error, fields_valid, first_invalid_field, is_field_value, is_token


@pytest.mark.parametrize("name,ok", [
    ("Content-Type", True), ("x_y", True), ("!#$%&'*+-.^_`|~", True), ("GET", True),
    ("", False), ("a b", False), ("a:b", False), ("a\r\nb", False), ("é", False), ("(x)", False), ("a\x00", False),
])
def test_token(name, ok):
    assert is_token(name) is ok


@pytest.mark.parametrize("value,ok", [
    ("text/html", True), ("", True), ("a\tb", True), ("caf\xe9", True),
    ("a\r\nX-Evil: 1", False), ("a\nb", False), ("a\rb", False), ("a\x00b", False), ("a\x7fb", False),
    (" lead", False), ("trail ", False), ("\tx", False),
    ("\u20acuro", False), ("caf\u0119", False),           # no latin-1 byte for them: refused, never an encoder crash
])
def test_field_value(value, ok):
    assert is_field_value(value) is ok
    if value == value.strip(" \t"):  # the serialisers' check leaves surrounding whitespace alone
        assert fields_valid([("X-A", value)]) is ok


def test_field_error_names_the_problem():
    assert field_error("X-Ok", "fine") is None
    assert "header name" in field_error("Bad Name", "v")
    assert "X-A" in field_error("X-A", "v\r\nInjected: 1")


def test_fields_valid_and_first_invalid():
    good = [("A", "1"), ("B", "2")]
    assert fields_valid(good) and first_invalid_field(good) is None
    bad = good + [("C", "x\ny")]
    assert not fields_valid(bad)
    assert first_invalid_field(bad) == ("C", "x\ny")


def test_fields_valid_refuses_non_str_and_non_pairs():
    assert not fields_valid([("X-A", 1)])
    assert not fields_valid([(b"X-A", "1")])
    assert first_invalid_field([("X-A", "ok"), ("X-B", 2)]) == ("X-B", 2)
