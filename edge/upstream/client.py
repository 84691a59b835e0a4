"""The HTTP/1.1 client edge uses towards backends: pooled, streaming, strict framing, bounded.

Theory of operation. ``UpstreamPool.exchange`` checks the request it is asked to send
(method a token, target in origin-form, every field name a token and every value free
of CR/LF/NUL: ``edge.fields``), picks a server (``selection.Selector``: balancer, backup
servers, ``max_conns``; waiting in the pool's ``queue.WaitQueue`` when every server is
full), takes an idle connection
from that server's pool or opens one, takes the first body chunk from the client,
checks (one non-blocking peek) that the backend did not close a pooled connection
meanwhile, writes the request head with that first chunk in the same send, streams
the rest of the body, and reads the response head with httptools' C parser (llhttp). It returns an
``UpstreamReply`` whose ``body`` is a generator: the caller streams it to the client,
and the generator's ``finally`` decides the connection's fate: back to the pool only
when the response was read to its exact end and both sides allow keep-alive; closed
in every other case (client gone, timeout, truncated body, surplus bytes, a limit).

Why our own client: measured on this machine (docs/benchmarks.md), a gevent proxy
spent ~285 µs per small request with urllib3 and ~150 µs with geventhttpclient;
this client keeps the per-request Python work to one head serialisation, one
parser feed and a few attribute reads. Reads and writes go to the kernel socket
directly and wait on the connection's own re-armed timers (pool.py), not on a
``gevent.Timeout`` per wait.

Validate on the way out (issue 7). Whatever produced the method, target or a field
(the client, a plugin, the config), nothing reaches a backend unchecked: an invalid
one raises ``UnsendableRequest`` (500, one log line naming the field, not its value)
before any byte is written.

Bounded responses (issue 7). A backend's head may not exceed ``limits.max_head_bytes``
(1xx interim heads included), ``limits.max_fields`` fields, ``limits.max_line_bytes``
per line, ``limits.max_interim_responses`` 1xx answers; trailers are bounded by
``max_fields`` and ``max_trailer_bytes``. Over a limit: ``ResponseTooLarge`` (502) and
the connection is discarded. The head budget is enforced before the bytes reach the
parser, so an endless field line costs at most one buffer (httptools accumulates a
field in memory until it ends).

Interim responses (issue 10). RFC 9110 §15.2: "A proxy MUST forward 1xx responses unless
the proxy itself requested the generation of the 1xx response." ``exchange(..., interim=f)``
hands each interim head the backend sends (102 Processing, 103 Early Hints, any other 1xx
but 100 and 101) to ``f(status, reason, fields)`` in order, as the reads that complete it
arrive (a 102 that precedes a long computation reaches the client at once, not with the
final head); ``f`` is the front end's writer (``RequestContext.interim``), None when nobody
may get one (an HTTP/1.0 client, a background revalidation). ``100 Continue`` is never
handed on: edge answers the client's ``Expect: 100-continue`` itself (edge.h1) and removes
``Expect`` towards the backend (edge.http), so a backend's 100 answers nothing the client
asked of it, and a client that expected one already has edge's (RFC 9110 §10.1.1: the
expectation is met hop by hop here). ``101`` stays the upgrade path. Every 1xx, handed on
or not, counts against ``max_interim_responses`` and ``max_head_bytes``. Without a 1xx
this costs one attribute read per read of the head.

Failure mapping (STYLE §7): refused/reset connect -> ConnectError (502), connect
timeout -> ConnectTimeout (504), silence between reads -> ReadTimeout (504), a
blocked write -> SendTimeout (504), the whole exchange over ``timeouts.total`` ->
TotalTimeout (504), invalid HTTP -> ProtocolError (502), no server left ->
NoHealthyServer (503), every server full and no room or time in the queue ->
ServersBusy (503).

In-flight accounting (issue 9). Each server a request is assigned to is counted in
flight from the pick (``Selector.started``) until exactly one ``Selector.finished``:
at once when the attempt fails, else when the reply is over: its body generator's
``finally`` (read to the end, failed, or closed by a client abort: the generator is
primed so ``close()`` always runs it), or at the head for replies without a body.
``finished`` carries the time to the response head, the latency sample of P2C-EWMA.
Each attempt also gets one health verdict (``_Verdicts``: success, 5xx per
``health.passive.on_5xx``, connect failure, timeout, or none), which feeds outlier
detection (health.py).

Retries (issue 9; rules in retry.py, docs/upstreams.md "Retries"). ``exchange`` is a loop
of attempts. Each failure before a response head is a ``_Failed`` carrying its
``retry.Cause`` and the error the client gets otherwise; a 502/503/504 head is a cause
too. ``RetryPolicy.decide`` (pure) answers: a fresh connection to the same server (a
pooled connection the backend had closed), another server (picked among those not
tried and not in ``health.excluded(now)``, paid from the ``RetryBudget`` unless the
cause cost the backend nothing), or give up; any retry needs every body byte pulled so far
to be still held (``retry.ReplayBody``). A 5xx that is retried is discarded without
waiting: read out of the buffer when it arrived whole (the connection is reused),
otherwise its connection is closed. One that is not retried reaches the client as the
backend sent it. A 503's ``Retry-After`` holds that server out of rotation
(``health.hold``). ``retry.per_try_timeout`` bounds each attempt's wait for its head;
``timeouts.total`` bounds the whole loop.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from dataclasses import dataclass
from inspect import GEN_CREATED, getgeneratorstate
from typing import Iterable, Iterator

import httptools
from gevent import socket as _gsocket

from edge.errors import (
    ConnectError,
    ConnectTimeout,
    NoHealthyServer,
    ProtocolError,
    ReadTimeout,
    ResponseTooLarge,
    SendTimeout,
    ServersBusy,
    TotalTimeout,
    UnsendableRequest,
    UpstreamError,
)
from edge.fields import first_invalid_field, fields_valid, is_field_value, is_token
from edge.metrics import Metrics
from edge.upstream import tls as backend_tls
from edge.upstream.health import OutlierPolicy, Outcome, PoolHealth
from edge.upstream.pool import ConnectionPool, PooledConnection
from edge.upstream.queue import WaitQueue
from edge.upstream.retry import (
    FREE_CAUSES,
    IDEMPOTENT_METHODS,
    STATUS_CAUSES,
    Action,
    BodyState,
    Cause,
    ReplayBody,
    RetryBudget,
    RetryPolicy,
    parse_retry_after,
)
from edge.upstream.selection import selector_from_config

log = logging.getLogger("edge.upstream")

RECV_BYTES = 65536
_NO_BODY_STATUS = (204, 304)
_DEAD_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN)
_NOTHING_PULLED = BodyState()

# RFC 9112 §3.2.1: origin-form = absolute-path [ "?" query ]. What edge must never write
# in it: SP and CTLs end or split the request line (request-line injection), "#" starts
# a fragment, which is never sent (RFC 9110 §7.1); characters beyond latin-1 have no
# byte. obs bytes 0x80-0xFF pass as received (admission decides about them).
_ORIGIN_FORM_RE = re.compile(r"/[^\x00-\x20\x7f#\u0100-\U0010ffff]*")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-pool/route timeouts (seconds); ``total`` None means no limit."""

    connect: float
    read: float       # longest gap between two reads
    send: float       # longest a write may block
    total: float | None = None

    def __post_init__(self) -> None:
        for name in ("connect", "read", "send", "total"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name}: must be positive (got {v})")

    @classmethod
    def from_config(cls, t) -> "Timeouts":
        return cls(t.connect, t.read, t.send, t.total)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a backend may send, and on the body kept for a retry (config ``upstreams.*.limits``)."""

    max_head_bytes: int = 65536
    max_line_bytes: int = 8190
    max_fields: int = 100
    max_trailer_bytes: int = 65536
    max_interim_responses: int = 8
    retry_body_bytes: int = 65536

    def __post_init__(self) -> None:
        for name in self.__slots__:
            v = getattr(self, name)
            if v < 0:
                raise ValueError(f"{name}: must be >= 0 (got {v})")

    @classmethod
    def from_config(cls, c) -> "Limits":
        return cls(c.max_head_bytes, c.max_line_bytes, c.max_fields, c.max_trailer_bytes, c.max_interim_responses, c.retry_body_bytes)


# Hot path: the methods and Host values seen before were valid; a bounded set remembers them.
_COMMON_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_HOSTS_OK: set[str] = set()
_HOSTS_OK_MAX = 1024


def check_request(method: str, target: str, host: str | None, headers: list[tuple[str, str]]) -> None:
    """Raise ``UnsendableRequest`` unless the request line and every field may be written (pure).

    The message names what is wrong, never the offending value (it may hold CR/LF meant
    for a log line, or a secret)."""
    if method not in _COMMON_METHODS and not is_token(method):
        raise UnsendableRequest("the request method is not a token (RFC 9110 §9.1)")
    if _ORIGIN_FORM_RE.fullmatch(target) is None and not (target == "*" and method == "OPTIONS"):
        raise UnsendableRequest("the request target is not in origin-form: space, control character or '#' (RFC 9112 §3.2.1)")
    if host is not None and host not in _HOSTS_OK:
        if not (host and is_field_value(host)):
            raise UnsendableRequest("invalid value for field Host")
        if len(_HOSTS_OK) >= _HOSTS_OK_MAX:
            _HOSTS_OK.clear()
        _HOSTS_OK.add(host)
    if not fields_valid(headers):
        name, _ = first_invalid_field(headers)
        if is_token(name):
            raise UnsendableRequest(f"invalid value for field {name}: control character or surrounding whitespace (RFC 9110 §5.5)")
        raise UnsendableRequest(f"invalid field name {name[:40]!r}: not a token (RFC 9110 §5.1)")


class Server:
    """One backend server and its idle connections (per worker)."""

    __slots__ = ("host", "port", "authority", "pool", "index", "label", "tls", "tls_name")

    def __init__(self, index: int, host: str, port: int, pool: ConnectionPool, tls=None, tls_name: str | None = None) -> None:
        self.index, self.host, self.port, self.pool = index, host, port, pool
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.label = self.authority
        self.tls = tls             # the pool's client SSLContext (edge.upstream.tls), None for plain TCP
        self.tls_name = tls_name   # the name its certificate is checked against (SNI unless an IP literal)

    def connect(self, timeout: float) -> PooledConnection:
        """A new connection; with TLS the handshake is part of it, within the same ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            sock = _gsocket.create_connection((self.host, self.port), timeout=timeout)
        except _gsocket.timeout:
            raise ConnectTimeout(f"connect to {self.authority} timed out after {timeout:g}s") from None
        except OSError as e:
            raise ConnectError(f"connect to {self.authority} failed: {e.strerror or e}") from None
        sock.setsockopt(_gsocket.IPPROTO_TCP, _gsocket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = backend_tls.handshake(sock, self.tls, self.tls_name, self.authority, deadline)
        self.pool.created += 1
        conn = PooledConnection(sock, self.pool)
        if self.tls is not None:
            conn.raw = backend_tls.TLSTransport(sock, self.authority)  # never the kernel socket under TLS
        return conn


class _Parse:
    """httptools callbacks for one response: collects the head, body pieces and trailers, and
    notes (in ``error``) the first limit the backend went over; the reader raises after the feed."""

    __slots__ = ("headers", "reason", "final", "done", "chunks", "trailers", "trailer_bytes", "status_of",
                 "interim", "surplus", "error", "max_line", "max_fields", "max_trailer", "max_interim", "relay", "heads")

    def __init__(self, limits: Limits, relay=None) -> None:
        self.headers: list[tuple[str, str]] = []
        self.reason = b""
        self.final = False        # the final (non-1xx) head is complete
        self.done = False         # the final message is complete
        self.chunks: list[bytes] = []
        self.trailers: list[tuple[str, str]] = []
        self.trailer_bytes = 0
        self.status_of = None     # the parser's get_status_code until the final head (then dropped: no cycle)
        self.interim = 0
        self.surplus = False      # bytes of a further message after the final one
        self.error: str | None = None
        self.max_line = limits.max_line_bytes
        self.max_fields = limits.max_fields
        self.max_trailer = limits.max_trailer_bytes
        self.max_interim = limits.max_interim_responses
        self.relay = relay        # who interim heads go to (UpstreamPool.exchange's ``interim``), or None
        self.heads: list | None = None  # interim heads parsed and not yet handed to ``relay``

    def on_message_begin(self) -> None:
        if self.final:
            # A second response to one request: never passed on, and the connection is not reused.
            self.surplus = True
            return
        self.headers = []  # a 1xx interim answer (103 Early Hints) is followed by the real one
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        if self.surplus:
            return
        if len(reason) + 13 > self.max_line:  # "HTTP/1.1 200 " + reason
            self.error = f"status line longer than {self.max_line} bytes"
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.surplus or self.error is not None:
            return
        size = len(name) + len(value) + 2
        if size > self.max_line:
            self.error = f"field line longer than {self.max_line} bytes"
            return
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        if self.final:
            # RFC 9112 §7.1.2: trailer section after the last chunk.
            self.trailer_bytes += size + 2
            if len(self.trailers) >= self.max_fields:
                self.error = f"more than {self.max_fields} trailer fields"
            elif self.trailer_bytes > self.max_trailer:
                self.error = f"trailer section larger than {self.max_trailer} bytes"
            else:
                self.trailers.append(pair)
        elif len(self.headers) >= self.max_fields:
            self.error = f"more than {self.max_fields} header fields"
        else:
            self.headers.append(pair)

    def on_headers_complete(self) -> None:
        if self.surplus:
            return
        code = self.status_of()
        if 100 <= code < 200 and code != 101:
            # RFC 9110 §15.2: a client MUST be able to parse one or more 1xx responses before
            # the final one; "one or more" is bounded here, or a backend could stall us forever.
            self.interim += 1
            if self.interim > self.max_interim:
                self.error = f"more than {self.max_interim} interim (1xx) responses"
            elif code != 100 and self.relay is not None:
                # Handed on by the reader after this feed (module docstring: never from inside the
                # parser's callback, where a failed client write would leave llhttp mid-message).
                # 100 is never forwarded: edge answers Expect itself (RFC 9110 §10.1.1, §15.2.1).
                if self.heads is None:
                    self.heads = []
                self.heads.append((code, self.reason.decode("latin-1"), self.headers))
            return
        self.final = True
        self.status_of = None

    def on_body(self, body: bytes) -> None:
        if not self.surplus:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.final and not self.surplus:
            self.done = True


class UpstreamReply:
    """A backend's answer: the head now, the body as a generator to stream."""

    __slots__ = ("status", "reason", "headers", "body", "length", "server", "upgrade_sock", "upgrade_data", "trailers", "_conn",
                 "_pool", "_latency")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], server: Server) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.server = server
        self.body: Iterator[bytes] | None = None
        self.length: int | None = None          # Content-Length if the backend framed it so
        self.upgrade_sock = None                # set on 101: the raw backend socket
        self.upgrade_data = b""                 # bytes the backend sent after its 101 head
        self.trailers: list[tuple[str, str]] = []
        self._conn: PooledConnection | None = None
        self._pool: UpstreamPool | None = None  # set while this reply holds an in-flight count on its server
        self._latency = 0.0                      # time to the response head (s)

    def close(self) -> None:
        """Release the backend connection when the body will not be read (e.g. an error page replaces it)."""
        body = self.body
        if body is not None and hasattr(body, "close"):
            # A generator closed before its first step never runs its ``finally`` (``_attach_body``
            # primes the ones it makes; any other is closed here), so its connection is closed here.
            unstarted = getattr(body, "gi_frame", None) is not None and getgeneratorstate(body) == GEN_CREATED
            body.close()
            if unstarted and self._conn is not None:
                self._conn.close()
                self._conn = None
        elif self._conn is not None:
            self._conn.close()
            self._conn = None
        self._done()

    def _done(self) -> None:
        """The exchange is over: release the server's in-flight count, once."""
        pool = self._pool
        if pool is not None:
            self._pool = None
            pool._finished(self.server.index, self._latency, True)


class _Failed(Exception):
    """One attempt failed before a response head (internal): the ``Cause`` the retry policy
    judges, and the error the client gets when it is not retried."""

    def __init__(self, cause: Cause, error: UpstreamError) -> None:
        self.cause = cause
        self.error = error


class UpstreamPool:
    """A named pool of servers; ``exchange`` performs one request.

    Per worker: ``selector`` (balancer, backups, ``max_conns``; ``queue`` for requests
    waiting on full servers), ``health`` (``PoolHealth``: what ``excluded(now)`` may not be
    picked, the verdicts of outlier detection, ``hold`` after a 503 with Retry-After),
    ``retry`` (the immutable ``RetryPolicy``) and ``retry_budget`` (``RetryBudget``).
    """

    __slots__ = ("name", "servers", "selector", "queue", "affinity", "sticky", "timeouts", "retries", "retry",
                 "retry_budget", "health", "limits", "metrics", "_m_retry", "_m_retry_cause", "_m_exhausted", "_m_held")

    def __init__(self, name: str, cfg, metrics: Metrics | None = None) -> None:
        self.name = name
        ka = cfg.keepalive
        tls = backend_tls.build_context(name, cfg.tls) if any(s.tls for s in cfg.servers) else None
        self.servers = tuple(
            Server(i, s.host, s.port, ConnectionPool(ka.max_idle, ka.idle_timeout, ka.max_requests),
                   tls if s.tls else None, backend_tls.sni_name(s.host, cfg.tls))
            for i, s in enumerate(cfg.servers)
        )
        # Balancing (issue 9): what the request path must compute for this pool (affinity: None,
        # or (kind, name)), and the sticky cookie to set, are read off the selector once here.
        self.selector = selector_from_config(name, cfg)
        self.affinity = self.selector.affinity
        self.sticky = self.selector.sticky
        self.queue = WaitQueue(cfg.queue.size, cfg.queue.timeout) if cfg.queue is not None else None
        self.timeouts = Timeouts.from_config(cfg.timeouts)
        self.retries = cfg.retries
        self.retry = RetryPolicy.from_config(cfg)
        b = cfg.retry.budget
        self.retry_budget = RetryBudget(b.ratio, b.min_per_s, b.window)
        passive = cfg.health.passive
        t = cfg.timeouts
        self.health = PoolHealth(name, [s.authority for s in self.servers], OutlierPolicy.from_config(passive),
                                 passive.on_5xx, trial_patience_s=t.total or (t.connect + t.send + t.read))
        self.limits = Limits.from_config(cfg.limits)
        self.metrics = metrics if metrics is not None else Metrics(None)
        # Metric names built once (the hot path formats no strings).
        self._m_retry = f"upstream.{name}.retry"
        self._m_retry_cause = {c: f"upstream.{name}.retry.{c.value}" for c in Cause}
        self._m_exhausted = f"upstream.{name}.retry_budget_exhausted"
        self._m_held = f"upstream.{name}.retry_after_hold"

    def close(self) -> None:
        for s in self.servers:
            s.pool.close_all()

    def has_available_server(self) -> bool:
        """Whether a new request could be sent to one of the servers now: not down by the health
        checks, ejected, held or drained, nor drained or full by configuration (geo fallbacks ask)."""
        return self.selector.can_take(self.health.excluded(time.monotonic()))

    def _pick(self, tried: set[int], affinity: str | None, now: float) -> int | None:
        excluded = self.health.excluded(now)
        return self.selector.pick(excluded.union(tried) if excluded else tried, affinity, now)

    def _retry_to(self, cause: Cause, tried: set[int], affinity: str | None) -> int | None:
        """The server a retry after ``cause`` goes to, or None: none left, or no budget."""
        now = time.monotonic()
        idx = self._pick(tried, affinity, now)
        if idx is None:
            return None
        if cause not in FREE_CAUSES and not self.retry_budget.try_retry(now):
            # Counted, logged at debug only: in a storm this would be one line per request.
            self.metrics.incr(self._m_exhausted)
            log.debug("upstream %s: retry budget exhausted: not retrying after %s", self.name, cause.value)
            return None
        self.metrics.incr(self._m_retry)
        self.metrics.incr(self._m_retry_cause[cause])
        return idx

    def _hold_on_retry_after(self, reply: UpstreamReply) -> None:
        """RFC 9110 §15.6.4: "The server MAY send a Retry-After header field to suggest an
        appropriate amount of time for the client to wait before retrying the request."
        That server gets no new request from this node for that long (capped)."""
        cap = self.retry.retry_after_max_s
        if cap <= 0:
            return
        for k, v in reply.headers:
            if len(k) == 11 and k.lower() == "retry-after":
                seconds = parse_retry_after(v, time.time())
                if seconds is not None and seconds > 0:
                    seconds = min(seconds, cap)
                    self.health.hold(reply.server.index, seconds, time.monotonic())
                    self.metrics.incr(self._m_held)
                    log.info("upstream %s: %s answered 503 with Retry-After: held out of rotation for %gs",
                             self.name, reply.server.authority, seconds)
                return

    def exchange(
        self,
        method: str,
        target: str,
        host: str | None,
        headers: list[tuple[str, str]],
        body: Iterable[bytes] | None,
        body_length: int | None,
        timeouts: Timeouts | None = None,
        affinity: str | None = None,
        interim=None,
    ) -> UpstreamReply:
        """Send one request and return the response head; see the module docstring.

        ``host`` is the Host field to send, None for the picked server's address.
        ``body`` is None for no body; otherwise an iterable of chunks, framed with
        ``Content-Length: body_length`` or, when that is None, chunked.
        ``affinity`` is the request's key for hash or sticky balancing (``self.affinity``
        says which), None otherwise. ``interim(status, reason, fields)`` gets the backend's
        1xx heads but 100 and 101, as they arrive (module docstring); None drops them. An
        exception it raises (the client is gone) ends the exchange and closes the connection.
        Every server picked gets one verdict in ``self.health`` (``_Verdicts``), whatever way
        the attempt ends.
        """
        try:
            check_request(method, target, host, headers)
        except UnsendableRequest as e:
            log.error("upstream %s: request not sent: %s", self.name, e)
            raise
        verdicts = _Verdicts(self.health)
        try:
            return self._exchange(verdicts, method, target, host, headers, body, body_length, timeouts, affinity, interim)
        except BaseException as e:
            verdicts.failed(e)
            raise

    def _exchange(self, verdicts: "_Verdicts", method, target, host, headers, body, body_length, timeouts,
                  affinity, interim) -> UpstreamReply:
        t = timeouts or self.timeouts
        now = time.monotonic()
        deadline = now + t.total if t.total else None
        rest = _request_head_rest(headers, method, body, body_length)
        replay = ReplayBody(body, self.limits.retry_body_bytes) if body is not None else None
        policy = self.retry
        self.retry_budget.request(now)
        chunks = None
        first: bytes | None = None  # the body chunk that rides with the head; None: not pulled for this attempt
        # Without a body an idempotent request is retried after the fact (STALE_READ); anything
        # else pays one peek, just before the first write, to see a closed pooled connection.
        peek = body is not None or method not in IDEMPOTENT_METHODS
        tried: set[int] = set()
        fresh_tried = 0
        idx = self._pick(tried, affinity, now)
        if idx is None:
            # nothing eligible now: wait in the queue when that is only because servers are full
            idx = self._wait_for_slot(self.health.excluded(now), affinity, deadline)
        fresh = False
        active = -1        # the server this exchange holds an in-flight count on
        started_at = 0.0
        try:
            while True:
                # One attempt: to server ``idx``, on a pooled connection unless ``fresh``.
                server = self.servers[idx]
                if fresh:
                    conn = None
                    fresh = False
                else:
                    tried.add(idx)
                    now = time.monotonic()
                    self.selector.started(idx)
                    verdicts.picked(idx, now)
                    active, started_at = idx, now
                    conn = server.pool.get(now)
                try:
                    if conn is None:
                        conn = self._connect(server, t, deadline)
                    if replay is not None and first is None:
                        # Pulled only once a backend is reachable (a client that sent "Expect: 100-continue"
                        # is not invited to send a body that cannot be delivered); a later attempt gets the
                        # kept chunks first (ReplayBody).
                        chunks = replay.attempt()
                        try:
                            first = next(chunks, b"")
                        except BaseException:
                            conn.close()
                            raise
                    if conn.reused and peek and _peer_closed(conn):
                        # The backend closed it, possibly while we waited for the client's body: nothing
                        # was sent, so the same attempt (first chunk in hand) goes to a fresh connection.
                        conn.close()
                        conn = self._connect(server, t, deadline)
                    head = f"{method} {target} HTTP/1.1\r\nHost: {host or server.authority}\r\n".encode("latin-1") + rest
                    reply, p, parser = self._send_and_read(server, conn, head, first, chunks, body_length, t, deadline,
                                                           interim)
                except _Failed as failed:
                    state = replay.state() if replay is not None else _NOTHING_PULLED
                    action = policy.decide(method, failed.cause, state, len(tried), fresh_tried)
                    first = None
                    if action is Action.FRESH_CONNECTION:
                        # the same server, the same in-flight count and verdict: it did nothing wrong
                        log.debug("upstream %s: %s closed a pooled connection (%s); retrying on a fresh one",
                                  self.name, server.authority, failed.cause.value)
                        fresh_tried += 1
                        fresh = True
                        continue
                    verdicts.failed(failed.error)
                    active = self._finished(active, time.monotonic() - started_at, False)
                    if action is Action.NEXT_SERVER:
                        nxt = self._retry_to(failed.cause, tried, affinity)
                        if nxt is not None:
                            log.info("upstream %s: retrying %s on another server after %s from %s",
                                     self.name, method, failed.cause.value, server.authority)
                            idx = nxt
                            fresh_tried = 0  # the fresh-connection allowance is per server
                            continue
                    error = failed.error
                    if not state.resendable:
                        error = type(error)(f"{error}; the request body ({state.pulled_bytes} bytes sent) cannot be sent again")
                    raise error from None
                # A response head: the reply holds the in-flight count from here (UpstreamReply._done).
                reply._latency = time.monotonic() - started_at
                reply._pool = self
                active = -1
                try:
                    settled = self._after_head(verdicts, method, reply, p, parser, conn, t, deadline, replay, policy,
                                               tried, fresh_tried, affinity, server)
                except BaseException:
                    reply.close()  # whatever went wrong after the head, the slot and the connection go back
                    raise
                if isinstance(settled, UpstreamReply):
                    return settled
                idx = settled  # a 5xx retried on another server
                first = None
                fresh_tried = 0
        except UpstreamError:
            raise  # the backend's doing: the finally below records the failure
        except BaseException:
            # Not the backend's doing (the client went away, a plugin refused its body, the
            # worker is stopping): release the slot without a latency sample.
            if active >= 0:
                active = self._finished(active, 0.0, None)
            raise
        finally:
            if active >= 0:  # failed or interrupted before a reply took over the count
                self._finished(active, time.monotonic() - started_at, False)

    def _after_head(self, verdicts, method, reply, p, parser, conn, t, deadline, replay, policy, tried, fresh_tried,
                    affinity, server) -> "UpstreamReply | int":
        """The response head arrived (the reply holds the server's in-flight count): the reply to
        return, or the index of the server a retried 5xx goes to (this response discarded)."""
        status = reply.status
        outcome = self.health.outcome_of(status)
        verdicts.done(outcome, "" if outcome is Outcome.SUCCESS else f"status {status} (on_5xx)")
        cause = STATUS_CAUSES.get(status)
        if cause is not None:
            if status == 503:
                self._hold_on_retry_after(reply)
            reply = _attach_body(reply, p, parser, conn, method, t, deadline, self.limits)
            state = replay.state() if replay is not None else _NOTHING_PULLED
            if policy.decide(method, cause, state, len(tried), fresh_tried) is Action.NEXT_SERVER:
                nxt = self._retry_to(cause, tried, affinity)
                if nxt is not None:
                    log.info("upstream %s: retrying %s on another server after %d from %s",
                             self.name, method, status, server.authority)
                    _discard(reply, p)
                    return nxt
            if replay is not None:
                replay.release()
            return reply  # no retry: the client gets the backend's own answer
        if replay is not None:
            replay.release()  # no retry after a response: the kept chunks can go
        return _attach_body(reply, p, parser, conn, method, t, deadline, self.limits)

    def _finished(self, index: int, latency_s: float, ok: bool | None) -> int:
        """Release the in-flight count of ``index``; wake a queued request when that opened a slot. Returns -1."""
        if self.selector.finished(index, latency_s, ok, time.monotonic()) and self.queue is not None:
            self.queue.wake_one()
        return -1

    def _wait_for_slot(self, excluded: frozenset[int] | set[int], affinity: str | None, deadline: float | None) -> int:
        """No server can be picked: wait in the queue while that is only because servers are full.

        Raises NoHealthyServer when no server is eligible at all, ServersBusy when every eligible
        one is full and the queue is full or the wait ran out (503 either way)."""
        selector = self.selector
        if not selector.blocked(excluded):
            raise NoHealthyServer(f"upstream {self.name}: no server available")
        queue = self.queue
        if queue is None:
            raise ServersBusy(f"upstream {self.name}: every server is at its max_conns")
        until = time.monotonic() + queue.timeout
        if deadline is not None:
            until = min(until, deadline)
        while True:
            left = until - time.monotonic()
            woken = queue.wait(left) if left > 0 else False
            if woken is None:
                raise ServersBusy(f"upstream {self.name}: every server is at its max_conns and the queue is full")
            now = time.monotonic()
            excluded = self.health.excluded(now)
            idx = selector.pick(excluded, affinity, now)
            if idx is not None:
                return idx
            if not selector.blocked(excluded):
                raise NoHealthyServer(f"upstream {self.name}: no server available")
            if not woken:
                raise ServersBusy(f"upstream {self.name}: no server slot within the queue timeout")

    def _connect(self, server: Server, t: Timeouts, deadline) -> PooledConnection:
        """A new connection to ``server``; a failure is a ``_Failed`` for the retry policy."""
        try:
            return server.connect(_remaining(t.connect, deadline))
        except (ConnectError, ConnectTimeout) as e:
            log.warning("upstream %s: %s", self.name, e)
            raise _Failed(Cause.CONNECT_TIMEOUT if isinstance(e, ConnectTimeout) else Cause.CONNECT_ERROR, e) from None

    def _send_and_read(self, server, conn, head, first, chunks, body_length, t, deadline, interim):
        """Send the request and read the response head: ``(reply, parse state, parser)``; the
        connection is closed on any failure."""
        conn.requests += 1
        ok = False
        try:
            if chunks is None:
                _send_first(conn, head, t, deadline)
            else:
                _send_with_body(conn, head, first, chunks, body_length, t, deadline)
            head_deadline = deadline
            per_try = self.retry.per_try_timeout
            if per_try is not None:
                try_end = time.monotonic() + per_try
                if deadline is None or try_end < deadline:
                    head_deadline = try_end
            try:
                reply, p, parser = _read_head(conn, server, t, head_deadline, self.limits, interim)
            except ReadTimeout as e:
                raise _Failed(Cause.READ_TIMEOUT, e) from None
            except TotalTimeout:
                if head_deadline is deadline:
                    raise
                raise _Failed(Cause.READ_TIMEOUT, ReadTimeout(
                    f"{server.authority} sent no response head within the per-try timeout ({per_try:g}s)")) from None
            reply._conn = conn
            ok = True
        finally:
            if not ok:
                conn.close()
        return reply, p, parser


class _Verdicts:
    """The health verdict of each server one exchange picks: ``picked``, then exactly one
    ``done``/``failed`` (an attempt that ends in any other way counts as NO_VERDICT)."""

    __slots__ = ("health", "index", "start")

    def __init__(self, health: PoolHealth) -> None:
        self.health = health
        self.index: int | None = None
        self.start = 0.0

    def picked(self, index: int, now: float) -> None:
        if self.index is not None:
            self.done(Outcome.NO_VERDICT)
        self.index, self.start = index, now
        self.health.picked(index, now)

    def done(self, outcome: Outcome, error: str = "") -> None:
        if self.index is not None:
            now = time.monotonic()
            index, self.index = self.index, None
            self.health.observe(index, outcome, now, now - self.start, error)

    def failed(self, exc: BaseException) -> None:
        self.done(_outcome_of_error(exc), str(exc) if isinstance(exc, UpstreamError) else "")


# What an attempt's failure says about the server (outlier detection, health.py). An invalid
# or oversized response, or the exchange's own total budget, is not held against it.
_OUTCOME_OF_ERROR = {
    ConnectError: Outcome.CONNECT_FAILURE,
    ConnectTimeout: Outcome.TIMEOUT,
    ReadTimeout: Outcome.TIMEOUT,
    SendTimeout: Outcome.TIMEOUT,
}


def _outcome_of_error(exc: BaseException) -> Outcome:
    """By the error's class or its nearest listed base (TLSHandshakeError is a ConnectError)."""
    for cls in type(exc).__mro__:
        outcome = _OUTCOME_OF_ERROR.get(cls)
        if outcome is not None:
            return outcome
    return Outcome.NO_VERDICT


def _discard(reply: UpstreamReply, p: _Parse) -> None:
    """Drop a response that is being retried, leaking nothing: a body that already arrived
    whole with the head is read out of the buffer (no wait) and the connection pooled;
    otherwise the connection is closed (reading an unknown body could cost a read timeout)."""
    body = reply.body
    if body is None:
        return  # no body: _attach_body pooled or closed the connection already
    if p.done or p.surplus:
        for _ in body:
            pass  # the generator yields the held chunks, reads nothing, and settles the connection
        return
    reply.close()


def _remaining(timeout: float, deadline: float | None) -> float:
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise TotalTimeout("upstream exchange exceeded its total timeout")
    return min(timeout, left)


def _peer_closed(conn: PooledConnection) -> bool:
    """True when the backend has closed (or reset) an idle connection; one non-blocking peek."""
    raw = conn.raw
    if type(raw) is backend_tls.TLSTransport:
        return raw.peer_closed()  # no MSG_PEEK under TLS: the kernel bytes may be a session ticket
    try:
        raw.recv(1, _gsocket.MSG_PEEK | _gsocket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    # EOF, or bytes on an idle connection (a protocol violation): unusable either way.
    return True


def _request_head_rest(headers: list[tuple[str, str]], method: str, body, body_length) -> bytes:
    """The request head after the request line and Host: fields, framing, blank line."""
    parts = []
    for k, v in headers:
        parts.append(f"{k}: {v}\r\n")
    if body is not None:
        parts.append(f"Content-Length: {body_length}\r\n\r\n" if body_length is not None else "Transfer-Encoding: chunked\r\n\r\n")
    elif method in ("POST", "PUT", "PATCH"):
        # RFC 9110 §8.6: a user agent SHOULD send Content-Length for a body-less POST/PUT.
        parts.append("Content-Length: 0\r\n\r\n")
    else:
        parts.append("\r\n")
    return "".join(parts).encode("latin-1")


# ---------------------------------------------------------------- socket I/O


def _write(conn: PooledConnection, data: bytes, t: Timeouts, deadline: float | None) -> None:
    """Write all of ``data``; a wait for writability longer than ``t.send`` is SendTimeout. OSError passes."""
    raw = conn.raw
    try:
        sent = raw.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    if sent == len(data):
        return
    view = memoryview(data)
    while sent < len(view):
        timeout = _remaining(t.send, deadline)
        if not conn.wait_writable(timeout):
            if timeout < t.send:
                raise TotalTimeout("upstream exchange exceeded its total timeout")
            raise SendTimeout("sending to the backend timed out")
        try:
            sent += raw.send(view[sent:])
        except (BlockingIOError, InterruptedError):
            pass


def _send_first(conn: PooledConnection, data: bytes, t: Timeouts, deadline: float | None) -> None:
    """The first write of a request: on a reused connection, a reset or broken pipe means the
    backend had closed it before the request (nothing of it was received)."""
    try:
        _write(conn, data, t, deadline)
    except OSError as e:
        if conn.reused and e.errno in _DEAD_ERRNOS:
            raise _Failed(Cause.STALE_WRITE, ProtocolError("the backend closed a reused connection before the request")) from None
        # Part of the request may have arrived: a RESET, retried only when the method allows it.
        raise _Failed(Cause.RESET, ConnectError(f"sending to the backend failed: {e.strerror or e}")) from None


def _send_more(conn: PooledConnection, data: bytes, t: Timeouts, deadline: float | None) -> None:
    try:
        _write(conn, data, t, deadline)
    except OSError as e:
        raise _Failed(Cause.RESET, ConnectError(f"sending to the backend failed: {e.strerror or e}")) from None


def _send_with_body(conn, head: bytes, first: bytes, chunks: Iterator[bytes], body_length: int | None, t, deadline) -> None:
    """Stream the body; the first chunk rides with the head so a small POST is one send."""
    if body_length is None:
        _send_first(conn, head + (b"%x\r\n%s\r\n" % (len(first), first) if first else b""), t, deadline)
        for chunk in chunks:
            if chunk:
                _send_more(conn, b"%x\r\n%s\r\n" % (len(chunk), chunk), t, deadline)
        _send_more(conn, b"0\r\n\r\n", t, deadline)
    else:
        _send_first(conn, head + first, t, deadline)
        for chunk in chunks:
            _send_more(conn, chunk, t, deadline)


def _recv(conn: PooledConnection, t: Timeouts, deadline: float | None, wait_first: bool = False) -> bytes:
    """One read of up to RECV_BYTES; b"" at EOF. Silence longer than ``t.read`` is ReadTimeout. OSError passes.

    ``wait_first``: just after sending, the answer cannot be there yet: wait for
    readability first instead of paying a recv() that fails with EAGAIN."""
    raw = conn.raw
    if not wait_first:
        try:
            return raw.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            pass
    while True:
        timeout = _remaining(t.read, deadline)
        if not conn.wait_readable(timeout):
            if timeout < t.read:
                raise TotalTimeout("upstream exchange exceeded its total timeout")
            raise ReadTimeout(f"backend sent nothing for {t.read:g}s")
        try:
            return raw.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            continue


# ---------------------------------------------------------------- response


def _feed(parser, p: _Parse, data: bytes) -> int | None:
    """Feed ``data``; the offset where upgraded (101) bytes begin, or None."""
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade as e:
        return e.args[0] if e.args else len(data)
    except httptools.HttpParserError as e:
        if p.done:
            p.surplus = True  # garbage after a complete response: never reuse the connection
            return None
        raise ProtocolError(f"invalid response from backend: {e}") from None
    return None


def _relay_interim(p: _Parse) -> None:
    """Hand the interim heads parsed so far to ``p.relay``, in the order they came."""
    heads, p.heads = p.heads, None
    relay = p.relay
    for status, reason, fields in heads:
        relay(status, reason, fields)


def _read_head(conn: PooledConnection, server: Server, t: Timeouts, deadline: float | None, limits: Limits,
               interim=None) -> tuple[UpstreamReply, _Parse, object]:
    p = _Parse(limits, interim)
    parser = httptools.HttpResponseParser(p)
    p.status_of = parser.get_status_code
    upgrade_at = None
    first = True
    head_bytes = 0
    max_head = limits.max_head_bytes
    try:
        while not p.final:
            try:
                data = _recv(conn, t, deadline, wait_first=first)
            except OSError as e:
                error = ProtocolError(f"reading from {server.authority} failed: {e.strerror or e}")
                if not first:
                    raise error from None
                if conn.reused and e.errno in _DEAD_ERRNOS:
                    raise _Failed(Cause.STALE_READ, ProtocolError(
                        f"backend {server.authority} closed a reused connection before answering")) from None
                raise _Failed(Cause.RESET, error) from None
            if not data:
                if not first:
                    raise ProtocolError(f"backend {server.authority} closed the connection in the middle of its response head")
                if conn.reused:
                    raise _Failed(Cause.STALE_READ, ProtocolError(
                        f"backend {server.authority} closed a reused connection before answering"))
                raise _Failed(Cause.RESET, ProtocolError(f"backend {server.authority} closed the connection before answering"))
            first = False
            room = max_head - head_bytes
            head_bytes += len(data)
            if len(data) <= room:
                upgrade_at = _feed(parser, p, data)
            else:
                # Only the head budget reaches the parser until the head is complete.
                upgrade_at = _feed(parser, p, data[:room]) if room > 0 else None
                if p.error is None and not p.final:
                    raise ResponseTooLarge(f"response head from {server.authority} larger than {max_head} bytes")
                if upgrade_at is None and p.error is None:
                    upgrade_at = _feed(parser, p, data[room:])
                    if upgrade_at is not None:
                        upgrade_at += room
            if p.heads is not None:
                _relay_interim(p)  # before a limit error: the 1xx within the limits were the backend's answer
            if p.error is not None:
                raise ResponseTooLarge(f"response from {server.authority}: {p.error}")
            if upgrade_at is not None:
                break
    finally:
        p.status_of = None  # no parser <-> callbacks cycle left behind, whatever happened
    reply = UpstreamReply(parser.get_status_code(), p.reason.decode("latin-1"), p.headers, server)
    if upgrade_at is not None:
        reply.upgrade_data = data[upgrade_at:]
    return reply, p, parser


def _attach_body(reply: UpstreamReply, p: _Parse, parser, conn: PooledConnection, method: str, t: Timeouts,
                 deadline: float | None, limits: Limits) -> UpstreamReply:
    status = reply.status
    # llhttp's should_keep_alive() reads False once the message is complete, so decide here:
    # HTTP/1.1 persists unless "Connection: close"; HTTP/1.0 only with "Connection: keep-alive".
    http11 = parser.get_http_version() == "1.1"
    keep_alive = http11 and not p.surplus
    length = None
    chunked = False
    for k, v in reply.headers:
        lk = k.lower()
        if lk == "connection":
            tokens = {tok.strip() for tok in v.lower().split(",")}
            if "close" in tokens:
                keep_alive = False
            elif "keep-alive" in tokens and not http11 and not p.surplus:
                keep_alive = True
        elif lk == "content-length":
            v = v.strip()
            length = int(v) if v.isascii() and v.isdigit() else None
        elif lk == "transfer-encoding":
            chunked = v.strip().lower().endswith("chunked")
        elif lk == "keep-alive":
            _apply_keepalive_hint(conn, v)
    if status == 101:
        conn.release_timers()
        reply.upgrade_sock = conn.sock
        reply._conn = None  # the socket now belongs to the tunnel
        reply._done()       # the exchange is over; the tunnel is not counted as a request in flight
        return reply
    if method == "HEAD" or status in _NO_BODY_STATUS:
        # No body whatever the framing headers say (RFC 9112 §6.3 rule 1).
        _finish(conn, keep_alive and not p.chunks)
        reply._done()
        reply.body = None
        # HEAD and 304 keep the backend's Content-Length (RFC 9110 §8.6: the length a GET / a
        # 200 would have had), or its absence; a 204 has none (RFC 9110 §8.6: MUST NOT).
        reply.length = length if (method == "HEAD" or status == 304) else 0
        return reply
    if not chunked and length is None:
        keep_alive = False  # read until close: the connection cannot be reused
    reply.length = None if chunked else length
    body = _body(reply, conn, p, parser, keep_alive, until_close=(not chunked and length is None), t=t,
                 deadline=deadline, max_framing=limits.max_trailer_bytes)
    next(body)  # primed: from here on close() runs its finally even if nobody read a byte
    reply.body = body
    return reply


def _apply_keepalive_hint(conn: PooledConnection, value: str) -> None:
    # "Keep-Alive: timeout=5, max=100": stop reusing a second before the backend's own timer fires.
    for part in value.split(","):
        name, _, num = part.strip().partition("=")
        num = num.strip()
        if name.strip().lower() == "timeout" and num.isascii() and num.isdigit():
            # a huge number (thousands of digits) must not cost an int() of it: a day is a bound
            seconds = int(num) if len(num) <= 5 else 86400
            conn.expires = time.monotonic() + max(0, seconds - 1)


def _finish(conn: PooledConnection, reusable: bool) -> None:
    if reusable:
        conn.pool.put(conn, time.monotonic())
    else:
        conn.close()


def _body(reply, conn, p: _Parse, parser, keep_alive: bool, until_close: bool, t: Timeouts, deadline, max_framing: int) -> Iterator[bytes]:
    """Yield the response body as it arrives; return the connection to the pool only after a clean end.

    Bytes that carry no body (chunk framing, chunk extensions, trailers) are counted from
    the last body byte on: more than ``max_framing`` of them is ResponseTooLarge, so a
    backend cannot feed an endless trailer or extension into the parser's buffers."""
    clean = False
    framing = 0
    try:
        yield b""  # taken by _attach_body (priming), never seen by the caller
        if p.chunks:
            pending = p.chunks
            p.chunks = []
            for c in pending:
                yield c
        while not p.done and not p.surplus:
            try:
                data = _recv(conn, t, deadline)
            except OSError as e:
                raise ProtocolError(f"reading from the backend failed: {e.strerror or e}") from None
            if not data:
                if until_close:
                    clean = True
                    keep_alive = False
                    return
                raise ProtocolError("backend closed the connection mid-body")
            _feed(parser, p, data)
            if p.error is not None:
                raise ResponseTooLarge(f"response from {reply.server.authority}: {p.error}")
            if p.chunks:
                framing = 0
                pending = p.chunks
                p.chunks = []
                for c in pending:
                    yield c
            else:
                framing += len(data)
                if framing > max_framing and not p.done:
                    raise ResponseTooLarge(f"response from {reply.server.authority}: more than {max_framing} bytes of chunk framing or trailers")
        if p.surplus:
            keep_alive = False
        reply.trailers = p.trailers
        clean = True
    finally:
        if clean and keep_alive:
            _finish(conn, True)
        else:
            conn.close()
        reply._done()
