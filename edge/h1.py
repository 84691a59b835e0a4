"""The HTTP/1.x client connection: one state machine that reads, writes and tunnels.

Theory of operation. gunicorn accepts the connection (TLS, ALPN) and
``EdgeWorker.handle`` passes HTTP/1 connections to ``serve``. A ``Connection``
moves through the states of ``TRANSITIONS`` (h11 ``_state.py``, adapted):

    IDLE --bytes--> READING_HEAD --head--> HANDLING --reply--> WRITING --keep--> IDLE
      \\---------------head (whole head in one recv)--^      \\--upgrade--> TUNNEL
    any state --close--> CLOSED; IDLE/READING_HEAD --refuse--> WRITING (an error reply)

An event a state does not allow raises ``IllegalTransition`` naming both, so a
keep-alive decision cannot be taken in the wrong place again.

Reading. Bytes are collected until the head ends (``\\r\\n\\r\\n``); only then is
gunicorn's C parser (``gunicorn_h1c``: picohttpparser, which refuses malformed
request lines, bad names and values, duplicate Host or Content-Length, bare LF)
run, once. Each ``recv`` only scans its new bytes, so a trickled head costs O(n),
not O(n²) (issue 7, defect 5). Bounds: the whole head (``max_head_size``), the
line being received (a field line without an end counts against the field size
limit at once), and time: ``header_timeout`` from the head's first byte (or from
the accept for the first request) to its end, 408 and close; an idle keep-alive
connection is closed quietly after ``keepalive``, and ``keepalive: 0`` means no
keep-alive (every reply closes), as in gunicorn. Then ``edge.admission.admit``
checks the request (the same step HTTP/2 streams pass) and ``Proxy.handle``
answers it. The request body streams through ``BodyReader`` (Content-Length by
counting, chunked through the strict ``ChunkedDecoder``), with
``body_idle_timeout`` as the longest gap between reads; a body not read to its end
when the reply is written closes the connection (draining an unwanted upload
could mean reading gigabytes; nginx closes too).

Writing. ``edge.framing.plan`` decides Content-Length, chunked or
close-delimited, and keep-alive. Every header name and value is checked first
(``edge.fields``): an invalid one, whatever produced it, turns the reply into a
500 and one log line; it never reaches the wire. A failure after the head went
out aborts the connection (RST), so the client sees a truncated reply.

Interim responses (issue 10; RFC 9110 §15.2). While ``Proxy.handle`` works on an
HTTP/1.1 request, ``ctx.interim`` is the connection's ``send_interim``: the backend's
1xx heads (102, 103 ...; never 100 or 101, see edge/upstream/client.py) are written as
they arrive, each as ``HTTP/1.1 1xx reason``, the fields a final response would keep
(``Proxy.interim_fields``: hop-by-hop and Connection-named fields removed, Via added),
an empty line, and no body or framing field. ``ctx.interim`` stays None for an HTTP/1.0
request (§15.2: "A server MUST NOT send a 1xx response to an HTTP/1.0 client") and is
cleared before the final head is written; ``send_interim`` also refuses any state but
HANDLING, so no 1xx can follow the final head. Fields that fail the checks of the way
out drop that interim response (it is advisory), logged and counted. Edge's own
``100 Continue`` (``Expect: 100-continue``) goes out when the body is first pulled,
before the request is sent to a backend.

Tunnel. After a 101 the client and backend sockets are relayed byte for byte
until either side closes or the tunnel has been quiet in both directions for its
idle timeout (issue 7, defect 6: traffic either way counts as activity).

Why not gunicorn's own request loop: measured on this machine, its per-request
Python objects cost about a third of a small proxied request (docs/benchmarks.md).
"""

from __future__ import annotations

import email.utils
import enum
import logging
import re
import socket
import time

import gevent
import gunicorn_h1c
from gunicorn_h1c._parser_fast import IncompleteError as _Incomplete  # the fast parser's own class, not the package's

from edge import admission, framing
from edge.admission import ExpectationFailed, NotImplementedCoding  # noqa: F401  (re-exported for callers and tests)
from edge.context import STATUS_REASONS, UNKNOWN_CLIENT, Headers, Reply, RequestBody, RequestContext, close_body
from edge.errors import UriTooLong  # noqa: F401  (re-exported for tests)
from edge.errors import (BadRequest, ClientDisconnected, ClientError, EdgeError, HeaderTooLarge,
                         InvalidResponseField, SlowClient)
from edge.fields import fields_valid
from edge.http import without_framing
from edge.netio import TLSReader, Waits, raw_socket, send_all

log = logging.getLogger("edge.h1")

RECV_BYTES = 65536
TUNNEL_CHUNK = 65536
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close sends RST
# RFC 9112 §4: reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
_REASON_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_REASONS_OK = frozenset(STATUS_REASONS.values()) | {""}




# ---------------------------------------------------------------------------- state machine


class State(enum.Enum):
    # Members are singletons: identity hashing (C) instead of Enum's hash(name) in Python,
    # since every request looks up four transitions.
    __hash__ = object.__hash__

    IDLE = "idle"                  # between requests: waiting for a first byte
    READING_HEAD = "reading head"  # part of a head arrived
    HANDLING = "handling"          # head admitted; the proxy works, the body may be read
    WRITING = "writing"            # the reply (or an error reply) is being written
    TUNNEL = "tunnel"              # upgraded: bytes relayed both ways
    CLOSED = "closed"


class Event(enum.Enum):
    __hash__ = object.__hash__

    BYTES = "bytes"        # first bytes of a head
    HEAD = "head"          # a complete head was parsed and admitted
    REFUSE = "refuse"      # a head was refused: an error reply follows, then close
    REPLY = "reply"        # start writing the reply
    UPGRADE = "upgrade"    # the backend answered 101
    KEEP = "keep"          # reply written; the connection carries another request
    CLOSE = "close"        # the connection ends


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.BYTES): State.READING_HEAD,
    (State.IDLE, Event.HEAD): State.HANDLING,
    (State.IDLE, Event.REFUSE): State.WRITING,
    (State.IDLE, Event.CLOSE): State.CLOSED,
    (State.READING_HEAD, Event.HEAD): State.HANDLING,
    (State.READING_HEAD, Event.REFUSE): State.WRITING,
    (State.READING_HEAD, Event.CLOSE): State.CLOSED,
    (State.HANDLING, Event.REPLY): State.WRITING,
    (State.HANDLING, Event.UPGRADE): State.TUNNEL,
    (State.HANDLING, Event.CLOSE): State.CLOSED,
    (State.WRITING, Event.KEEP): State.IDLE,
    (State.WRITING, Event.CLOSE): State.CLOSED,
    (State.TUNNEL, Event.CLOSE): State.CLOSED,
    (State.CLOSED, Event.CLOSE): State.CLOSED,
}


class IllegalTransition(RuntimeError):
    def __init__(self, state: State, event: Event) -> None:
        self.state, self.event = state, event
        super().__init__(f"HTTP/1 connection: event {event.value!r} is not allowed in state {state.value!r}")


# The same table by state, so a step is two dict lookups without building a key tuple.
_NEXT: dict[State, dict[Event, State]] = {s: {e: t for (s2, e), t in TRANSITIONS.items() if s2 is s} for s in State}


def next_state(state: State, event: Event) -> State:
    try:
        return _NEXT[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None


# ---------------------------------------------------------------------------- pure reading rules


class HeadLimits:
    """The bounds of one request head (bytes), from ``server.*``; 0 disables a per-line bound."""

    __slots__ = ("line", "fields", "field_size", "head")

    def __init__(self, line: int, fields: int, field_size: int, head: int) -> None:
        self.line, self.fields, self.field_size, self.head = line, fields, field_size, head


def head_end(buf, scanned: int) -> int:
    """Where the head in ``buf`` ends (index after its empty line), -1 if not yet; only bytes
    from ``scanned`` on are searched. A bare-LF empty line also counts: the parser refuses it."""
    start = scanned - 3 if scanned > 3 else 0
    end = buf.find(b"\r\n\r\n", start)
    if end >= 0:
        return end + 4
    end = buf.find(b"\n\n", start)
    return end + 2 if end >= 0 else -1


_LINE_SLACK = 8  # ": ", OWS and CR beyond what the parser's limits count: only its own refusal is exact


def check_partial_head(buf, limits: HeadLimits) -> None:
    """Refuse an incomplete head that can no longer fit its bounds (414/431)."""
    n = len(buf)
    if n > limits.head:
        raise HeaderTooLarge(f"request head over {limits.head} bytes")
    nl = buf.rfind(b"\n")
    if nl < 0:
        if limits.line and n > limits.line + _LINE_SLACK:
            raise UriTooLong(f"request line over {limits.line} bytes")
    elif limits.field_size and n - nl - 1 > limits.field_size + _LINE_SLACK:
        raise HeaderTooLarge(f"header field line over {limits.field_size} bytes")


def parse_head(buf: bytes, limits: HeadLimits):
    """gunicorn's C parser on one complete head; its errors as ClientErrors."""
    try:
        return gunicorn_h1c.parse_request_fast(buf, limit_request_line=limits.line,
                                              limit_request_fields=limits.fields,
                                              limit_request_field_size=limits.field_size)
    except _Incomplete:
        raise BadRequest("malformed request head") from None
    except gunicorn_h1c.LimitRequestLine as e:
        raise UriTooLong(str(e)) from None
    except gunicorn_h1c.LimitRequestHeaders as e:
        raise HeaderTooLarge(str(e)) from None
    except ValueError as e:  # every parse error of both parser modules derives from it
        raise BadRequest(f"{type(e).__name__}: {e}") from None


def wants_close(req) -> bool:
    """The client's own keep-alive wish: HTTP/1.1 persists unless "close"; 1.0 only with "keep-alive"."""
    cc = req.connection_close
    if req.minor_version == 1:
        return cc == 1
    return cc != 0


class ChunkedDecoder:
    """Incremental, strict decoder of a chunked body (RFC 9112 §7.1).

    ``feed(data)`` returns the payload pieces found; ``done`` turns true after the
    last chunk and the trailer section; ``surplus`` holds bytes after the body (the
    next pipelined request). Limits keep a hostile client from growing a line forever.
    """

    __slots__ = ("_state", "_left", "_line", "done", "surplus", "trailers")

    MAX_LINE = 4096
    MAX_TRAILER_BYTES = 16384
    MAX_TRAILERS = 64

    def __init__(self) -> None:
        self._state = 0          # 0 size line, 1 data, 2 CRLF after data, 3 trailer section
        self._left = 0
        self._line = b""
        self.done = False
        self.surplus = b""
        self.trailers: list[tuple[str, str]] = []

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            st = self._state
            if st == 1:
                take = min(self._left, n - pos)
                out.append(data[pos:pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = 2
            elif st == 2:
                need = 2 - len(self._line)
                self._line += data[pos:pos + need]
                pos += need
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise BadRequest("chunk data not followed by CRLF")
                    self._line = b""
                    self._state = 0
            else:
                end = data.find(b"\n", pos)
                if end < 0:
                    self._line += data[pos:]
                    pos = n
                    limit = self.MAX_TRAILER_BYTES if st == 3 else self.MAX_LINE
                    if len(self._line) > limit:
                        raise BadRequest("chunk size line or trailer too long")
                    break
                line = self._line + data[pos:end + 1]
                pos = end + 1
                self._line = b""
                if len(line) > (self.MAX_TRAILER_BYTES if st == 3 else self.MAX_LINE):
                    raise BadRequest("chunk size line or trailer too long")
                if not line.endswith(b"\r\n"):
                    raise BadRequest("bare LF in chunked framing")
                line = line[:-2]
                if st == 0:
                    self._size_line(line)
                else:
                    self._trailer_line(line)
        if self.done and pos < n:
            self.surplus = data[pos:]
        return out

    def _size_line(self, line: bytes) -> None:
        size, _, ext = line.partition(b";")
        size = size.rstrip(b" \t")  # BWS before an extension
        if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
            raise BadRequest(f"invalid chunk size {line[:40]!r}")
        if ext and (b"\r" in ext or b"\n" in ext or b"\x00" in ext):
            raise BadRequest("invalid chunk extension")
        self._left = int(size, 16)
        self._state = 1 if self._left else 3

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self.done = True
            return
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            raise BadRequest("invalid trailer field")
        if len(self.trailers) >= self.MAX_TRAILERS:
            raise BadRequest("too many trailer fields")
        self.trailers.append((name.decode("latin-1"), value.strip().decode("latin-1")))


class Clock:
    """The Date field value, recomputed at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = 0
        self._value = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True)
        return self._value


def reply_head(reply: Reply, plan: framing.Plan, date: str) -> bytes:
    """The serialised head of a reply; InvalidResponseField if any part may not be written."""
    headers = reply.headers
    reason = reply.reason
    if not fields_valid(headers):
        raise InvalidResponseField.naming(headers)
    if reason not in _REASONS_OK and _REASON_RE.fullmatch(reason) is None:
        raise InvalidResponseField(f"invalid reason phrase {reason[:60]!r}")
    status_line = f"HTTP/1.1 {reply.status} {reason}\r\n"
    if headers:
        lines = "\r\n".join(map(": ".join, headers))
        parts = [status_line, lines, "\r\n"]
        low = lines.lower()
        if not (low.startswith("date:") or "\r\ndate:" in low):
            parts.append(f"Date: {date}\r\n")
    else:
        parts = [status_line, f"Date: {date}\r\n"]
    if plan.announce_length:
        parts.append(f"Content-Length: {reply.length}\r\n")
    elif plan.chunked:
        parts.append("Transfer-Encoding: chunked\r\n")
    if not plan.keep_alive:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def interim_head(status: int, reason: str, fields: list[tuple[str, str]]) -> bytes:
    """The serialised head of a 1xx interim response (no framing fields: a 1xx has no
    content, RFC 9110 §15.2); InvalidResponseField if a field or the reason may not be written."""
    if not 100 <= status < 200 or status == 101:
        raise InvalidResponseField(f"status {status} is not an interim response")
    if not fields_valid(fields):
        raise InvalidResponseField.naming(fields)
    if reason not in _REASONS_OK and _REASON_RE.fullmatch(reason) is None:
        raise InvalidResponseField(f"invalid reason phrase {reason[:60]!r}")
    lines = "".join([f"{name}: {value}\r\n" for name, value in fields])
    return f"HTTP/1.1 {status} {reason}\r\n{lines}\r\n".encode("latin-1")


# ---------------------------------------------------------------------------- the connection


class Connection:
    """One client connection: its state, its read buffer, and its socket."""

    __slots__ = ("sock", "raw", "waits", "wait_first", "timeout_s", "buf", "state", "idle", "worker", "proxy", "limits", "keepalive_s",
                 "header_timeout_s", "body_idle_s", "tunnel_idle_s", "peer_ip", "port", "scheme", "clock", "served",
                 "interim_writer")

    def __init__(self, worker, sock, peer_ip: str, port: int, scheme: str) -> None:
        self.worker = worker
        self.proxy = proxy = worker.proxy
        cfg = proxy.state.cfg.server
        self.sock = sock
        # plain TCP: reads go to the kernel socket, waits through re-armed timers (edge.netio);
        # a TLS socket reads through gevent's SSL wrapper
        self.raw = raw_socket(sock)
        self.waits = Waits(sock) if self.raw is not None else None
        self.timeout_s: float | None = -1.0  # the socket's timeout as set_timeout last set it (-1: unknown)
        self.wait_first = self.waits is not None and not isinstance(self.raw, TLSReader)  # see read_head
        self.buf = b""
        self.state = State.IDLE
        self.idle = worker.idle_connections
        self.limits = worker.head_limits
        self.keepalive_s = cfg.keepalive
        self.header_timeout_s = cfg.header_timeout
        self.body_idle_s = cfg.body_idle_timeout
        self.tunnel_idle_s = worker.tunnel_idle_s
        self.peer_ip = peer_ip
        self.port = port
        self.scheme = scheme
        self.clock = worker.clock
        self.served = 0
        self.interim_writer = self.send_interim  # bound once per connection: ctx.interim of its HTTP/1.1 requests

    def event(self, ev: Event) -> None:
        try:
            self.state = _NEXT[self.state][ev]
        except KeyError:
            raise IllegalTransition(self.state, ev) from None

    def set_timeout(self, timeout_s: float | None) -> None:
        """``sock.settimeout`` unless it holds that value already (it is set twice per request
        otherwise, each a Python call into gevent). Everything on this connection sets the
        socket's timeout through here."""
        if timeout_s != self.timeout_s:
            self.sock.settimeout(timeout_s)
            self.timeout_s = timeout_s

    # ------------------------------------------------------------------ reading

    def recv(self) -> bytes:
        raw = self.raw
        if raw is not None:
            while True:
                try:
                    return raw.recv(RECV_BYTES)
                except BlockingIOError:
                    pass
                except OSError as e:
                    raise ClientDisconnected(f"client connection failed: {e.strerror or e}") from None
                if not self.waits.readable(self.sock.timeout):
                    raise SlowClient("client sent nothing within the timeout")
        try:
            data = self.sock.recv(RECV_BYTES)
        except socket.timeout:
            raise SlowClient("client sent nothing within the timeout") from None
        except OSError as e:
            raise ClientDisconnected(f"client connection failed: {e.strerror or e}") from None
        return data

    def read_head(self):
        """The next parsed head, or None when the client closed (or idled out) between requests."""
        sock = self.sock
        limits = self.limits
        buf = self.buf
        if buf[:2] == b"\r\n":
            buf = buf.lstrip(b"\r\n")  # RFC 9112 §2.2: ignore empty lines before a request
        now = time.monotonic()
        if self.served == 0:
            deadline = now + self.header_timeout_s  # a new connection must send its head in time
            self.set_timeout(self.header_timeout_s)
        elif buf:
            deadline = now + self.header_timeout_s
            self.set_timeout(self.header_timeout_s)
        else:
            deadline = None
            self.idle[sock] = now
            if self.wait_first:
                # An idle keep-alive connection: its next request is rarely there yet (the client
                # is still reading the last answer), so wait for it before reading instead of
                # paying a recv that fails with EAGAIN on every request. Plain TCP only: a TLS
                # connection may hold a decrypted request inside OpenSSL with nothing on the socket.
                # (The wait has its own timer: the socket's timeout stays as it was.)
                if not self.waits.readable(self.keepalive_s):
                    self.idle.pop(sock, None)
                    return None  # idle past keepalive: close quietly, as every server does
            else:
                self.set_timeout(self.keepalive_s)
        acc = None  # a bytearray once the head spans several recvs
        scanned = 0
        more = False  # a recv returned part of a head: the next one waits only what is left
        while True:
            if buf:
                end = head_end(buf, scanned)
                if end >= 0:
                    head = bytes(buf) if acc is not None else buf
                    req = parse_head(head, limits)
                    self.buf = head[req.consumed:]
                    return req
                check_partial_head(buf, limits)
                scanned = len(buf)
            if more:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SlowClient(f"request head not complete within {self.header_timeout_s:g}s")
                self.set_timeout(left)
            try:
                data = self.recv()
            except SlowClient:
                if deadline is None:
                    self.idle.pop(sock, None)
                    return None  # an idle keep-alive connection: close quietly, as every server does
                if not buf:
                    return None  # a connection that never sent a byte
                raise
            except ClientDisconnected:
                self.idle.pop(sock, None)  # reset while idle: the stopping worker must not hold on to it
                raise
            if deadline is None:
                self.idle.pop(sock, None)
                if data:
                    deadline = time.monotonic() + self.header_timeout_s
            if not data:
                if buf:
                    raise ClientDisconnected("client closed the connection mid-head")
                return None
            if self.state is State.IDLE:
                self.event(Event.BYTES)
            if not buf:
                buf = data
                if buf[:2] == b"\r\n":
                    buf = buf.lstrip(b"\r\n")
            else:
                if acc is None:
                    acc = bytearray(buf)
                acc += data
                buf = acc
            more = True

    # ------------------------------------------------------------------ one exchange

    def serve(self) -> None:
        proxy = self.proxy
        worker = self.worker
        keepalive_on = self.keepalive_s > 0
        while True:
            try:
                req = self.read_head()
            except ClientDisconnected:
                self.event(Event.CLOSE)
                return
            except ClientError as e:
                self.refuse(e)
                return
            if req is None:
                self.event(Event.CLOSE)
                return
            now = time.monotonic()
            worker.count_request()
            http11 = req.minor_version == 1
            fields = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers]
            method = req.method.decode("latin-1")
            try:
                adm = admission.admit(method, req.path.decode("latin-1"), fields, http11=http11, fields_checked=True)
            except ClientError as e:
                self.refuse(e, method, fields)
                return
            self.event(Event.HEAD)
            self.served += 1
            ctx = RequestContext(method, adm.path, adm.query, Headers.wrap(fields),
                                 version="1.1" if http11 else "1.0", scheme=self.scheme, host=adm.host,
                                 port=self.port, client_ip=self.peer_ip, start=now)
            if http11:
                ctx.interim = self.interim_writer  # RFC 9110 §15.2: never a 1xx to an HTTP/1.0 client
            self.set_timeout(self.body_idle_s)
            body = None
            if adm.body:
                chunked = adm.body == admission.CHUNKED
                reader = BodyReader(self, adm.length, chunked)
                first = self._continue_sender() if adm.expect_continue and http11 else None
                body = RequestBody(None if chunked else adm.length, reader.read, first)
            reply = proxy.handle(ctx, body)
            ctx.interim = None  # the final head follows: no 1xx after it (RFC 9110 §15.2)
            keep = (keepalive_on and worker.alive and not reply.close_connection and not wants_close(req)
                    and (body is None or body.finished))
            try:
                if reply.upgrade is not None:
                    self.event(Event.UPGRADE)
                    self.tunnel(ctx, reply)
                    self.event(Event.CLOSE)
                    return
                self.event(Event.REPLY)
                keep = self.write(ctx, reply, keep, http11)
            except EdgeError:
                keep = False
            finally:
                if body is not None:
                    ctx.bytes_received = body.consumed
                proxy.finish(ctx)
            if not keep:
                self.event(Event.CLOSE)
                return
            self.event(Event.KEEP)

    def refuse(self, e: ClientError, method: str = "GET", fields: list | None = None) -> None:
        """Answer a refused head with its status and close (400/408/414/431/501 ...).

        ``fields`` (when the head parsed but was not admitted) let the log line and the
        error body quote the client's request id; the target itself is left out of the
        context (the error's reason quotes it, escaped), since it was refused."""
        self.event(Event.REFUSE)
        ctx = RequestContext(method if fields is not None else "GET", "/", "", Headers.wrap(fields) if fields else None,
                             client_ip=self.peer_ip, start=time.monotonic())
        reply = self.proxy.error_reply(ctx, e)
        try:
            self.set_timeout(self.body_idle_s)
            self.write(ctx, reply, False, True)
        except (EdgeError, OSError):
            pass  # the client is gone or not reading; it is closed right after anyway
        self.proxy.finish(ctx)
        self.event(Event.CLOSE)

    def _continue_sender(self):
        sock = self.sock

        def send_continue() -> None:
            send_all(sock, CONTINUE)
        return send_continue

    def send_interim(self, status: int, reason: str, fields: list[tuple[str, str]]) -> None:
        """Write a backend's 1xx interim response now (``ctx.interim``; module docstring).

        Only while the request is being handled: once the final head is being written a 1xx
        would be read as the answer to the next request. A client that is gone ends the
        exchange (ClientDisconnected), so the backend is not waited on for nobody."""
        if self.state is not State.HANDLING:
            return
        proxy = self.proxy
        try:
            head = interim_head(status, reason, proxy.interim_fields(fields))
        except InvalidResponseField as e:
            # advisory only: the final response carries the answer, so this one is dropped
            log.warning("interim %d response not relayed: %s", status, e)
            proxy.metrics.incr(e.metric)
            return
        try:
            send_all(self.sock, head)
        except OSError as e:
            raise ClientDisconnected(f"client gone while an interim response was written: {e}") from None

    # ------------------------------------------------------------------ writing

    def write(self, ctx: RequestContext, reply: Reply, keep: bool, http11: bool) -> bool:
        """Write a reply; True when the connection may carry another request."""
        sock = self.sock
        body = reply.body
        plan = framing.plan(ctx.method, reply.status, reply.length, body is not None, http11=http11, keep_alive=keep)
        try:
            head = reply_head(reply, plan, self.clock.date())
        except InvalidResponseField as e:
            close_body(body)
            log.error("%s %s (request id %s): %s; answering 500",
                ctx.method, ctx.raw_path, self.proxy.request_id_of(ctx) or "-", e)
            self.proxy.metrics.incr(e.metric)
            reply = self.proxy.error_reply(ctx, e)
            plan = framing.plan(ctx.method, reply.status, reply.length, True, http11=http11, keep_alive=False)
            head = reply_head(reply, plan, self.clock.date())
            body = reply.body
        if not plan.body:
            close_body(body)  # HEAD, 204, 304: release the backend connection
            send_all(sock, head)
            return plan.keep_alive
        if isinstance(body, bytes):
            send_all(sock, head + body)
            ctx.bytes_sent += len(body)
            return plan.keep_alive
        return self._stream(ctx, reply, head, body, plan) and plan.keep_alive

    def _stream(self, ctx: RequestContext, reply: Reply, head: bytes, body, plan: framing.Plan) -> bool:
        sock = self.sock
        pending = head
        chunked = plan.chunked
        try:
            try:
                for chunk in body:
                    if not chunk:
                        continue
                    ctx.bytes_sent += len(chunk)
                    if chunked:
                        chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                    if pending:
                        send_all(sock, pending + chunk)
                        pending = b""
                    else:
                        send_all(sock, chunk)
                if plan.announce_length:
                    framing.check_complete(reply.length, ctx.bytes_sent)
                tail = b""
                if chunked:
                    tail = b"0\r\n" + self._trailers(ctx, reply) + b"\r\n"
                if pending or tail:
                    send_all(sock, pending + tail)
                    pending = b""
                return True
            except EdgeError as e:
                # The backend failed while its body was being relayed (timeout, truncated body).
                ctx.error = e
                log.warning("%s %s (request id %s): response cut short: %s", ctx.method, ctx.raw_path,
                            self.proxy.request_id_of(ctx) or "-", e)
                self.proxy.metrics.incr(e.metric)
                if pending:
                    # Nothing has reached the client yet, so it can still get a proper error answer.
                    close_body(body)
                    self.write(ctx, self.proxy.error_reply(ctx, e), False, True)
                    return False
                # framing.on_error_after_head(False): cut the connection, so the client sees a
                # truncated body rather than a short or padded one.
                _abort(sock)
                return False
        finally:
            close_body(body)  # closes the backend connection unless it was read to its end

    def _trailers(self, ctx: RequestContext, reply: Reply) -> bytes:
        trailers = reply.trailers_from.trailers if reply.trailers_from is not None else ()
        if not trailers:
            return b""
        # RFC 9110 §6.5.1: framing fields have no meaning in a trailer section; never relayed
        trailers = without_framing(trailers)
        if not fields_valid(trailers):
            # The head is out: dropping invalid trailers is the only safe choice left.
            log.error("%s %s (request id %s): invalid trailer dropped",
                ctx.method, ctx.raw_path, self.proxy.request_id_of(ctx) or "-")
            self.proxy.metrics.incr(InvalidResponseField.metric)
            return b""
        return ("\r\n".join(map(": ".join, trailers)) + "\r\n").encode("latin-1")

    # ------------------------------------------------------------------ upgrades

    def tunnel(self, ctx: RequestContext, reply: Reply) -> None:
        """Relay a 101'd connection both ways until either side closes or both idle out."""
        sock = self.sock
        backend, early = reply.upgrade
        try:
            plan = framing.plan(ctx.method, 101, None, False)
            head = reply_head(reply, plan, self.clock.date())
        except InvalidResponseField as e:
            backend.close()
            log.error("%s %s (request id %s): %s; answering 500",
                ctx.method, ctx.raw_path, self.proxy.request_id_of(ctx) or "-", e)
            self.write(ctx, self.proxy.error_reply(ctx, e), False, True)
            return
        buffered = self.buf
        self.buf = b""
        activity = [time.monotonic()]
        try:
            send_all(sock, head + early)
            if buffered:
                send_all(backend, buffered)  # bytes the client sent right after its upgrade request
            self.set_timeout(None)
            backend.settimeout(None)
            a = gevent.spawn(_pipe, sock, backend, activity)
            b = gevent.spawn(_pipe, backend, sock, activity)
            watch = gevent.spawn(_watch_idle, activity, self.tunnel_idle_s)
            gevent.joinall([a, b, watch], count=1)
            gevent.killall([a, b, watch], block=False)
        finally:
            # Either side closed (or both idled out): close both together.
            for s in (backend, sock):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the peer
            backend.close()
        ctx.status = 101


class BodyReader:
    """Streams one request body off the connection; ``read(n)`` returns b"" at its end."""

    __slots__ = ("conn", "left", "decoder", "pending", "finished")

    def __init__(self, conn: Connection, length: int | None, chunked: bool) -> None:
        self.conn = conn
        self.left = length or 0
        self.decoder = ChunkedDecoder() if chunked else None
        self.pending: list[bytes] = []
        self.finished = not chunked and not length

    def _next_data(self) -> bytes:
        """What the connection has buffered, else the next recv; EOF mid-body is an error."""
        conn = self.conn
        data = conn.buf
        if data:
            conn.buf = b""
            return data
        try:
            data = conn.recv()
        except SlowClient:
            raise SlowClient(f"no request body bytes for {conn.body_idle_s:g}s") from None
        if not data:
            raise ClientDisconnected("client closed the connection mid-body")
        return data

    def read(self, n: int) -> bytes:
        if self.pending:
            return self.pending.pop(0)
        if self.finished:
            return b""
        conn = self.conn
        if self.decoder is None:
            data = self._next_data()
            if len(data) > self.left:
                conn.buf = data[self.left:]  # the next pipelined request
                data = data[:self.left]
            self.left -= len(data)
            if self.left == 0:
                self.finished = True
            return data
        dec = self.decoder
        while True:
            pieces = [p for p in dec.feed(self._next_data()) if p]
            if dec.done:
                self.finished = True
                conn.buf = dec.surplus
            if pieces:
                first = pieces[0]
                self.pending.extend(pieces[1:])
                return first
            if dec.done:
                return b""


def _pipe(src, dst, activity: list) -> None:
    try:
        while True:
            data = src.recv(TUNNEL_CHUNK)
            if not data:
                return
            activity[0] = time.monotonic()
            send_all(dst, data)
            activity[0] = time.monotonic()
    except OSError:
        return  # reset, or the other direction closed the sockets: the tunnel is over


def _watch_idle(activity: list, idle_s: float) -> None:
    """Returns once neither direction carried a byte for ``idle_s``."""
    while True:
        left = activity[0] + idle_s - time.monotonic()
        if left <= 0:
            return
        gevent.sleep(left)


def _abort(sock) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()
    except OSError:
        pass  # the client is already gone


def serve(worker, sock, addr, listener_port: int, scheme: str, initial: bytes = b"") -> None:
    """Serve HTTP/1 requests on one connection until it closes (see the module docstring).

    ``initial``: bytes already read off the connection (those after a PROXY header)."""
    peer_ip = addr[0] if isinstance(addr, tuple) else UNKNOWN_CLIENT
    conn = Connection(worker, sock, peer_ip, listener_port, scheme)
    conn.buf = initial
    try:
        conn.serve()
    finally:
        if conn.waits is not None:
            conn.waits.release()


def answer_and_close(worker, sock, peer_ip: str, reply: Reply, ctx: RequestContext, scheme: str = "http") -> None:
    """Write one reply on a fresh connection and close it (an ``on_connect`` refusal)."""
    conn = Connection(worker, sock, peer_ip, 0, scheme)
    conn.state = State.WRITING
    conn.write(ctx, reply, False, True)


__all__ = ["serve", "Connection", "State", "Event", "TRANSITIONS", "IllegalTransition", "ChunkedDecoder",
           "BodyReader", "HeadLimits", "head_end", "check_partial_head", "reply_head", "interim_head", "Clock"]
