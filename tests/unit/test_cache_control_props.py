"""Property tests (hypothesis) for the parsers of edge.cache.policy: Cache-Control (RFC 9111 §5.2),
Age (§5.1), delta-seconds (§1.2.2), targeted fields (RFC 9213 / RFC 8941) and Range (RFC 9110 §14)."""

from __future__ import annotations

import string

from hypothesis import given, settings, strategies as st

from edge.cache import policy as P

# no example database: the suite leaves no files behind, and runs stay independent
settings.register_profile("edge", max_examples=200, deadline=None, database=None)
settings.load_profile("edge")

TCHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
names = st.text(alphabet=string.ascii_lowercase + "-", min_size=1, max_size=12).filter(
    lambda s: s.strip("-") == s)
tokens = st.text(alphabet=TCHARS, min_size=1, max_size=10)
qtext = st.text(alphabet=string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "")
                .replace("\x0c", ""), max_size=15)
values = st.one_of(st.none(), st.integers(0, 10**12).map(str), tokens, qtext)
ows = st.sampled_from(["", " ", "  ", "\t", " \t "])


def quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(name: str, value: str | None, data) -> str:
    """One directive as a sender might write it: any case, token or quoted form, OWS."""
    shown = "".join(c.upper() if data.draw(st.booleans()) else c for c in name)
    if value is None:
        return shown
    as_token = value and all(c in TCHARS for c in value) and data.draw(st.booleans())
    return shown + "=" + (value if as_token else quote(value))


@given(st.text(max_size=200))
def test_parse_never_raises(text):
    cc = P.parse_cache_control([text])
    for prop in ("max_age", "s_maxage", "no_cache", "private", "max_stale", "min_fresh",
                 "stale_while_revalidate", "stale_if_error", "no_store", "public"):
        getattr(cc, prop)
    assert all(k == k.lower() for k in cc.directives)


@given(st.lists(st.tuples(names, values), max_size=8, unique_by=lambda t: t[0]), st.data())
def test_round_trip_order_case_whitespace(directives, data):
    parts = [render(n, v, data) for n, v in directives]
    perm = data.draw(st.permutations(parts))
    sep = data.draw(ows) + "," + data.draw(ows)
    text = data.draw(ows) + sep.join(perm) + data.draw(ows)
    # split the list over several field lines at arbitrary member boundaries (RFC 9110 §5.3)
    cut = data.draw(st.integers(0, len(perm)))
    lines = [sep.join(perm[:cut]), sep.join(perm[cut:])]
    expected = {n: v for n, v in directives}
    assert dict(P.parse_cache_control([text]).directives) == expected
    assert dict(P.parse_cache_control(lines).directives) == expected


@given(st.integers(0, 10**15), st.booleans())
def test_delta_seconds_value_and_cap(n, quoted):
    v = quote(str(n)) if quoted else str(n)
    assert P.parse_cache_control([f"max-age={v}"]).max_age == min(n, P.DELTA_MAX)


@given(st.integers(-10**6, -1))
def test_negative_delta_is_invalid(n):
    assert P.parse_cache_control([f"s-maxage={n}"]).s_maxage == -1


@given(st.integers(0, 1000), st.integers(0, 1000))
def test_conflicting_repeats_are_stale_identical_ones_are_not(a, b):
    cc = P.parse_cache_control([f"max-age={a}", f"max-age={b}"])
    assert cc.max_age == (a if a == b else -1)


@given(st.text(max_size=60))
def test_age_never_raises(text):
    r = P.parse_age([text])
    assert r is None or 0 <= r <= P.DELTA_MAX


@given(st.integers(0, 10**14), st.lists(st.integers(0, 10**6), max_size=3), ows, ows)
def test_age_first_member(n, rest, a, b):
    value = a + ", ".join(str(x) for x in [n, *rest]) + b
    assert P.parse_age([value]) == min(n, P.DELTA_MAX)
    assert P.parse_age([str(n), *map(str, rest)]) == min(n, P.DELTA_MAX)


@given(st.text(alphabet=string.digits + "-+. abcx", min_size=1, max_size=12))
def test_age_non_integer_ignored(text):
    expected = min(int(text.strip()), P.DELTA_MAX) if text.strip().isdigit() and "," not in text else None
    assert P.parse_age([text]) == expected


@given(st.text(max_size=120))
def test_targeted_field_never_raises(text):
    P.parse_sf_dictionary(text)
    P.effective_cache_control([("CDN-Cache-Control", text), ("Cache-Control", "max-age=5")], P.DEFAULT_SETTINGS)


@given(st.lists(st.tuples(names.filter(lambda s: s[0].isalpha()), st.integers(0, 10**9)), min_size=1,
                max_size=5, unique_by=lambda t: t[0]))
def test_targeted_dictionary_matches_cache_control(items):
    text = ", ".join(f"{n}={v}" for n, v in items)
    cc, targeted = P.effective_cache_control([("CDN-Cache-Control", text)], P.DEFAULT_SETTINGS)
    assert targeted and dict(cc.directives) == dict(P.parse_cache_control([text]).directives)


@given(st.text(max_size=40), st.integers(0, 10**6))
def test_ranges_never_raise_and_stay_in_bounds(text, length):
    d = P.ranges(text, None, length, [])
    assert d.status in (200, 206, 416)
    if d.status == 206:
        assert 0 <= d.start <= d.end < length
        assert d.content_range == f"bytes {d.start}-{d.end}/{length}"


@given(st.lists(st.tuples(st.sampled_from(["A", "a", "B"]), st.text(max_size=10)), max_size=5), st.data())
def test_secondary_key_whitespace_around_commas(headers, data):
    # §4.1: "adding or removing whitespace, where allowed in the header field's syntax"
    padded = [(k, data.draw(ows) + ("," + data.draw(ows)).join(v.split(",")) + data.draw(ows))
              for k, v in headers]
    assert P.secondary_key(["a", "b"], headers) == P.secondary_key(["A", "B"], padded)


@given(st.floats(0, 1e6), st.floats(0, 1e6))
def test_current_age_grows_with_time(dt1, dt2):
    f = P.response_facts(1e9, 1e9, 200, [("Cache-Control", "max-age=60")])
    lo, hi = sorted((dt1, dt2))
    assert P.current_age(f, 1e9 + lo) <= P.current_age(f, 1e9 + hi)


field_names = st.sampled_from(["Cache-Control", "CDN-Cache-Control", "Expires", "Date", "Age", "Last-Modified",
                               "ETag", "Vary", "Pragma", "If-None-Match", "If-Modified-Since", "Set-Cookie",
                               "Authorization", "Connection", "X-Other"])
header_lists = st.lists(st.tuples(field_names, st.text(max_size=40)), max_size=8)


@given(header_lists, header_lists, st.integers(100, 599), st.floats(-1e6, 1e7, allow_nan=False), st.booleans())
def test_policy_never_raises_on_any_fields(resp, req, status, dt, down):
    # whatever an origin or client sends, the policy answers with a value, never an exception
    t0 = 1.8e9
    P.storable("GET", status, req, resp)
    stored = P.headers_to_store(resp, t0)
    f = P.response_facts(t0, t0, status, stored)
    d = P.lookup("GET", req, f, t0 + dt, origin_down=down)
    assert type(d) in (P.Fresh, P.ServeStale, P.Revalidate, P.Fetch, P.OnlyIfCachedMiss)
    P.stale_on_error(f, t0 + dt, P.DEFAULT_SETTINGS, 503, req)
    P.client_conditional("GET", req, stored, t0)
    P.merge_304(stored, resp, t0)
    P.select_by_validator(resp, [f])
    P.secondary_key(f.vary, req)
    P.invalidation_targets("POST", 200, "http://h/p", resp)
    assert P.age_header(P.current_age(f, t0 + dt)).isdigit()
