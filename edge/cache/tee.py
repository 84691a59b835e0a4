"""Copy a body while it streams to the client, up to a size cap (both the object fill and
the encoded variants use it).

``tee(body, cap, on_end, on_overflow)`` yields ``body``'s chunks unchanged and keeps them
while their total stays within ``cap``. Past it the copy is dropped at once and
``on_overflow()`` runs (a fill gives its lock back then, not after the whole body). When
the stream ends, whichever way, ``on_end(copy, size, intact)`` runs once: ``copy`` is the
kept chunks or None, ``size`` the bytes that passed, ``intact`` whether the body was read to
its end. A body abandoned midway (client gone, backend failed) is closed first, so its
connection is released now rather than at a garbage collection.

It is an iterator object rather than a generator because a generator closed before its
first chunk never runs its ``finally``: a reply whose body is dropped unread (a plugin's
response hook replacing the backend's answer, say with a custom error page) would then
never call ``on_end``, and a fill would keep its lock until the lock's TTL, holding back
every request for the URL. ``close()`` ends it the same way whether or not a chunk was read.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator


class _Tee:
    __slots__ = ("_body", "_chunks", "_cap", "_on_end", "_on_overflow", "_copy", "_size", "_ended")

    def __init__(self, body: Iterable[bytes], cap: int, on_end: Callable[[list[bytes] | None, int, bool], None],
                 on_overflow: Callable[[], None] | None) -> None:
        self._body = body
        self._chunks = iter(body)
        self._cap = cap
        self._on_end = on_end
        self._on_overflow = on_overflow
        self._copy: list[bytes] | None = []
        self._size = 0
        self._ended = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._ended:
            raise StopIteration
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._end(True)
            raise
        except BaseException:
            self._abandon()
            raise
        copy = self._copy
        if copy is not None:
            self._size += len(chunk)
            if self._size > self._cap:
                self._copy = None
                if self._on_overflow is not None:
                    self._on_overflow()
            else:
                copy.append(chunk)
        else:
            self._size += len(chunk)
        return chunk

    def close(self) -> None:
        """Abandon the stream (a no-op once it ended): the body is closed, ``on_end`` told."""
        if not self._ended:
            self._abandon()

    def _abandon(self) -> None:
        close = getattr(self._body, "close", None)
        try:
            if close is not None:
                close()
        finally:
            self._end(False)

    def _end(self, intact: bool) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(self._copy, self._size, intact)


def tee(body: Iterable[bytes], cap: int, on_end: Callable[[list[bytes] | None, int, bool], None],
        on_overflow: Callable[[], None] | None = None) -> Iterator[bytes]:
    return _Tee(body, cap, on_end, on_overflow)
