"""edge.cache.validators: the entity tags a Vary miss offers and the variant a 304 selects
(RFC 9111 §4.1, §4.3.1, §4.3.4), from tables."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from edge.cache import validators as v
from edge.cache.validators import Known


def K(etag: str, key: str, at: float) -> Known:
    return Known(etag, key, at)


@pytest.mark.parametrize("etag,ok", [
    ('"abc"', True),
    ('W/"abc"', True),
    ('""', True),                         # RFC 9110 §8.8.3: *etagc, may be empty
    ('"a\x80b"', True),                   # obs-text
    ("abc", False),                       # unquoted: not an entity-tag, cannot go in If-None-Match
    ('"a"b"', False),                     # DQUOTE inside
    ('"a b"', False),                     # SP is no etagc
    ('w/"abc"', False),                   # the weak indicator is case-sensitive
    (None, False),
    ('"' + "x" * (v.MAX_ETAG_CHARS - 2) + '"', True),
    ('"' + "x" * (v.MAX_ETAG_CHARS - 1) + '"', False),   # too long to list
])
def test_listable(etag, ok):
    assert v.listable(etag) is ok


def test_noted_appends_newest_last_and_replaces_the_same_record():
    a = v.noted((), '"a"', "k1", 1.0)
    assert a == (K('"a"', "k1", 1.0),)
    b = v.noted(a, '"b"', "k2", 2.0)
    assert b == (K('"a"', "k1", 1.0), K('"b"', "k2", 2.0))
    # the record at k1 now holds another representation: its old tag goes
    c = v.noted(b, '"c"', "k1", 3.0)
    assert c == (K('"b"', "k2", 2.0), K('"c"', "k1", 3.0))


def test_noted_has_nothing_to_write_when_listed_or_unlistable():
    known = (K('"a"', "k1", 1.0),)
    assert v.noted(known, '"a"', "k1", 5.0) is None
    assert v.noted(known, "unquoted", "k2", 5.0) is None


def test_noted_keeps_the_most_recent():
    known: tuple[Known, ...] = ()
    for i in range(v.MAX_KNOWN + 3):
        known = v.noted(known, f'"t{i}"', f"k{i}", float(i))
    assert len(known) == v.MAX_KNOWN
    assert [k.etag for k in known] == [f'"t{i}"' for i in range(3, v.MAX_KNOWN + 3)]


def test_if_none_match_lists_each_tag_once_newest_first():
    known = (K('"a"', "k1", 1.0), K('W/"b"', "k2", 2.0), K('"a"', "k3", 3.0))
    assert v.if_none_match(known) == '"a", W/"b"'
    assert v.if_none_match(()) is None


KNOWN = (K('"s"', "k1", 1.0), K('"s"', "k2", 3.0), K('W/"w"', "k3", 2.0), K('"w"', "k4", 4.0), K('W/"x"', "k5", 5.0))


@pytest.mark.parametrize("etag,keys", [
    # §4.3.4 a strong validator: every stored response with the same strong validator
    ('"s"', ["k2", "k1"]),
    ('  "s" ', ["k2", "k1"]),
    ('"w"', ["k4"]),                   # strong comparison: W/"w" at k3 is not it
    ('"x"', []),                       # only a weak one stored: "MUST NOT use the new response"
    ('"zz"', []),
    # a weak validator: the most recent stored response it corresponds to (weak comparison)
    ('W/"w"', ["k4"]),
    ('W/"s"', ["k2"]),
    ('W/"x"', ["k5"]),
    ('W/"zz"', []),
    (None, []),                        # no validator: several were offered, none is named
])
def test_selected(etag, keys):
    headers = [("ETag", etag)] if etag is not None else [("Date", "Mon, 30 Nov 2026 12:00:00 GMT")]
    assert [k.record_key for k in v.selected(headers, KNOWN)] == keys


@pytest.mark.parametrize("raw", [None, b"", b"\x00junk", b"garbage", __import__("marshal").dumps((2, ())),
                                 __import__("marshal").dumps([1, 2]), __import__("marshal").dumps((1, ((1,),)))])
def test_decode_of_anything_else_is_empty(raw):
    assert v.decode(raw) == ()


@given(st.lists(st.tuples(st.from_regex(r'(W/)?"[a-z0-9]{0,8}"', fullmatch=True), st.text(max_size=20),
                          st.floats(min_value=0, max_value=2e9, allow_nan=False)), max_size=12))
def test_encode_decode_round_trip(entries):
    known: tuple[Known, ...] = ()
    for etag, key, at in entries:
        known = v.noted(known, etag, key, at) or known
    assert v.decode(v.encode(known)) == known
    assert len(known) <= v.MAX_KNOWN
    assert len({k.record_key for k in known}) == len(known)   # one tag per record


def test_combined_joins_the_index_tag_and_the_list_one_per_record():
    index_tags = (('"a"', "k1", 1.0),)
    listed = (K('"b"', "k2", 2.0), K('"c"', "k1", 3.0))   # k1 was replaced by another representation since
    assert v.combined(index_tags, listed) == (K('"b"', "k2", 2.0), K('"c"', "k1", 3.0))
    assert v.combined(index_tags, ()) == (K('"a"', "k1", 1.0),)
    assert v.combined((), ()) == ()
    # an older note of a record does not hide the newer one in the index
    assert v.combined((('"n"', "k1", 5.0),), (K('"o"', "k1", 4.0),)) == (K('"n"', "k1", 5.0),)


def test_vary_index_carries_its_first_tag_and_reads_records_without_one():
    import marshal

    from edge.cache import records

    idx = records.VaryIndex(("accept-encoding",), "g1", 0.0, (('"a"', "c:v:x", 1.5),))
    assert records.decode(idx.encode()) == idx
    plain = records.VaryIndex(("accept-encoding",), "g1")
    assert records.decode(plain.encode()) == plain
    # a record of the version before tags (five members) still decodes
    old = marshal.dumps((records.FORMAT, "v", ("accept-encoding",), "g1", 2.0))
    assert records.decode(old) == records.VaryIndex(("accept-encoding",), "g1", 2.0)
