"""Choosing a backend server (pure: the caller passes the servers' health).

Round robin is the smooth weighted variant nginx uses: each pick adds every
server's weight to its running score, takes the highest, and subtracts the total
from it. Over ``sum(weights)`` picks each server is chosen ``weight`` times, and
heavy servers are interleaved with light ones rather than picked in a burst.
"""

from __future__ import annotations

from typing import Sequence


class RoundRobin:
    """Smooth weighted round robin over a fixed list of servers."""

    __slots__ = ("_weights", "_scores", "_total", "_uniform", "_next")

    def __init__(self, weights: Sequence[int]) -> None:
        if not weights or any(w < 1 for w in weights):
            raise ValueError("every server needs a weight >= 1")
        self._weights = tuple(weights)
        self._scores = [0] * len(weights)
        self._total = sum(weights)
        self._uniform = len(set(weights)) == 1
        self._next = 0

    def pick(self, excluded: frozenset[int] | set[int] = frozenset()) -> int | None:
        """Index of the next server not in ``excluded`` (unhealthy or already tried), or None."""
        n = len(self._weights)
        if self._uniform:
            # The common case costs one modulo.
            for _ in range(n):
                i = self._next
                self._next = (i + 1) % n
                if i not in excluded:
                    return i
            return None
        best = -1
        total = 0
        scores = self._scores
        for i, w in enumerate(self._weights):
            if i in excluded:
                continue
            scores[i] += w
            total += w
            if best < 0 or scores[i] > scores[best]:
                best = i
        if best < 0:
            return None
        scores[best] -= total
        return best
