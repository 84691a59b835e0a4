"""edge.upstream.tls without sockets: the client context each pool setting builds, and the SNI name."""

from __future__ import annotations

import logging
import ssl

import pytest

from edge.config import UpstreamTLSConfig
from edge.upstream.tls import build_context, sni_name


def test_default_context_verifies_names_against_the_system_store():
    ctx = build_context("api", None)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_min_version_13():
    assert build_context("api", UpstreamTLSConfig(min_version="1.3")).minimum_version == ssl.TLSVersion.TLSv1_3


def test_verify_false_is_explicit_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="edge.upstream"):
        ctx = build_context("legacy", UpstreamTLSConfig(verify=False))
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "upstream legacy: TLS verification is off" in caplog.records[0].getMessage()


@pytest.mark.parametrize("host, cfg, name", [
    ("api.internal", None, "api.internal"),
    ("10.0.0.5", UpstreamTLSConfig(server_name="api.example"), "api.example"),
    ("10.0.0.5", UpstreamTLSConfig(), "10.0.0.5"),
])
def test_sni_name(host, cfg, name):
    assert sni_name(host, cfg) == name


def test_a_write_failing_before_the_client_certificate_alert_was_read_reports_the_alert():
    # TLS 1.3: the backend refuses edge's client certificate after the handshake; the first write
    # may fail (EOF) before any read saw the alert. The failure must still name the certificate.
    import ssl

    from edge.errors import TLSHandshakeError
    from edge.upstream.tls import TLSTransport

    class Refused:
        def read(self, n):
            e = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] alert")
            e.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
            raise e

        def send(self, data):
            raise ssl.SSLEOFError(8, "EOF occurred in violation of protocol")

    with pytest.raises(TLSHandshakeError, match="refused edge's client certificate"):
        TLSTransport(Refused(), "127.0.0.1:443").send(b"GET / HTTP/1.1\r\n\r\n")

    class Reset(Refused):
        def read(self, n):
            raise ssl.SSLEOFError(8, "EOF")

    with pytest.raises(ssl.SSLEOFError):
        TLSTransport(Reset(), "127.0.0.1:443").send(b"x")
