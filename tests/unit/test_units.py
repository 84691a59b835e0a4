"""Durations, sizes and rates as written in the configuration (edge.units)."""

import pytest

from edge.units import parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("2s", 2.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("2S", 2.0),
        (" 2 s ", 2.0),
        ("10", 10.0),
        ("0", 0.0),
        (3, 3.0),
        (1.5, 1.5),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "value, message",
    [
        ("2x", "expected a duration such as '2s' or '500ms' (got '2x')"),
        ("", "expected a duration such as '2s' or '500ms' (got '')"),
        ("s", "expected a duration such as '2s' or '500ms' (got 's')"),
        ("-1s", "expected a duration such as '2s' or '500ms' (got '-1s')"),
        ("1e3s", "expected a duration such as '2s' or '500ms' (got '1e3s')"),
        (-1, "duration must not be negative (got -1)"),
        (True, "expected a duration such as '2s' or '500ms' (got True)"),
    ],
)
def test_bad_duration(value, message):
    with pytest.raises(ValueError) as e:
        parse_duration(value)
    assert str(e.value) == message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_duration_is_refused(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    "text, n",
    [
        ("10MB", 10_000_000),
        ("10 mb", 10_000_000),
        ("1.5MB", 1_500_000),
        ("1kb", 1000),
        ("1GB", 1_000_000_000),
        ("64KiB", 65536),
        ("64k", 65536),
        ("1.5KiB", 1536),
        ("2M", 2 * 1024**2),
        ("1g", 1024**3),
        ("1GiB", 1024**3),
        ("100", 100),
        ("100b", 100),
        (5, 5),
    ],
)
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize(
    "value, message",
    [
        ("10XB", "expected a size such as '10MB' or '64KiB' (got '10XB')"),
        ("MB", "expected a size such as '10MB' or '64KiB' (got 'MB')"),
        ("-1MB", "expected a size such as '10MB' or '64KiB' (got '-1MB')"),
        (-1, "size must not be negative (got -1)"),
        (True, "expected a size such as '10MB' or '64KiB' (got True)"),
    ],
)
def test_bad_size(value, message):
    with pytest.raises(ValueError) as e:
        parse_size(value)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "text, rate",
    [
        ("100/s", (100.0, 1.0)),
        ("5000/h", (5000.0, 3600.0)),
        ("10/5m", (10.0, 300.0)),
        ("2.5/min", (2.5, 60.0)),
        ("1/day", (1.0, 86400.0)),
        (" 7 / sec ", (7.0, 1.0)),
    ],
)
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "value, message",
    [
        ("0/s", "rate must be positive (got '0/s')"),
        ("1/0s", "rate period must be positive (got '1/0s')"),
        ("abc", "expected a rate such as '100/s' or '5000/h' (got 'abc')"),
        ("10/x", "expected a rate such as '100/s' or '5000/h' (got '10/x')"),
        ("10", "expected a rate such as '100/s' or '5000/h' (got '10')"),
    ],
)
def test_bad_rate(value, message):
    with pytest.raises(ValueError) as e:
        parse_rate(value)
    assert str(e.value) == message
