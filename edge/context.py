"""The per-request objects that the request path, plugins and the log share.

``Headers`` is an ordered list of ``(name, value)`` pairs: duplicates and their order
survive (``Set-Cookie``), lookups are case-insensitive, and the list is what gets
serialised, so nothing is merged or re-cased on the way through.

``RequestContext`` is the only mutable object of a request. Plugins read it, may
rewrite ``path``/``query``/``headers``, choose another ``upstream`` pool, and pass
facts on in ``facts``. ``Response`` is an answer produced by edge itself (a plugin,
a fixed route, a redirect, an error); returning one from ``on_request`` answers now.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator


UNKNOWN_CLIENT = "unknown"  # the client address when the transport gives none (Unix sockets)


class Headers:
    """Ordered multi-map of header fields; names compare case-insensitively."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = list(items) if items is not None else []

    @classmethod
    def wrap(cls, items: list[tuple[str, str]]) -> "Headers":
        """Adopt ``items`` without copying it (front ends build a fresh list per request)."""
        h = cls.__new__(cls)
        h._items = items
        return h

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``."""
        lname = name.lower()
        for k, v in self._items:
            if k.lower() == lname:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._items if k.lower() == lname]

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` by one, at the place of the first."""
        lname = name.lower()
        out: list[tuple[str, str]] = []
        placed = False
        for k, v in self._items:
            if k.lower() == lname:
                if not placed:
                    out.append((name, value))
                    placed = True
            else:
                out.append((k, v))
        if not placed:
            out.append((name, value))
        self._items = out

    def setdefault(self, name: str, value: str) -> str:
        current = self.get(name)
        if current is None:
            self._items.append((name, value))
            return value
        return current

    def remove(self, name: str) -> int:
        """Remove every field called ``name``; return how many there were."""
        lname = name.lower()
        before = len(self._items)
        self._items = [(k, v) for k, v in self._items if k.lower() != lname]
        return before - len(self._items)

    def items(self) -> list[tuple[str, str]]:
        """The underlying list (not a copy): the request path serialises it as is."""
        return self._items

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and other._items == self._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Response:
    """An answer edge gives by itself. ``body`` is bytes (short answers only)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Headers | Iterable[tuple[str, str]] | None = None, body: bytes | str = b"") -> None:
        self.status = status
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body.encode() if isinstance(body, str) else body

    @classmethod
    def error(cls, status: int, message: str, request_id: str | None = None) -> "Response":
        """A short plain-text error body; quotes the request id so a user can report it."""
        text = f"{status} {message}\n" if request_id is None else f"{status} {message} (request id {request_id})\n"
        return cls(status, [("Content-Type", "text/plain; charset=utf-8")], text)

    @classmethod
    def redirect(cls, status: int, location: str) -> "Response":
        return cls(status, [("Location", location), ("Content-Type", "text/plain; charset=utf-8")], f"{status} -> {location}\n")

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers!r}, {self.body[:40]!r})"


class UpstreamResponse:
    """What a backend (or the cache) answered: the head as a plugin sees it in ``on_response``.

    ``body`` is an iterator of byte chunks that the request path streams; a plugin
    that replaces the response sets ``replacement`` to a ``Response`` instead.
    """

    __slots__ = ("status", "reason", "headers", "body", "replacement")

    def __init__(self, status: int, reason: str, headers: Headers, body: Iterable[bytes] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.replacement: Response | None = None


class RequestContext:
    """One request as it passes through edge.

    ``path`` is the normalised path used for matching (and sent to the backend unless
    the route says otherwise), ``raw_path`` what the client sent. ``client_ip`` is the
    address after trusted-proxy resolution; ``peer_ip`` the socket's peer. There is
    no default client address: a front end always knows its peer (``UNKNOWN_CLIENT``
    when it does not, e.g. a Unix socket), and a made-up 127.0.0.1 would pass
    loopback allow rules (issue 7, defect 10).
    """

    __slots__ = (
        "method", "path", "raw_path", "query", "headers", "version", "scheme", "host", "port",
        "client_ip", "peer_ip", "route", "upstream", "facts", "request_id", "start",
        "status", "bytes_sent", "bytes_received", "error", "upstream_addr", "upstream_time",
        "response_headers", "http2", "interim",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        *,
        raw_path: str | None = None,
        version: str = "1.1",
        scheme: str = "http",
        host: str = "",
        port: int = 80,
        client_ip: str,
        peer_ip: str | None = None,
        start: float = 0.0,
        http2: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.raw_path = raw_path if raw_path is not None else path
        self.query = query
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.version = version
        self.scheme = scheme
        self.host = host
        self.port = port
        self.client_ip = client_ip
        self.peer_ip = peer_ip if peer_ip is not None else client_ip
        self.route: Any = None           # routing.Route, set once matched
        self.upstream: str | None = None  # pool name; a plugin may change it
        self.facts: dict[str, Any] = {}
        self.request_id: str | None = None
        self.start = start
        self.status = 0                   # status sent to the client, once known
        self.bytes_sent = 0
        self.bytes_received = 0
        self.error: BaseException | None = None
        self.upstream_addr: str | None = None
        self.upstream_time: float | None = None
        self.response_headers: Headers | None = None
        self.http2 = http2
        # The front end's writer of 1xx interim responses for this request, ``interim(status,
        # reason, backend fields)`` (RFC 9110 §15.2), or None when this client may get none:
        # HTTP/1.0, or the final head is being written. Set and cleared by the front end only.
        self.interim = None

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    def __repr__(self) -> str:
        return f"<RequestContext {self.method} {self.target} from {self.client_ip}>"


STATUS_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    206: "Partial Content", 301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long", 417: "Expectation Failed", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    499: "Client Closed Request", 500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}

BODY_CHUNK = 65536


class RequestBody:
    """The client's request body as a front end delivers it.

    ``length`` is the Content-Length, or None for a chunked (or HTTP/2 unsized) body.
    ``read(n)`` returns b"" at the end. ``on_first_read`` runs once before the first
    read: the HTTP/1 front end sends ``100 Continue`` there, so a client that waits
    for it is only asked for the body once the request was accepted.
    """

    __slots__ = ("length", "read", "on_first_read", "consumed", "finished")

    def __init__(self, length: int | None, read: Callable[[int], bytes], on_first_read: Callable[[], None] | None = None) -> None:
        self.length = length
        self.read = read
        self.on_first_read = on_first_read
        self.consumed = 0
        self.finished = False

    def chunks(self) -> Iterator[bytes]:
        if self.on_first_read is not None:
            self.on_first_read()
            self.on_first_read = None
        read = self.read
        while True:
            chunk = read(BODY_CHUNK)
            if not chunk:
                self.finished = True
                return
            self.consumed += len(chunk)
            yield chunk


class Reply:
    """What the front end writes: status, headers, body (bytes or an iterator of chunks).

    The front end asks ``edge.framing`` how to frame it; ``length`` is the
    Content-Length the body has (an answer edge made, or the backend's), None when
    unknown (then chunked on HTTP/1.1, close-delimited on HTTP/1.0, plain DATA
    frames on HTTP/2).
    """

    __slots__ = ("status", "reason", "headers", "body", "length", "upgrade", "close_connection", "trailers_from")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body, length: int | None) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body                 # bytes, an iterator of bytes, or None (no body)
        self.length = length             # Content-Length to announce, None for chunked
        self.upgrade = None              # (backend socket, bytes already read) after a 101
        self.close_connection = False
        self.trailers_from = None        # the UpstreamReply whose trailers follow a chunked body


def close_body(body) -> None:
    """Release what backs a reply body that will not be (fully) written: the backend connection."""
    if body is not None and not isinstance(body, bytes) and hasattr(body, "close"):
        body.close()
