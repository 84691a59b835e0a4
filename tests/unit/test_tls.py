"""TLS rules without sockets: SNI choice, redirect rules, certificate validation, tooling (issue 13)."""

from __future__ import annotations

import datetime
import shutil
import subprocess

import pytest
from cryptography import x509

from edge import certs
from edge.config import CertificateConfig, TLSConfig, effective_listeners, parse_config
from edge.errors import ConfigError
from edge.routing import compile_routes, scheme_tables
from edge.tls import (SniTable, covers, default_index, https_location, https_port, listener_key, load_certificate,
                      load_certificates, load_termination, redirect_status, redirects_to_https)

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    d = tmp_path_factory.mktemp("ca")
    certs.make_local_ca(d)
    return d


def issue(ca, tmp_path, *names):
    return certs.issue(list(names), ca, tmp_path)


# --------------------------------------------------------------------------- SNI choice

TABLE = SniTable([(("a.example.com", "*.example.com"), "first"), (("b.example.com",), "second"),
                  (("*.example.com", "x.example.org"), "third")], "default")


@pytest.mark.parametrize("server_name, expected", [
    ("a.example.com", "first"),          # exact
    ("A.Example.COM.", "first"),         # case and a trailing dot do not matter
    ("b.example.com", "second"),         # exact beats the first certificate's wildcard
    ("c.example.com", "first"),          # wildcard: the first certificate configured for it
    ("x.example.org", "third"),
    ("example.com", "default"),          # RFC 6125 §6.4.3: "*" is one whole label, never none
    ("a.b.example.com", "default"),      # ... and never two
    ("unknown.test", "default"),
    (None, "default"),                   # no SNI
    ("", "default"),
])
def test_sni_table_picks_exact_then_one_label_wildcard_then_default(server_name, expected):
    assert TABLE.pick(server_name) == expected


@pytest.mark.parametrize("name, pattern, expected", [
    ("a.example.com", "*.example.com", True),
    ("example.com", "*.example.com", False),
    ("a.b.example.com", "*.example.com", False),
    ("a.example.com", "a.example.com", True),
    ("A.EXAMPLE.com", "a.example.com", True),
])
def test_covers(name, pattern, expected):
    assert covers(name, pattern) is expected


# --------------------------------------------------------------------------- redirect rules


@pytest.mark.parametrize("method, status", [("GET", 301), ("HEAD", 301), ("POST", 308), ("PUT", 308), ("DELETE", 308)])
def test_redirect_keeps_the_method_of_unsafe_requests(method, status):
    assert redirect_status(method) == status


@pytest.mark.parametrize("host, path, query, port, expected", [
    ("example.com", "/a/b", "", 443, "https://example.com/a/b"),
    ("example.com:80", "/a", "x=1&y", 443, "https://example.com/a?x=1&y"),
    ("example.com:8080", "/", "", 8443, "https://example.com:8443/"),
    ("[::1]:8080", "/p", "", 8443, "https://[::1]:8443/p"),
])
def test_https_location(host, path, query, port, expected):
    assert https_location(host, path, query, port) == expected


@pytest.mark.parametrize("path, redirected", [
    ("/.well-known/acme-challenge/token123", False),  # RFC 8555 §8.3: HTTP-01 must stay on HTTP
    ("/.well-known/acme-challenge", True),
    ("/.well-known/other", True),
    ("/", True),
])
def test_acme_challenge_path_is_exempt_from_the_redirect(path, redirected):
    assert redirects_to_https(path) is redirected


# --------------------------------------------------------------------------- configuration


def _cfg(**kw):
    base = {"routes": [{"respond": {}}]}
    base.update(kw)
    return parse_config(base, "FILE")


def test_bind_with_tls_means_every_address_is_tls(tmp_path):
    cfg = _cfg(server={"bind": ["127.0.0.1:8443"]}, tls={"certfile": "c", "keyfile": "k"})
    assert [(lc.bind, lc.tls) for lc in effective_listeners(cfg)] == [("127.0.0.1:8443", True)]
    assert https_port(cfg) == 8443


def test_listeners_mix_plain_and_tls():
    cfg = _cfg(server={"listeners": [{"bind": "0.0.0.0:80"}, {"bind": "[::]:443", "tls": True}]},
               tls={"certfile": "c", "keyfile": "k"})
    assert [(listener_key(lc.bind), lc.tls) for lc in effective_listeners(cfg)] == [(80, False), (443, True)]
    assert https_port(cfg) == 443


@pytest.mark.parametrize("data, message", [
    ({"server": {"listeners": [{"bind": "127.0.0.1:1", "tls": True}]}},
     "FILE: server.listeners[0].tls: a TLS listener needs the tls section (its certificates)"),
    ({"server": {"listeners": [{"bind": "127.0.0.1:1"}]}, "tls": {"certfile": "c", "keyfile": "k"}},
     "FILE: server.listeners: the tls section is set but no listener has tls: true"),
    ({"server": {"listeners": [{"bind": "127.0.0.1:1"}, {"bind": "[::1]:1", "tls": True}]},
      "tls": {"certfile": "c", "keyfile": "k"}},
     "FILE: server.listeners[1]: port 1 is both a TLS and a plain listener"),
    ({"server": {"bind": ["127.0.0.1:1"], "listeners": [{"bind": "127.0.0.1:2"}]}},
     "FILE: server: give bind or listeners, not both (a listener says its own bind address)"),
    ({"server": {"listeners": [{"bind": "localhost"}]}},
     "FILE: server.listeners[0].bind: no port in 'localhost' (write 'host:port')"),
    ({"tls": {"keyfile": "k"}}, "FILE: tls.certfile: required key is missing"),
    ({"tls": {}}, "FILE: tls.certificates: no certificate: give certificates (or certfile and keyfile), or acme"),
    ({"tls": {"certificates": [{"cert": "c", "key": "k", "names": ["a.*.com"]}]}},
     "FILE: tls.certificates[0].names: a name is a host name or '*.domain.tld' (got 'a.*.com')"),
    ({"tls": {"certfile": "c", "keyfile": "k", "min_version": "1.1"}},
     "FILE: tls.min_version: Input should be '1.2' or '1.3' (got '1.1')"),
    ({"tls": {"certfile": "c", "keyfile": "k", "ciphers": "NONSENSE"}},
     "FILE: tls.ciphers: OpenSSL accepts no cipher from 'NONSENSE'"),
])
def test_tls_config_errors(data, message):
    with pytest.raises(ConfigError) as e:
        _cfg(**data)
    assert str(e.value) == message


def test_routes_by_scheme():
    cfg = _cfg(routes=[{"name": "secure", "match": {"path": "/admin", "scheme": "https"}, "respond": {}},
                       {"name": "any", "match": {"path": "/"}, "respond": {}}])
    tables = scheme_tables(cfg, compile_routes(cfg))
    assert tables["https"].match("h", "/admin", "GET", None).name == "secure"
    assert tables["http"].match("h", "/admin", "GET", None).name == "any"
    plain = _cfg()
    table = compile_routes(plain)
    assert scheme_tables(plain, table) == {"http": table, "https": table}


# --------------------------------------------------------------------------- certificates


def test_names_come_from_the_subject_alternative_names(ca, tmp_path):
    leaf = issue(ca, tmp_path, "a.test", "*.b.test", "192.0.2.1")
    c = load_certificate(CertificateConfig(cert=str(leaf.cert_path), key=str(leaf.key_path)), "FILE", "tls.x")
    assert c.names == ("a.test", "*.b.test", "192.0.2.1")
    assert "edge local CA" in c.issuer
    given = load_certificate(CertificateConfig(cert=str(leaf.cert_path), key=str(leaf.key_path), names=["z.test"]),
                             "FILE", "tls.x")
    assert given.names == ("z.test",)


def test_a_key_of_another_certificate_is_refused_naming_both_files(ca, tmp_path):
    one = issue(ca, tmp_path / "1", "one.test")
    two = issue(ca, tmp_path / "2", "two.test")
    tls = TLSConfig(certificates=[{"cert": str(one.cert_path), "key": str(one.key_path)},
                                  {"cert": str(one.cert_path), "key": str(two.key_path)}])
    with pytest.raises(ConfigError) as e:
        load_certificates(tls, "FILE")
    assert str(e.value) == (f"FILE: tls.certificates[1].key: {two.key_path} is not the key of {one.cert_path} "
                            "(the public keys differ)")


@pytest.mark.parametrize("which, expected_key, reason", [
    ("missing-cert", "tls.certfile.cert", "cannot read"),
    ("missing-key", "tls.certfile.key", "cannot read"),
    ("garbage-cert", "tls.certfile.cert", "no PEM certificate in the file"),
    ("garbage-key", "tls.certfile.key", "not a PEM private key"),
])
def test_unreadable_files_are_refused_with_file_key_and_reason(ca, tmp_path, which, expected_key, reason):
    leaf = issue(ca, tmp_path, "a.test")
    cert, key = str(leaf.cert_path), str(leaf.key_path)
    if which == "missing-cert":
        cert = str(tmp_path / "nope.pem")
    elif which == "missing-key":
        key = str(tmp_path / "nope.key")
    elif which == "garbage-cert":
        (tmp_path / "g.pem").write_text("not pem")
        cert = str(tmp_path / "g.pem")
    else:
        (tmp_path / "g.key").write_text("not pem")
        key = str(tmp_path / "g.key")
    with pytest.raises(ConfigError) as e:
        load_certificates(TLSConfig(certfile=cert, keyfile=key), "FILE")
    assert e.value.key_path == expected_key and reason in e.value.reason


def test_default_names_a_configured_certificate(ca, tmp_path):
    a = issue(ca, tmp_path / "a", "a.test")
    w = issue(ca, tmp_path / "w", "*.w.test")
    tls = TLSConfig(certificates=[{"cert": str(a.cert_path), "key": str(a.key_path)},
                                  {"cert": str(w.cert_path), "key": str(w.key_path)}], default="x.w.test")
    loaded = load_certificates(tls, "FILE")
    assert default_index(tls, loaded, "FILE") == 1
    with pytest.raises(ConfigError) as e:
        default_index(tls.model_copy(update={"default": "nope.test"}), loaded, "FILE")
    assert str(e.value) == "FILE: tls.default: no configured certificate covers 'nope.test'"


def test_termination_builds_one_context_per_certificate(ca, tmp_path):
    a = issue(ca, tmp_path / "a", "a.test")
    w = issue(ca, tmp_path / "w", "*.w.test")
    cfg = _cfg(tls={"certificates": [{"cert": str(a.cert_path), "key": str(a.key_path)},
                                     {"cert": str(w.cert_path), "key": str(w.key_path)}], "min_version": "1.3"})
    t = load_termination(cfg)
    assert t.table.pick("x.w.test") is not t.default_context
    assert t.table.pick("a.test") is t.default_context
    import ssl
    assert t.default_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert t.default_context.options & ssl.OP_NO_COMPRESSION


# --------------------------------------------------------------------------- tooling


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")
def test_issued_certificates_pass_openssl_verify(ca, tmp_path):
    leaf = issue(ca, tmp_path, "home.lan", "*.home.lan", "192.168.1.10", "::1")
    out = subprocess.run(["openssl", "verify", "-CAfile", str(ca / certs.CA_CERT), "-purpose", "sslserver",
                          str(leaf.cert_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(": OK")
    cert = x509.load_pem_x509_certificate(leaf.cert_path.read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert (leaf.key_path.stat().st_mode & 0o777) == 0o600
    assert ((ca / certs.CA_KEY).stat().st_mode & 0o777) == 0o600


def test_local_ca_is_not_overwritten(ca):
    with pytest.raises(FileExistsError):
        certs.make_local_ca(ca)


def test_expiry_gauges_and_info_are_sorted_and_metric_safe(ca, tmp_path):
    soon = certs.issue(["*.soon.test"], ca, tmp_path / "s", days=10, now=NOW)
    late = certs.issue(["late.test"], ca, tmp_path / "l", days=100, now=NOW)
    loaded = load_certificates(TLSConfig(certificates=[
        {"cert": str(late.cert_path), "key": str(late.key_path)},
        {"cert": str(soon.cert_path), "key": str(soon.key_path)}]), "FILE")
    assert certs.expiry_gauges(loaded, NOW) == [("tls.cert.late_test.days_left", 100.0),
                                                ("tls.cert.wildcard_soon_test.days_left", 10.0)]
    lines = certs.info_lines(loaded, NOW)
    assert lines[0].split()[:3] == ["10", "days", "*.soon.test"]
    assert lines[1].split()[:3] == ["100", "days", "late.test"]
    assert certs.info_lines(loaded, NOW + datetime.timedelta(days=50))[0].split()[0] == "EXPIRED"


def test_install_serves_a_new_certificate_ahead_of_the_old_one(ca, tmp_path):
    old = issue(ca, tmp_path / "old", "site.test")
    t = load_termination(_cfg(tls={"certificates": [{"cert": str(old.cert_path), "key": str(old.key_path)}]}))
    before = t.table.pick("site.test")
    new = issue(ca, tmp_path / "new", "site.test", "extra.test")
    t.install(load_certificate(CertificateConfig(cert=str(new.cert_path), key=str(new.key_path)), "FILE", "acme"))
    assert t.table.pick("site.test") is not before
    assert t.table.pick("extra.test") is t.table.pick("site.test")
    assert t.table.pick("unknown.test") is t.default_context
    assert [c.names for c in t.certificates] == [("site.test", "extra.test"), ("site.test",)]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")
def test_cert_commands_produce_what_openssl_verify_accepts(tmp_path):
    import sys

    def edge(*args):
        return subprocess.run([sys.executable, "-m", "edge", "cert", *args], capture_output=True, text=True,
                              cwd=tmp_path)

    made = edge("local-ca", "--dir", "ca")
    assert made.returncode == 0, made.stderr
    assert "update-ca-certificates" in made.stdout and "security add-trusted-cert" in made.stdout
    assert "Firefox" in made.stdout
    issued = edge("issue", "home.lan", "*.home.lan", "10.0.0.2", "--ca-dir", "ca", "--out", "out")
    assert issued.returncode == 0, issued.stderr
    check = subprocess.run(["openssl", "verify", "-CAfile", "ca/ca.pem", "out/home.lan.pem"], capture_output=True,
                           text=True, cwd=tmp_path)
    assert check.returncode == 0 and check.stdout.strip() == "out/home.lan.pem: OK", check.stderr
    again = edge("local-ca", "--dir", "ca")
    assert again.returncode == 1 and "already holds a CA" in again.stderr
    (tmp_path / "edge.yaml").write_text(
        "tls: {certificates: [{cert: out/home.lan.pem, key: out/home.lan.key}]}\nroutes: [{respond: {}}]\n")
    info = edge("info", "--config", "edge.yaml")
    assert info.returncode == 0, info.stderr
    assert "home.lan, *.home.lan, 10.0.0.2" in info.stdout and "days" in info.stdout


def test_a_key_written_over_an_existing_file_is_never_readable_through_it(tmp_path):
    """Keys get a new 0600 file that replaces the old one: a process that could open the old
    (here 0644) file does not read the new key through it, and the new file is 0600."""
    d = tmp_path / "pair"
    d.mkdir()
    old = d / "key.pem"
    old.write_bytes(b"old contents")
    old.chmod(0o644)
    with open(old, "rb") as held:
        _, key_path = certs.self_signed(d, ("a.test",))
        assert held.read() == b"old contents"
    assert (key_path.stat().st_mode & 0o777) == 0o600
    assert b"PRIVATE KEY" in key_path.read_bytes()
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_the_acme_stand_in_certificate_is_reused_until_it_nears_expiry(tmp_path):
    from edge.config import AcmeConfig
    from edge.tls import acme_start_certificate

    cfg = AcmeConfig(directory="https://acme.invalid/dir", accept_terms=True, names=["a.test", "b.test"],
                     storage_dir=str(tmp_path / "acme"))
    first = acme_start_certificate(cfg, "FILE")
    assert set(first.names) == {"a.test", "b.test"}
    assert acme_start_certificate(cfg, "FILE").serial == first.serial  # reused at the next validation
    stand_in = tmp_path / "acme" / "self-signed"
    certs.self_signed(stand_in, ("a.test", "b.test"), days=10)    # expiring within 30 days
    expiring = load_certificate(CertificateConfig(cert=str(stand_in / "cert.pem"), key=str(stand_in / "key.pem")),
                                "FILE", "k")
    renewed = acme_start_certificate(cfg, "FILE")
    assert renewed.serial != expiring.serial
    assert renewed.days_left(datetime.datetime.now(datetime.timezone.utc)) > 30
    certs.self_signed(stand_in, ("a.test",))                      # other names
    assert set(acme_start_certificate(cfg, "FILE").names) == {"a.test", "b.test"}
    assert "b.test" in load_certificate(CertificateConfig(cert=str(stand_in / "cert.pem"), key=str(stand_in / "key.pem")),
                                        "FILE", "k").names
    (stand_in / "key.pem").write_bytes(b"garbage")                # unreadable
    assert acme_start_certificate(cfg, "FILE").serial != renewed.serial
