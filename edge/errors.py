"""The error taxonomy: every error carries the status a client sees and a metric name.

``app.py`` has one ``except EdgeError`` that answers ``e.status`` with a short body;
anything else is a bug (500, traceback, metric). Messages given to clients never
contain internal addresses: ``public`` is what the client reads, ``str(e)`` is for logs.
"""

from __future__ import annotations


class EdgeError(Exception):
    status = 500
    metric = "internal"
    public = "internal error"


class ConfigError(EdgeError):
    """A configuration problem: refuses start or reload, never reaches a client."""

    def __init__(self, file: str, key_path: str, reason: str) -> None:
        self.file, self.key_path, self.reason = file, key_path, reason
        where = f"{file}: {key_path}: " if key_path else f"{file}: "
        super().__init__(where + reason)


class PluginLoadError(ConfigError):
    """A plugin that cannot be loaded: names the plugin file, class and reason."""

    def __init__(self, file: str, cls: str, reason: str) -> None:
        super().__init__(file, cls, reason)


class ClientError(EdgeError):
    status = 400
    metric = "client_error"
    public = "bad request"


class BadRequest(ClientError):
    pass


class Forbidden(ClientError):
    status = 403
    metric = "forbidden"
    public = "forbidden"


class BodyTooLarge(ClientError):
    status = 413
    metric = "body_too_large"
    public = "request body too large"


class HeaderTooLarge(ClientError):
    status = 431
    metric = "header_too_large"
    public = "request headers too large"


class SlowClient(ClientError):
    status = 408
    metric = "slow_client"
    public = "request timeout"


class InvalidResponseField(EdgeError):
    """A reply field edge may not write (bad name; CR, LF, NUL or another CTL in a value),
    whoever produced it: the client gets a 500 instead, never the bytes."""

    metric = "invalid_response_field"

    @classmethod
    def naming(cls, fields) -> "InvalidResponseField":
        """The error naming the first offending pair of ``fields`` (truncated, for one log line)."""
        from edge.fields import first_invalid_field

        for name, value in fields:
            if not isinstance(name, str) or not isinstance(value, str):
                return cls(f"invalid response header {name!r}: {value!r} (not a str)")
        bad = first_invalid_field(fields) or ("?", "?")
        return cls(f"invalid response header {str(bad[0])[:60]!r}: {str(bad[1])[:60]!r}")


class ClientDisconnected(EdgeError):
    """The client went away; nothing can be answered, only counted."""

    status = 499
    metric = "client_abort"
    public = "client closed request"


class UpstreamError(EdgeError):
    status = 502
    metric = "upstream_error"
    public = "bad gateway"


class ConnectError(UpstreamError):
    metric = "connect_error"


class TLSHandshakeError(ConnectError):
    """The TLS handshake with a backend failed (bad or expired certificate, wrong name, unknown CA,
    no shared version): nothing was sent, so it is retried like a refused connect (issue 13)."""

    metric = "tls_error"


class ConnectTimeout(UpstreamError):
    status = 504
    metric = "connect_timeout"
    public = "gateway timeout"


class ReadTimeout(UpstreamError):
    status = 504
    metric = "read_timeout"
    public = "gateway timeout"


class SendTimeout(UpstreamError):
    status = 504
    metric = "send_timeout"
    public = "gateway timeout"


class TotalTimeout(UpstreamError):
    status = 504
    metric = "total_timeout"
    public = "gateway timeout"


class ProtocolError(UpstreamError):
    """The upstream sent something that is not valid HTTP/1.1."""

    metric = "protocol_error"


class NoHealthyServer(UpstreamError):
    status = 503
    metric = "no_server"
    public = "service unavailable"


class ServersBusy(NoHealthyServer):
    """Every eligible server is at its ``max_conns`` and the pool's queue is full or the wait timed out (issue 9)."""

    metric = "servers_busy"


# ---- towards backends (edge/upstream/client.py, issue 7) -------------------------------


class ResponseTooLarge(ProtocolError):
    """A backend's head, trailers or 1xx sequence went over a configured limit; the connection is discarded."""

    metric = "response_too_large"


class UnsendableRequest(EdgeError):
    """A request that edge itself made invalid (a plugin or the config produced a bad method,
    target or field): nothing is written to the backend. A bug of edge's configuration or
    plugins, so 500, not a client or backend error. The message names the field, never its value."""

    status = 500
    metric = "unsendable_request"
    public = "internal error"


class StoreUnavailable(EdgeError):
    """Never a response by itself: the caller applies its fail-open/closed policy and counts it."""

    status = 503
    metric = "store_unavailable"
    public = "service unavailable"


class PluginError(EdgeError):
    status = 500
    metric = "plugin_error"
    public = "internal error"

    def __init__(self, plugin: str, phase: str, reason: str = "") -> None:
        self.plugin, self.phase = plugin, phase
        super().__init__(f"plugin {plugin} failed in {phase}" + (f": {reason}" if reason else ""))


# ---- at the protocol boundary (edge/admission.py, edge/h1.py, edge/framing.py, issue 7) -------


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


class MethodNotAllowed(ClientError):
    status = 405
    metric = "method_not_allowed"
    public = "method not allowed"


class BodyLengthMismatch(EdgeError):
    """The backend's body ended before (or ran past) the Content-Length it announced."""

    status = 502
    metric = "upstream_body_length"
    public = "bad gateway"
