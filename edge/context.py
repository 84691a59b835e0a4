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

from typing import Any, Iterable, Iterator


class Headers:
    """Ordered multi-map of header fields; names compare case-insensitively."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = list(items) if items is not None else []

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
    address after trusted-proxy resolution; ``peer_ip`` the socket's peer.
    """

    __slots__ = (
        "method", "path", "raw_path", "query", "headers", "version", "scheme", "host", "port",
        "client_ip", "peer_ip", "route", "upstream", "facts", "request_id", "start",
        "status", "bytes_sent", "bytes_received", "error", "upstream_addr", "upstream_time",
        "response_headers", "http2",
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
        client_ip: str = "127.0.0.1",
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

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    def __repr__(self) -> str:
        return f"<RequestContext {self.method} {self.target} from {self.client_ip}>"
