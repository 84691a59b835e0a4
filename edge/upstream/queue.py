"""Requests waiting for a server slot when every eligible server is at its ``max_conns`` (per pool, per worker).

Theory of operation. A pool with ``queue: {size, timeout}`` lets up to ``size``
requests of a worker wait, at most ``timeout`` each, instead of answering 503 at
once. Each waiter parks its greenlet on its own ``gevent.event.Event`` in a FIFO;
``wake_one`` (called when a request on a full server finishes and opens a slot) sets
the oldest one. A woken request picks again: it may find the slot taken by a request
that arrived meanwhile (no slot is reserved), and then waits again within its own
deadline. Nothing here spins or polls: a waiter costs one Event and a deque entry.
"""

from __future__ import annotations

from collections import deque

from gevent.event import Event


class WaitQueue:
    """A bounded FIFO of greenlets waiting for a slot."""

    __slots__ = ("size", "timeout", "_waiters")

    def __init__(self, size: int, timeout: float) -> None:
        if size < 1:
            raise ValueError(f"size: must be >= 1 (got {size})")
        if timeout <= 0:
            raise ValueError(f"timeout: must be positive (got {timeout})")
        self.size = size
        self.timeout = timeout
        self._waiters: deque[Event] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def wait(self, timeout_s: float) -> bool | None:
        """Park until woken (True) or ``timeout_s`` passed (False); None at once when the queue is full."""
        if len(self._waiters) >= self.size:
            return None
        ev = Event()
        self._waiters.append(ev)
        try:
            return ev.wait(timeout_s)
        finally:
            if not ev.is_set():
                try:
                    self._waiters.remove(ev)  # timed out or killed: leave the line (at most ``size`` entries)
                except ValueError:
                    pass

    def wake_one(self) -> None:
        """Let the longest waiting request try again."""
        if self._waiters:
            self._waiters.popleft().set()
