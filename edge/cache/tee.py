"""Copy a body while it streams to the client, up to a size cap (both the object fill and
the encoded variants use it).

``tee(body, cap, on_end, on_overflow)`` yields ``body``'s chunks unchanged and keeps them
while their total stays within ``cap``. Past it the copy is dropped at once and
``on_overflow()`` runs (a fill gives its lock back then, not after the whole body). When
the stream ends, whichever way, ``on_end(copy, size, intact)`` runs once: ``copy`` is the
kept chunks or None, ``size`` the bytes that passed, ``intact`` whether the body was read to
its end. A body abandoned midway (client gone, backend failed) is closed first, so its
connection is released now rather than at a garbage collection.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator


def tee(body: Iterable[bytes], cap: int, on_end: Callable[[list[bytes] | None, int, bool], None],
        on_overflow: Callable[[], None] | None = None) -> Iterator[bytes]:
    copy: list[bytes] | None = []
    size = 0
    intact = False
    try:
        for chunk in body:
            if copy is not None:
                size += len(chunk)
                if size > cap:
                    copy = None
                    if on_overflow is not None:
                        on_overflow()
                else:
                    copy.append(chunk)
            yield chunk
        intact = True
    finally:
        if not intact:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        on_end(copy, size, intact)
