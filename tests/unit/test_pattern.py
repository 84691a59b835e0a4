"""Client-facing patterns (edge.pattern): RE2 semantics where they matter to routes, refusals, templates."""

import re

import pytest

from edge.pattern import check_template, compile_client_pattern

CASES = [
    (r"^/api/v[0-9]+/users/[0-9]+$", ["/api/v1/users/42", "/api/v1/users/42/", "/api/vx/users/1", "/", ""]),
    (r"/static/.*\.(css|js)$", ["/static/a.css", "/static/a/b.js", "/static/a.cssx", "/x/static/a.css"]),
    (r"(?i)/admin", ["/ADMIN", "/Admin/x", "/adm", "/x/admin"]),
    (r"/é+", ["/éé", "/e", "/é/x"]),
    (r"a|b", ["a", "b", "xa", ""]),
    (r"", ["", "/x"]),
]


@pytest.mark.parametrize("pattern, texts", CASES)
def test_match_search_fullmatch_agree_with_re_on_route_patterns(pattern, texts):
    p, r = compile_client_pattern(pattern), re.compile(pattern)
    for t in texts:
        assert p.match(t) is (r.match(t) is not None), t
        assert p.search(t) is (r.search(t) is not None), t
        assert p.fullmatch(t) is (r.fullmatch(t) is not None), t


def test_exponential_pattern_answers_on_a_hostile_input():
    # Python's re needs about 2^40 steps here; the assertion is on the answer, not the time.
    p = compile_client_pattern(r"^/api/(\w+)+/x$")
    assert p.match("/api/" + "a" * 40 + "/y") is False
    assert p.match("/api/abc/x") is True


@pytest.mark.parametrize("pattern, reason", [
    (r"(a)\1", "invalid escape sequence: \\1"),
    (r"(?=x)", "invalid perl operator: (?="),
    (r"(?<!x)y", "invalid perl operator: (?<!"),
    ("(", "missing ): ("),
])
def test_patterns_re2_cannot_run_are_refused(pattern, reason):
    with pytest.raises(ValueError) as e:
        compile_client_pattern(pattern)
    assert str(e.value) == f"bad regular expression {pattern!r}: {reason} (RE2 syntax: no backreferences, no lookaround)"


def test_sub_and_templates():
    p = compile_client_pattern(r"^/old/(?P<rest>.*)$")
    assert p.sub(r"/new/\g<rest>", "/old/a/b") == "/new/a/b"
    assert p.sub(r"/n/\1", "/old/x") == "/n/x"
    check_template(p, r"\1")
    with pytest.raises(ValueError, match="invalid group reference 2"):
        check_template(p, r"\2")
    with pytest.raises(ValueError, match="unknown group name 'bad'"):
        check_template(p, r"\g<bad>")
