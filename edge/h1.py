"""HTTP/1.x on a client connection: read requests, hand them to the proxy, write replies.

Theory of operation. gunicorn accepts the connection (and does TLS and ALPN);
``EdgeWorker.handle`` passes HTTP/1 connections here (HTTP/2 ones stay with
gunicorn). ``serve`` loops: read until a request head is complete, parse it with
gunicorn's C parser (``gunicorn_h1c``: picohttpparser, which already refuses
malformed request lines, bad header names and values, duplicate Host or
Content-Length, Content-Length together with Transfer-Encoding, chunked HTTP/1.0),
apply the framing rules it leaves to us (``request_framing``), build the
``RequestContext``, run ``Proxy.handle`` and write the reply. Bytes that follow a
request are the next request (pipelining) and stay in the buffer.

Why not gunicorn's own request loop: measured on this machine, its per-request
Python objects (Message, Unreader, Body readers, a Timeout per keep-alive wait)
cost about a third of a small proxied request (docs/benchmarks.md).

The request body is read lazily through ``BodyReader``: Content-Length bodies by
counting, chunked ones through ``ChunkedDecoder`` (strict RFC 9112 §7.1 framing).
A body that was not read to its end when the reply is written (a plugin answered
403, the backend answered early) closes the connection: draining an unwanted
upload could mean reading gigabytes, and nginx closes too.
"""

from __future__ import annotations

import logging
import socket
import time

import gunicorn_h1c
from gunicorn_h1c._parser_fast import IncompleteError as _Incomplete  # the fast parser's own class, not the package's

from edge.app import Reply, RequestBody
from edge.context import Headers, RequestContext
from edge.errors import BadRequest, ClientDisconnected, ClientError, EdgeError, HeaderTooLarge, SlowClient
from edge.netio import send_all

log = logging.getLogger("edge.h1")

RECV_BYTES = 65536
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class UriTooLong(ClientError):
    status = 414
    metric = "uri_too_long"
    public = "request line too long"


class NotImplementedCoding(ClientError):
    status = 501
    metric = "transfer_coding"
    public = "transfer coding not implemented"


class ExpectationFailed(ClientError):
    status = 417
    metric = "expectation_failed"
    public = "expectation failed"


# ---------------------------------------------------------------------------- pure rules


def request_framing(headers: tuple[tuple[bytes, bytes], ...], content_length: int, has_chunked: bool) -> tuple[int | None, bool, bool]:
    """``(length, chunked, expect_continue)`` of a parsed request, or a ClientError.

    RFC 9112 §6.3: a request whose Transfer-Encoding does not end in ``chunked`` has
    no determinable length (400); edge decodes only ``chunked`` itself, so any other
    coding is 501 (RFC 9112 §6.1). ``Expect`` other than ``100-continue`` is 417.
    """
    expect = False
    for name, value in headers:
        n = len(name)
        if n == 17 and name.lower() == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",") if c.strip()]
            if codings != [b"chunked"]:
                if codings and codings[-1] == b"chunked":
                    raise NotImplementedCoding(f"unsupported transfer coding {value!r}")
                raise BadRequest(f"Transfer-Encoding without chunked last: {value!r}")
        elif n == 6 and name.lower() == b"expect":
            if value.strip().lower() != b"100-continue":
                raise ExpectationFailed(f"unsupported expectation {value!r}")
            expect = True
    if has_chunked:
        return None, True, expect
    return (content_length if content_length > 0 else 0), False, expect


def split_target(target: str) -> tuple[str, str, str | None]:
    """``(path, query, authority)`` of a request target (origin-form or absolute-form).

    RFC 9112 §3.2.2: a server MUST accept the absolute-form; its authority then
    replaces Host. A fragment is never sent by a conforming client: refused.
    """
    authority = None
    if not target.startswith("/"):
        lower = target[:8].lower()
        if lower.startswith("http://") or lower.startswith("https://"):
            rest = target[target.index("//") + 2:]
            slash = rest.find("/")
            q = rest.find("?")
            cut = min(x for x in (slash, q, len(rest)) if x >= 0)
            authority, target = rest[:cut], rest[cut:] or "/"
            if target.startswith("?"):
                target = "/" + target
        elif target == "*":
            return "*", "", None
        else:
            raise BadRequest(f"invalid request target {target[:80]!r}")
    if "#" in target:
        raise BadRequest("fragment in request target")
    path, _, query = target.partition("?")
    return path, query, authority


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


# ---------------------------------------------------------------------------- I/O


class Connection:
    """One client connection's read side: a buffer shared by request heads and bodies.

    While it waits for the first byte of a next request it sits in ``idle``, the
    worker's map of idle keep-alive sockets (to the time they went idle), which a
    stopping worker closes instead of waiting for their keep-alive timeout.
    """

    __slots__ = ("sock", "buf", "idle")

    def __init__(self, sock, idle: dict) -> None:
        self.sock = sock
        self.buf = b""
        self.idle = idle

    def recv(self) -> bytes:
        try:
            data = self.sock.recv(RECV_BYTES)
        except socket.timeout:
            raise SlowClient("client sent nothing within the timeout") from None
        except OSError as e:
            raise ClientDisconnected(f"client connection failed: {e.strerror or e}") from None
        finally:
            self.idle.pop(self.sock, None)
        return data


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
        data = conn.recv()
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


def read_head(conn: Connection, limits: tuple[int, int, int], max_head_bytes: int):
    """The next parsed request head, or None when the client closed between requests."""
    line_limit, fields_limit, field_size_limit = limits
    while True:
        buf = conn.buf
        if buf:
            if buf[:2] == b"\r\n":
                buf = conn.buf = buf.lstrip(b"\r\n")  # RFC 9112 §2.2: ignore empty lines before a request
            try:
                req = gunicorn_h1c.parse_request_fast(buf, limit_request_line=line_limit,
                                                      limit_request_fields=fields_limit,
                                                      limit_request_field_size=field_size_limit)
                conn.buf = buf[req.consumed:]
                return req
            except _Incomplete:
                if len(buf) > max_head_bytes:
                    raise HeaderTooLarge("request head too large") from None
            except gunicorn_h1c.LimitRequestLine as e:
                raise UriTooLong(str(e)) from None
            except gunicorn_h1c.LimitRequestHeaders as e:
                raise HeaderTooLarge(str(e)) from None
            except ValueError as e:  # every parse error of both parser modules derives from it
                raise BadRequest(f"{type(e).__name__}: {e}") from None
        data = conn.recv()
        if not data:
            if conn.buf:
                raise ClientDisconnected("client closed the connection mid-head")
            return None
        conn.buf += data


def build_context(req, conn_info: tuple[str, int, str], now: float) -> tuple[RequestContext, Headers]:
    """A RequestContext from a parsed head: str headers (latin-1), Host, target split."""
    peer_ip, port, scheme = conn_info
    raw_headers = req.headers
    headers = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers])
    host = ""
    for k, v in headers:
        if len(k) == 4 and k.lower() == "host":
            host = v
            break
    path, query, authority = split_target(req.path.decode("latin-1"))
    if authority is not None:
        host = authority
    ctx = RequestContext(
        req.method.decode("latin-1"),
        path,
        query,
        headers,
        version="1.1" if req.minor_version == 1 else "1.0",
        scheme=scheme,
        host=host,
        port=port,
        client_ip=peer_ip,
        start=now,
    )
    return ctx, headers


def wants_close(req) -> bool:
    """The client's own keep-alive wish: HTTP/1.1 persists unless "close"; 1.0 only with "keep-alive"."""
    cc = req.connection_close
    if req.minor_version == 1:
        return cc == 1
    return cc != 0


def serve(worker, sock, addr, listener_port: int, scheme: str) -> None:
    """Serve HTTP/1 requests on one connection until it closes (see the module docstring)."""
    proxy = worker.proxy
    cfg = proxy.state.cfg.server
    limits = (cfg.max_request_line, cfg.max_header_fields, cfg.max_header_field_size)
    max_head = cfg.max_request_line + cfg.max_header_fields * (cfg.max_header_field_size + 4) + 4
    keepalive_s = cfg.keepalive
    peer_ip = addr[0] if isinstance(addr, tuple) else "unix"
    conn_info = (peer_ip, listener_port, scheme)
    idle = worker.idle_connections
    conn = Connection(sock, idle)
    write = worker.write_reply
    while True:
        sock.settimeout(keepalive_s)
        if not conn.buf:
            idle[sock] = time.monotonic()
        try:
            req = read_head(conn, limits, max_head)
        except ClientDisconnected:
            return
        except SlowClient:
            return  # idle keep-alive connection: close quietly, as every server does
        except ClientError as e:
            ctx = RequestContext("GET", "/", client_ip=peer_ip, start=time.monotonic())
            log.info("bad request from %s: %s", peer_ip, e)
            reply = proxy.error_reply(ctx, e)
            write(sock, ctx, reply, False, True)
            proxy.finish(ctx)
            return
        if req is None:
            return
        now = time.monotonic()
        worker.count_request()
        body = None
        try:
            ctx, _ = build_context(req, conn_info, now)
            length, chunked, expect = request_framing(req.headers, req.content_length, req.has_chunked)
            if chunked or length:
                reader = BodyReader(conn, length, chunked)
                first = _continue_sender(sock) if expect and req.minor_version == 1 else None
                body = RequestBody(None if chunked else length, reader.read, first)
        except ClientError as e:
            ctx = RequestContext(req.method.decode("latin-1"), "/", client_ip=peer_ip, start=now)
            reply = proxy.error_reply(ctx, e)
            reply.close_connection = True
        else:
            reply = proxy.handle(ctx, body)
        keep = (worker.alive and not reply.close_connection and not wants_close(req))
        if body is not None and not body.finished:
            keep = False
        try:
            if reply.upgrade is not None:
                worker.tunnel(sock, conn.buf, ctx, reply)
                return
            if not write(sock, ctx, reply, keep, req.minor_version == 1):
                return
        except EdgeError:
            return
        finally:
            if body is not None:
                ctx.bytes_received = body.consumed
            proxy.finish(ctx)
        if not keep:
            return


def _continue_sender(sock):
    def send_continue() -> None:
        send_all(sock, CONTINUE)
    return send_continue


__all__ = ["serve", "request_framing", "split_target", "ChunkedDecoder", "BodyReader", "Reply"]
