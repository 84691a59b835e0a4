"""edge.cache.tee: the copy a fill keeps while the body streams, and the one on_end call
however the stream ends (read through, abandoned before or after its first chunk, failed)."""

from __future__ import annotations

import pytest

from edge.cache.tee import tee


class Body:
    def __init__(self, chunks, fail_at: int | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_at = fail_at
        self.closed = 0

    def __iter__(self):
        for i, c in enumerate(self.chunks):
            if i == self.fail_at:
                raise OSError("backend gone")
            yield c

    def close(self) -> None:
        self.closed += 1


def run(body, cap=100, consume=None):
    ends, overflows = [], []
    t = tee(body, cap, lambda copy, size, intact: ends.append((copy, size, intact)), lambda: overflows.append(1))
    got = []
    if consume is None:
        got = list(t)
    else:
        for _ in range(consume):
            got.append(next(t))
    return t, got, ends, overflows


def test_read_through_keeps_the_copy_and_ends_once():
    body = Body([b"ab", b"cd"])
    t, got, ends, overflows = run(body)
    assert got == [b"ab", b"cd"] and ends == [([b"ab", b"cd"], 4, True)] and not overflows
    t.close()  # the writer closes every body it was given: nothing more happens
    assert len(ends) == 1 and body.closed == 0


def test_past_the_cap_the_copy_is_dropped_at_once():
    t, got, ends, overflows = run(Body([b"aaa", b"bbb", b"c"]), cap=5)
    assert got == [b"aaa", b"bbb", b"c"] and overflows == [1] and ends == [(None, 7, True)]


def test_closed_before_the_first_chunk_still_ends():
    # a reply dropped unread (a plugin replaced the response): the fill must hear of it
    body = Body([b"ab"])
    t = tee(body, 100, lambda *a: ends.append(a))
    ends: list = []
    t.close()
    assert ends == [([], 0, False)] and body.closed == 1
    with pytest.raises(StopIteration):
        next(t)


def test_closed_midway_ends_not_intact_and_releases_the_body():
    body = Body([b"ab", b"cd", b"ef"])
    t, got, ends, _ = run(body, consume=1)
    t.close()
    assert got == [b"ab"] and ends == [([b"ab"], 2, False)] and body.closed == 1
    t.close()
    assert len(ends) == 1 and body.closed == 1


def test_a_failing_body_ends_not_intact_and_raises():
    body = Body([b"ab", b"cd"], fail_at=1)
    ends: list = []
    t = tee(body, 100, lambda *a: ends.append(a))
    assert next(t) == b"ab"
    with pytest.raises(OSError):
        next(t)
    assert ends == [([b"ab"], 2, False)] and body.closed == 1
