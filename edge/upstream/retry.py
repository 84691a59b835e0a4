"""When a failed upstream attempt may be repeated (pure: no sockets, no clock).

Theory of operation. An exchange with a backend can fail before the backend acted on
the request in three ways, each a ``Cause``:

- ``CONNECT_ERROR`` / ``CONNECT_TIMEOUT``: no connection, so nothing was sent; the next
  server is tried, up to ``RetryPolicy.servers`` further servers.
- ``STALE_WRITE``: the first write on a *reused* connection failed (reset, broken
  pipe): the backend had closed the idle connection before the request, so it never
  saw any of it. One attempt on a fresh connection to the same server.
- ``STALE_READ``: the request went out on a reused connection and the backend closed
  it before the first response byte. Usually the same race (the backend's idle timer
  fired as the request arrived), but the backend may have acted on the request, so
  RFC 9112 §9.3.1 applies: "A user agent MUST NOT automatically retry a request with a
  non-idempotent method unless it has some means to know that the request semantics
  are actually idempotent". Only idempotent methods (RFC 9110 §9.2.2) are retried.

Bodies are not rewindable (urllib3 ``rewind_body`` learnt the same): the request body
is an iterator over the client's stream. A retry is allowed only when nothing was
pulled from it yet, or when every byte pulled so far was kept (``ReplayBody`` keeps up
to ``keep_bytes``) and will be sent again first. Sending a retry from a partly consumed
iterator loses the first chunk of a chunked upload, or makes a Content-Length upload
hang short of its length (issue 7, defect 3).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Iterator

# RFC 9110 §9.2.2: "PUT, DELETE, and safe request methods are idempotent."
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Cause(enum.Enum):
    CONNECT_ERROR = "connect_error"
    CONNECT_TIMEOUT = "connect_timeout"
    STALE_WRITE = "stale_write"
    STALE_READ = "stale_read"


class Action(enum.Enum):
    GIVE_UP = "give_up"
    NEXT_SERVER = "next_server"
    FRESH_CONNECTION = "fresh_connection"  # same server, new connection


@dataclass(frozen=True, slots=True)
class BodyState:
    """What a retry needs to know about the request body: may it be sent again from its start?"""

    pulled_bytes: int = 0     # taken from the client's stream so far
    replayable: bool = True   # every pulled byte is still held (ReplayBody under its cap)

    @property
    def resendable(self) -> bool:
        return self.pulled_bytes == 0 or self.replayable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    servers: int = 1           # further servers tried after a connect failure (config `retries`)
    fresh_connections: int = 1  # attempts on a fresh connection after a stale pooled one

    def __post_init__(self) -> None:
        if self.servers < 0:
            raise ValueError(f"servers: must be >= 0 (got {self.servers})")
        if self.fresh_connections < 0:
            raise ValueError(f"fresh_connections: must be >= 0 (got {self.fresh_connections})")

    def decide(self, cause: Cause, method: str, body: BodyState, servers_tried: int, fresh_tried: int) -> Action:
        """The next step after ``cause``; ``servers_tried`` counts servers picked so far (>= 1),
        ``fresh_tried`` the fresh-connection attempts already made after stale ones."""
        if not body.resendable:
            return Action.GIVE_UP
        if cause is Cause.CONNECT_ERROR or cause is Cause.CONNECT_TIMEOUT:
            return Action.NEXT_SERVER if servers_tried <= self.servers else Action.GIVE_UP
        if fresh_tried >= self.fresh_connections:
            return Action.GIVE_UP
        if cause is Cause.STALE_READ and method not in IDEMPOTENT_METHODS:
            return Action.GIVE_UP
        return Action.FRESH_CONNECTION


class ReplayBody:
    """The request body for one exchange: hands out chunks and keeps them, up to a cap, so that
    a retried attempt can send them again before pulling more from the client.

    ``attempt()`` starts an attempt: the iterator it returns yields the kept chunks first,
    then pulls new ones. Once more than ``keep_bytes`` were pulled the kept chunks are
    dropped and ``state().replayable`` turns False for good. ``release()`` drops them when
    no retry can happen any more (the response head arrived).
    """

    __slots__ = ("_source", "_kept", "_kept_bytes", "_pulled", "_replayable", "_keep_bytes", "_exhausted")

    def __init__(self, source: Iterable[bytes], keep_bytes: int) -> None:
        self._source = iter(source)
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._pulled = 0
        self._replayable = True
        self._keep_bytes = keep_bytes
        self._exhausted = False

    def state(self) -> BodyState:
        return BodyState(self._pulled, self._replayable)

    def release(self) -> None:
        self._kept = []
        self._replayable = False

    def attempt(self) -> Iterator[bytes]:
        if self._pulled and not self._replayable:
            raise RuntimeError("request body was partly consumed and not kept: it cannot be sent again")
        return self._chunks(tuple(self._kept))

    def _chunks(self, replay: tuple[bytes, ...]) -> Iterator[bytes]:
        yield from replay
        if self._exhausted:
            return
        for chunk in self._source:
            if not chunk:
                continue
            self._pulled += len(chunk)
            if self._replayable:
                if self._kept_bytes + len(chunk) <= self._keep_bytes:
                    self._kept.append(chunk)
                    self._kept_bytes += len(chunk)
                else:
                    self.release()
            yield chunk
        self._exhausted = True
