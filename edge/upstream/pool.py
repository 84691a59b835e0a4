"""Idle keep-alive connections to one backend server, per worker.

Connections are reused last-in first-out: the most recently used one is the least
likely to have been closed by the backend's own idle timer, and the rest age out.
An idle connection past ``idle_timeout`` (or past the backend's advertised
``Keep-Alive: timeout``) is closed instead of reused, without a syscall; a reused
connection the backend closed anyway is caught by the client, which retries the
request once on a fresh connection when that is safe (see client.py and retry.py).

Waiting on a connection goes through ``edge.netio.Waits``: one re-armed libev timer per
distinct timeout instead of a ``gevent.Timeout`` per wait (issue 7).
"""

from __future__ import annotations

from collections import deque

from edge.netio import Waits


class PooledConnection:
    """A backend connection: when it went idle, when to stop reusing it, and its wait timers."""

    __slots__ = ("sock", "pool", "idle_since", "expires", "requests", "reused", "raw", "_waits")

    def __init__(self, sock, pool: "ConnectionPool") -> None:
        self.sock = sock
        self.pool = pool
        self.idle_since = 0.0
        self.expires = float("inf")
        self.requests = 0
        self.reused = False
        # The kernel socket under gevent's wrapper (non-blocking); reads and writes go to it directly.
        self.raw = getattr(sock, "_sock", sock)
        self._waits = Waits(sock)

    def wait_readable(self, timeout_s: float) -> bool:
        """Block this greenlet until the socket is readable (True) or ``timeout_s`` passed (False)."""
        return self._waits.readable(timeout_s)

    def wait_writable(self, timeout_s: float) -> bool:
        return self._waits.writable(timeout_s)

    def release_timers(self) -> None:
        self._waits.release()

    def close(self) -> None:
        self._waits.release()
        try:
            self.sock.close()
        except OSError:
            pass  # closing a dead socket: nothing left to release


class ConnectionPool:
    """A bounded LIFO of idle connections to one server."""

    __slots__ = ("_idle", "max_idle", "idle_timeout", "max_requests", "created", "reused_count")

    def __init__(self, max_idle: int, idle_timeout: float, max_requests: int) -> None:
        self._idle: deque[PooledConnection] = deque()
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        self.created = 0
        self.reused_count = 0

    def get(self, now: float) -> PooledConnection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.idle_timeout and now < conn.expires:
                conn.reused = True
                self.reused_count += 1
                return conn
            conn.close()
        return None

    def put(self, conn: PooledConnection, now: float) -> None:
        if conn.requests >= self.max_requests or len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        self._idle.append(conn)

    def idle_count(self) -> int:
        return len(self._idle)

    def close_all(self) -> None:
        while self._idle:
            self._idle.pop().close()
