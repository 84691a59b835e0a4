"""Socket writes without gevent's per-call overhead.

gevent's ``sendall`` asks the kernel for SO_SNDBUF (a getsockopt syscall) on every
call to size its chunks, and wraps each send in deadline arithmetic. Nearly all of
edge's writes are small and fit the socket buffer at once, so ``send_all`` first
tries one non-blocking ``send`` on the underlying socket and only hands what is
left, if anything, to gevent's ``sendall`` (which waits for writability and
honours the socket's timeout). Measured: one syscall less per write, ~16% of the
syscall time of a small proxied request (docs/benchmarks.md).

An SSL socket's ``_sock`` is the raw TCP socket, and writing there would bypass TLS;
its fast path goes to its TLS object instead (``_sslobj``: OpenSSL's ``SSL_read`` and
``SSL_write`` on the non-blocking socket under it), and everything that would block
falls back to gevent's methods or to ``Waits``. Measured on TLS keep-alive requests:
gevent's ``SSLSocket.recv``/``sendall`` wrap every call in timeout bookkeeping that cost
a TLS request about a quarter more than a plain one (docs/benchmarks.md).

Waiting. gevent's socket methods create, start and cancel a ``gevent.Timeout`` (an
exception object plus a libev timer) for every wait; a profile of a worker under 64
keep-alive connections put that at ~11% of its time (issue 7). ``Waits`` instead owns
one libev timer per distinct timeout (in practice one or two per socket), re-armed
with ``ev_timer_again`` for each wait, and switches to the hub directly: no allocation
per wait, the same semantics (a wait ends when the socket is ready or the timer
fires, whichever comes first). Measured with a socketpair (one wait plus the send and
recv around it): 8.8 µs CPU with gevent's wait, 5.3 µs this way. Backend connections
(``edge.upstream.pool``) and client connections (``edge.h1``) both wait through it.
"""

from __future__ import annotations

import ssl

from greenlet import getcurrent
from gevent._socket3 import socket as _GeventSocket
from gevent.ssl import SSLSocket as _GeventSSLSocket

_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError)

_READY = object()
_EXPIRED = object()
_MAX_TIMERS = 4  # a total deadline makes every wait a different length: do not collect timers


def send_all(sock, data: bytes) -> None:
    kind = type(sock)
    if kind is _GeventSocket:
        try:
            sent = sock._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    elif kind is _GeventSSLSocket and sock._sslobj is not None and data:
        try:
            sent = sock._sslobj.write(data)
        except _WOULD_BLOCK:
            sent = 0  # OpenSSL must be given the same bytes again: gevent's sendall does that
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    sock.sendall(data)


class TLSReader:
    """``recv`` straight from a gevent SSL socket's TLS object: the bytes OpenSSL has, or
    ``BlockingIOError`` when it needs more from the network (the caller waits with ``Waits``
    on the same file descriptor, then calls again)."""

    __slots__ = ("_read",)

    def __init__(self, sock) -> None:
        self._read = sock._sslobj.read

    def recv(self, nbytes: int) -> bytes:
        try:
            return self._read(nbytes)
        except _WOULD_BLOCK:
            raise BlockingIOError("TLS record not complete") from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""  # close_notify, or a close without one (ragged EOFs are ends, as configured)


def raw_socket(sock):
    """What reads bypassing gevent's per-call bookkeeping go to: the kernel socket under a plain
    gevent TCP socket (non-blocking), a ``TLSReader`` for a gevent SSL socket whose handshake is
    done; None for anything else."""
    kind = type(sock)
    if kind is _GeventSocket:
        return sock._sock
    if kind is _GeventSSLSocket and sock._sslobj is not None:
        return TLSReader(sock)
    return None


class Waits:
    """Readiness waits on one gevent socket with re-armed timers (see the module docstring)."""

    __slots__ = ("sock", "_timers")

    def __init__(self, sock) -> None:
        self.sock = sock
        self._timers: dict[float, object] = {}

    def readable(self, timeout_s: float | None) -> bool:
        """Block this greenlet until the socket is readable (True) or ``timeout_s`` passed (False)."""
        return self._wait(self.sock._read_event, timeout_s)

    def writable(self, timeout_s: float | None) -> bool:
        return self._wait(self.sock._write_event, timeout_s)

    def _wait(self, watcher, timeout_s: float | None) -> bool:
        timer = None
        if timeout_s is not None:
            timer = self._timers.get(timeout_s)
            if timer is None:
                if len(self._timers) >= _MAX_TIMERS:
                    self.release()
                # after == repeat: ev_timer_again (re)starts it timeout_s from now on every wait.
                timer = self._timers[timeout_s] = self.sock.hub.loop.timer(timeout_s, timeout_s)
        # What gevent's Waiter does, without allocating one: the loop switches back into this
        # greenlet with a marker saying which watcher fired. A socket closed by another greenlet
        # still wakes us: gevent's cancel_wait throws into the callback's __self__ (the greenlet).
        switch = getcurrent().switch
        watcher.start(switch, _READY)
        if timer is not None:
            timer.again(switch, _EXPIRED)
        try:
            result = self.sock.hub.switch()
        finally:
            watcher.stop()
            if timer is not None:
                timer.stop()
        if result is _READY:
            return True
        if result is _EXPIRED:
            return False
        raise RuntimeError(f"unexpected switch into a greenlet waiting on a socket: {result!r}")

    def release(self) -> None:
        """Close the timers (before the socket is closed or handed on)."""
        for timer in self._timers.values():
            timer.close()
        self._timers.clear()
