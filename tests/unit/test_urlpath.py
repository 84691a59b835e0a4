"""Path normalisation (edge.urlpath): RFC 3986 §6.2.2 and §5.2.4, and what it refuses."""

import pytest

from edge.urlpath import normalize_path


@pytest.mark.parametrize(
    "raw, expected",
    [
        # unchanged (fast path)
        ("/", "/"),
        ("/api/v1/users/42", "/api/v1/users/42"),
        ("/admin/", "/admin/"),
        ("/a.b/c..d/.well", "/a.b/c..d/.well"),
        ("/.well-known/acme", "/.well-known/acme"),
        ("/ADMIN", "/ADMIN"),
        ("/caf\xe9", "/caf\xe9"),
        # unreserved escapes decoded, in either case of hex
        ("/%61dmin", "/admin"),
        ("/%41%5a%7e%2D%2e%5F%30", "/AZ~-._0"),
        # other escapes kept, hex upper-cased
        ("/a%2fb", "/a%2Fb"),
        ("/a%2Fb", "/a%2Fb"),
        ("/%20x%3a", "/%20x%3A"),
        ("/%e9", "/%E9"),
        # decoded once only
        ("/%2561dmin", "/%2561dmin"),
        # duplicate slashes
        ("//admin", "/admin"),
        ("/a///b//", "/a/b/"),
        # dot segments, never above the root
        ("/./admin", "/admin"),
        ("/x/../admin", "/admin"),
        ("/../admin", "/admin"),
        ("/../../..", "/"),
        ("/admin/.", "/admin"),
        ("/admin/..", "/"),
        ("/a/b/../c/./d", "/a/c/d"),
        ("/a/b/../", "/a/"),
        ("/.", "/"),
        ("/..", "/"),
        # everything together: decoded dots are dot segments
        ("/%2e%2e/%2E/admin", "/admin"),
        ("/x/%2e%2e//%61dmin/.", "/admin"),
        # %2F is not a separator, so this is one segment and no dot segment
        ("/a%2F..%2Fadmin", "/a%2F..%2Fadmin"),
        # asterisk-form (OPTIONS *)
        ("*", "*"),
    ],
)
def test_normalize_path(raw, expected):
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("", "must start with '/'"),
        ("admin", "must start with '/'"),
        ("http://example.com/", "must start with '/'"),
        ("**", "must start with '/'"),
        ("/a\x00b", "control character"),
        ("/a\nb", "control character"),
        ("/a\tb", "control character"),
        ("/a\x7fb", "control character"),
        ("/a%zz", "invalid percent escape"),
        ("/a%4", "invalid percent escape"),
        ("/a%", "invalid percent escape"),
    ],
)
def test_refused_targets(raw, reason):
    with pytest.raises(ValueError, match=reason):
        normalize_path(raw)


def test_normalisation_is_idempotent():
    for raw in ("/%61dmin/./x/../y//z/.", "/a%2fb/%7e", "/../..", "/a/b/"):
        once = normalize_path(raw)
        assert normalize_path(once) == once


def test_fast_path_returns_the_same_object():
    raw = "/api/v1/users/42"
    assert normalize_path(raw) is raw


# --------------------------------------------------------------------------- encoded slashes (issue 7)

from edge.urlpath import decode_slashes, has_slash_forms, slash_interpretations  # noqa: E402


@pytest.mark.parametrize("path, expected", [
    ("/api/x", ()),
    ("/a%20b", ()),
    ("/a%252Fb", ("/a%2Fb", "/a/b")),                    # decoded twice: %2F, then a slash
    ("/p/..%2Fadmin", ("/admin",)),
    ("/a%2Fb", ("/a/b",)),
    ("/a\\b", ("/a/b",)),
    ("/a%2F..%5C..%5Cb", ("/a/..%5C..%5Cb", "/b")),    # %2F alone; %5C alone and both give /b
    ("/x%2F..%2F..%2Fadmin", ("/admin",)),
    ("/p%2F..%5C..\\admin", ("/..\\admin", "/admin", "/p%2F..%5C../admin", "/p%2F../..\\admin",
                              "/p/..%5C../admin", "/p/..%5C..\\admin")),   # all 7 combinations, 6 distinct
])
def test_slash_interpretations(path, expected):
    assert slash_interpretations(normalize_path(path)) == expected


@pytest.mark.parametrize("path, expected", [
    ("/files/a%2Fb", "/files/a/b"), ("/a%5C..%2Fb", "/b"), ("/a\\\\b", "/a/b"), ("/plain", "/plain"),
])
def test_decode_slashes(path, expected):
    assert decode_slashes(normalize_path(path)) == expected


def test_has_slash_forms_is_false_for_plain_paths():
    assert not has_slash_forms("/api/v1/users/42")
    assert not has_slash_forms("/a%20b")
    assert has_slash_forms("/a%2Fb") and has_slash_forms("/a%5Cb") and has_slash_forms("/a\\b")


# --------------------------------------------------------------------------- double decoding, NUL (issue 7 part 2.8)


@pytest.mark.parametrize("path, reading", [
    ("/x/%252e%252e/admin", "/admin"),       # decoded twice: %252e -> %2e -> .
    ("/%2561dmin", "/admin"),
    ("/p/..%252Fadmin", "/admin"),           # %252F -> %2F -> /, then dot segments
])
def test_double_decoding_is_one_more_reading(path, reading):
    assert reading in slash_interpretations(normalize_path(path))


def test_percent_25_alone_has_no_other_reading_than_itself_decoded():
    assert slash_interpretations("/100%25") == ()  # "%" alone is invalid: no reading a backend could route


@pytest.mark.parametrize("path", ["/admin%00.html", "/a/%00", "/%00"])
def test_encoded_nul_is_refused(path):
    with pytest.raises(ValueError):
        normalize_path(path)
