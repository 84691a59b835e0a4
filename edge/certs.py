"""Certificate tooling: a local CA for homelabs, leaf certificates it signs, and expiry reports.

Theory of operation. ``python -m edge cert local-ca`` writes a CA key and a
self-signed CA certificate (``ca.key``, ``ca.pem``); ``cert issue NAME...`` writes a
leaf key and certificate for those names (DNS names and IP addresses as subject
alternative names, the server-auth extended key usage) signed by that CA, which
``openssl verify -CAfile ca.pem leaf.pem`` accepts; ``cert info`` lists every
certificate a configuration serves, soonest expiry first. The same expiry figures go
to statsd as gauges (``expiry_gauges``; emitted by one worker per node, see
``edge.worker``).

Why ``cryptography`` and not pyOpenSSL: pyOpenSSL's own documentation recommends
``cryptography`` for everything but its TLS connections, its X509 extension and
request APIs are deprecated or gone (24.x), and it builds certificates through
``cryptography`` underneath anyway. The x509 builder here is that maintained path.

Keys are EC P-256 (universally supported, small, fast handshakes); private keys are
written with mode 0600 from their creation and replaced atomically (``write_private``). The CA carries ``BasicConstraints(ca=True, path_length=0)``
and ``KeyUsage(key_cert_sign, crl_sign)``, a leaf ``BasicConstraints(ca=False)``,
``KeyUsage(digital_signature)``, ``ExtendedKeyUsage(serverAuth)`` and the subject and
authority key identifiers, which is what browsers and OpenSSL check (RFC 5280 §4.2).
Leaves last 397 days at most by default, the longest a browser accepts (CA/Browser
Forum baseline, also applied to private roots by Apple).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_DAYS = 3650
LEAF_DAYS = 397
DEFAULT_CA_DIR = "~/.local/share/edge/ca"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN otherwise (RFC 5280 §4.2.1.6)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name.lower().rstrip("."))


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` atomically (temp file in the same folder, fsync, rename) with ``mode`` from creation on.

    Why not write in place: opening an existing file with O_TRUNC keeps its mode, so a key
    written over a 0644 file would be readable until a chmod, and by anyone who opened the
    old file, for good. A new inode created 0600 has no such window, and a crash leaves the
    old file or the new one, never half a key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # O_EXCL, mode 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # already renamed or never created
        raise


def _write_key(path: Path, key) -> None:
    write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))


def _write_cert(path: Path, cert: x509.Certificate, chain: Sequence[x509.Certificate] = ()) -> None:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, *chain)))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True, slots=True)
class Issued:
    cert_path: Path
    key_path: Path
    names: tuple[str, ...]
    not_after: datetime.datetime


def make_local_ca(directory: str | Path, common_name: str = "edge local CA", days: int = CA_DAYS,
                  now: datetime.datetime | None = None) -> Issued:
    """Write ``ca.key`` and ``ca.pem`` into ``directory``; refuse to overwrite an existing CA."""
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = d / CA_CERT, d / CA_KEY
    if cert_path.exists() or key_path.exists():
        raise FileExistsError(f"{d} already holds a CA ({CA_CERT}/{CA_KEY}); remove it or choose another --dir")
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return Issued(cert_path, key_path, (common_name,), cert.not_valid_after_utc)


def load_ca(directory: str | Path):
    d = Path(directory).expanduser()
    try:
        cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError:
        raise FileNotFoundError(f"no CA in {d} (run: python -m edge cert local-ca --dir {d})") from None
    return cert, key


def issue(names: Sequence[str], ca_dir: str | Path, out_dir: str | Path, days: int = LEAF_DAYS,
          now: datetime.datetime | None = None) -> Issued:
    """Write ``<first name>.pem`` (leaf, then the CA) and ``<first name>.key`` into ``out_dir``."""
    if not names:
        raise ValueError("give at least one name")
    sans = [general_name(n) for n in names]
    ca_cert, ca_key = load_ca(ca_dir)
    now = now or _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stem = file_stem(names[0])
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert, (ca_cert,))
    return Issued(cert_path, key_path, tuple(names), not_after)


def self_signed(directory: str | Path, names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
                days: int = 365) -> tuple[Path, Path]:
    """``cert.pem`` and ``key.pem`` (EC P-256) for ``names``, self-signed (development and tests)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(_name(names[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    _write_cert(cert_path, cert)
    _write_key(key_path, key)
    return cert_path, key_path


_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def file_stem(name: str) -> str:
    """A file name for a certificate name: ``*.example.com`` -> ``wildcard.example.com``."""
    name = name.lower().rstrip(".")
    if name.startswith("*."):
        name = "wildcard" + name[1:]
    return re.sub(r"[^a-z0-9._-]+", "_", name)


def metric_name(names: Sequence[str]) -> str:
    """``tls.cert.<name>.days_left`` with the first name made safe for statsd (dots, ``*`` and ``:``
    would split or break the metric path): ``*.example.com`` -> ``wildcard_example_com``."""
    first = names[0].lower() if names else "unnamed"
    if first.startswith("*."):
        first = "wildcard" + first[1:]
    return f"tls.cert.{_UNSAFE.sub('_', first).strip('_')}.days_left"


def expiry_gauges(certificates: Iterable, now: datetime.datetime) -> list[tuple[str, float]]:
    """(metric name, whole days to expiry) per certificate (pure)."""
    return [(metric_name(c.names), float(int(c.days_left(now) // 1))) for c in certificates]


def info_lines(certificates: Iterable, now: datetime.datetime) -> list[str]:
    """One line per certificate, soonest expiry first: days left, names, issuer, file."""
    rows = sorted(certificates, key=lambda c: c.not_after)
    lines = []
    for c in rows:
        days = c.days_left(now)
        state = "EXPIRED" if days < 0 else f"{int(days // 1)} days"
        lines.append(f"{state:>10}  {', '.join(c.names)}  (issuer {c.issuer}; expires "
                     f"{c.not_after:%Y-%m-%d %H:%M} UTC; {c.cert_path}; {c.key})")
    return lines


def trust_instructions(ca_path: Path) -> str:
    """How to make browsers and tools on common systems trust the local CA."""
    p = ca_path.resolve()
    return f"""\
Local CA written: {p}
Keep {p.with_name(CA_KEY)} private: anyone holding it can issue certificates your machines trust.

Trust it on the machines that will connect:
  Debian / Ubuntu:  sudo cp {p} /usr/local/share/ca-certificates/edge-local-ca.crt
                    sudo update-ca-certificates
  macOS:            sudo security add-trusted-cert -d -r trustRoot \\
                         -k /Library/Keychains/System.keychain {p}
  Firefox:          Settings > Privacy & Security > Certificates > View Certificates >
                    Authorities > Import... > {p}, tick "Trust this CA to identify websites"
                    (or set security.enterprise_roots.enabled to use the system store)
  Python/curl:      SSL_CERT_FILE / curl --cacert {p}

Then issue a certificate for your names:
  python -m edge cert issue home.lan '*.home.lan' 192.168.1.10 --ca-dir {p.parent} --out certs/
"""
