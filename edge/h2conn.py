"""The HTTP/2 connection: gunicorn's frame handling, with the streams of a connection served concurrently.

Theory of operation. gunicorn 27's ``HTTP2ServerConnection`` (frames, HPACK, flow
control, its stream and flood limits) is written for a worker that serves one stream
at a time: ``AsyncWorker.handle_http2`` reads, then serves each new stream to its end
before reading again, and a stream waiting for its request body or for send window
reads the socket itself. Measured on this machine: three streams of one second each
on one connection took three seconds, so a slow request held up every other request
of a browser's page (head-of-line blocking inside edge).

``serve`` keeps gunicorn's connection object and changes who reads:

- one reader (the connection's greenlet) is the only one that reads the socket; after
  every batch of frames it wakes the streams waiting for progress (``_progress``);
- each stream is served in its own greenlet (``EdgeWorker._serve_http2_stream``, up
  to the ``max_concurrent_streams`` the client was given);
- a stream that needs more request body (``pump``) or send window
  (``_wait_for_flow_control_window``) waits for the reader instead of reading, with
  the same bounds as gunicorn (``timeout`` for a stalled body or window);
- every write takes ``_write_lock`` around "take h2's pending bytes, send them", so
  frames of different streams never interleave on the socket and leave in the order
  h2 produced them; ``cork``/``uncork`` let a stream put its HEADERS, DATA and
  END_STREAM into one write (``edge.h2._write``).

gunicorn's h2 state machine is pure Python and never yields, so each call into it is
atomic between greenlets; only socket writes and waits yield. A graceful stop serves
the streams already open, then closes with GOAWAY naming the last one (RFC 9113 §6.8);
a connection with no stream running is closed that way at once by the stopping worker
(``close_if_idle``), as idle HTTP/1 keep-alive connections are.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gunicorn.http2.connection import HTTP2ServerConnection
from gunicorn.http2.errors import HTTP2ConnectionError, HTTP2ErrorCode, HTTP2ProtocolError
from gunicorn.http2.stream import StreamState
from gunicorn.http import errors as http_errors

log = logging.getLogger("edge.h2conn")

#: the longest a waiting stream sleeps before it looks at its state again (a missed wake-up costs this)
WAIT_SLICE_S = 1.0


class ConcurrentConnection(HTTP2ServerConnection):
    """gunicorn's HTTP/2 connection with one reader and concurrent stream greenlets."""

    def __init__(self, cfg, sock, client_addr) -> None:
        super().__init__(cfg, sock, client_addr)
        self._write_lock = Semaphore()
        self._progress = Event()
        self.running: set = set()  # greenlets of the streams being served
        self._corked = False       # frames are held in h2's buffer until uncork()
        self.last_served = 0       # the highest stream id handed to a greenlet

    def close_if_idle(self) -> bool:
        """On a graceful stop: GOAWAY naming the last stream served, when none is running, and
        wake the reader (blocked in recv) by shutting the socket. RFC 9113 §6.8: the client
        may retry any later stream elsewhere. True if the connection is (now) closed."""
        if self.running:
            return self._closed
        if not self._closed:
            try:
                self.close(last_stream_id=self.last_served)
            except HTTP2ConnectionError:
                pass  # the socket is already gone
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the peer
        return True

    def wake(self) -> None:
        """Wake every stream waiting for frames (the reader processed a batch, or the connection ended)."""
        progress, self._progress = self._progress, Event()
        progress.set()

    def _send_pending_data(self) -> None:
        if not self._corked:
            self.flush()

    def flush(self) -> None:
        with self._write_lock:  # take and send under one lock: no interleaving, no reordering
            super()._send_pending_data()

    def cork(self) -> None:
        """Hold frames back until ``uncork``; only around code that cannot wait (no other
        greenlet runs meanwhile), except a send-window wait, which flushes and uncorks first."""
        self._corked = True

    def uncork(self) -> None:
        self._corked = False
        self.flush()

    def pump(self, stream_id=None) -> None:
        """A stream wants more request body: wait for the reader, at most ``timeout``."""
        stream = self.streams.get(stream_id)
        deadline = time.monotonic() + self.stream_timeout if self.stream_timeout else None
        while not self._closed and stream is not None and stream.state is not StreamState.CLOSED:
            if stream._body_chunks or stream.body_complete:  # gunicorn's stream buffer: data arrived
                return
            left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
            if left <= 0:
                # the body stalled: as gunicorn does, the stream is cancelled and its reader sees it closed
                self.abort_stream(stream_id, HTTP2ErrorCode.CANCEL)
                return
            self._progress.wait(left)

    def _wait_for_flow_control_window(self, stream_id, deadline=None) -> int:
        """Send window for ``stream_id``: > 0 available, 0 ``deadline`` passed, -1 stream or connection gone."""
        corked, self._corked = self._corked, False
        try:
            self.flush()  # the peer credits the window for frames it received: never wait on held ones
            return self._wait_for_window(stream_id, deadline)
        finally:
            self._corked = corked

    def _wait_for_window(self, stream_id, deadline) -> int:
        while True:
            if self._closed:
                return -1
            stream = self.streams.get(stream_id)
            if stream is not None and stream.state is StreamState.CLOSED:
                return -1
            try:
                available = self.h2_conn.local_flow_control_window(stream_id)
            except Exception:  # h2's ProtocolError/KeyError for a stream it dropped: gone, as in gunicorn
                return -1
            if available > 0:
                return available
            wait = WAIT_SLICE_S
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return 0
                wait = min(remaining, wait)
            self._progress.wait(wait)


def serve(worker, listener, sock, addr) -> None:
    """Serve one HTTP/2 connection (ALPN chose h2) until it closes (see the module docstring)."""
    listener_name = listener.getsockname()
    conn = ConcurrentConnection(worker.cfg, sock, addr)
    streams = conn.running
    worker.h2_connections.add(conn)
    try:
        conn.initiate_connection()
        while not conn.is_closed and (worker.alive or streams):
            try:
                requests = conn.receive_data()
            except http_errors.NoMoreData:
                break
            finally:
                conn.wake()
            for req in requests:
                g = gevent.spawn(worker._serve_http2_stream, listener_name, req, sock, addr, conn)
                streams.add(g)
                g.link(streams.discard)
                conn.last_served = req.stream.stream_id
        if not conn.is_closed:
            gevent.joinall(list(streams), timeout=worker.cfg.graceful_timeout)
            conn.close(last_stream_id=conn.last_served)
    except (HTTP2ConnectionError, HTTP2ProtocolError) as e:
        log.debug("HTTP/2 connection from %s ended: %s", addr, e)
    except (ssl.SSLError, OSError) as e:
        log.debug("HTTP/2 connection from %s failed: %s", addr, e)
    finally:
        worker.h2_connections.discard(conn)
        conn.wake()  # streams waiting for frames see the connection closed
        if streams:
            gevent.joinall(list(streams), timeout=1.0)
            gevent.killall(list(streams), block=False)
