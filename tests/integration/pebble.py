"""Pebble, the ACME test server (Debian package ``pebble``), started on loopback for tests.

``start_pebble(dir, http_port)`` starts ``pebble-challtestsrv`` as the DNS server (every
name resolves to 127.0.0.1, no AAAA) and ``pebble`` with its own config: the ACME API and
the management API on free loopback ports, served with a certificate from a test CA
made here (``ca_bundle``: what an ACME client must trust), and HTTP-01 validations sent to
``127.0.0.1:http_port``, where edge listens. Validation is real
(``PEBBLE_VA_ALWAYS_VALID=0``) and immediate (``PEBBLE_VA_NOSLEEP=1``); nonces are never
rejected on purpose, so a test does not depend on the client's retry of ``badNonce``.
Both processes are stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

from edge.launch import Process, free_port, wait_for_port
from tests.integration.testca import TestCA

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"


def available() -> bool:
    return os.access(PEBBLE, os.X_OK) and os.access(CHALLTESTSRV, os.X_OK)


class Pebble:
    def __init__(self, pebble: Process, dns: Process, acme_port: int, mgmt_port: int, ca_bundle: Path) -> None:
        self.proc, self.dns = pebble, dns
        self.directory = f"https://127.0.0.1:{acme_port}/dir"
        self.mgmt = f"https://127.0.0.1:{mgmt_port}"
        self.ca_bundle = ca_bundle

    def roots_pem(self) -> bytes:
        """Pebble's root (regenerated at every start): what the certificates it issues chain to."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(f"{self.mgmt}/roots/0", context=ctx, timeout=10) as r:
            return r.read()

    def log(self) -> str:
        return self.proc.log()

    def stop(self) -> None:
        self.proc.stop()
        self.dns.stop()


def start_pebble(directory: Path, http_port: int, validity_s: int | None = None) -> Pebble:
    """Pebble validating HTTP-01 on ``127.0.0.1:http_port``; ``validity_s``: lifetime of the certificates it issues."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = TestCA(d, "pebble api CA")
    cert, key = ca.issue("pebble-api", ("localhost", "127.0.0.1"))
    acme_port, mgmt_port, dns_port, dns_mgmt = free_port(), free_port(), free_port(), free_port()
    cfg = {"pebble": {
        "listenAddress": f"127.0.0.1:{acme_port}",
        "managementListenAddress": f"127.0.0.1:{mgmt_port}",
        "certificate": str(cert), "privateKey": str(key),
        "httpPort": http_port, "tlsPort": free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}
    if validity_s is not None:
        cfg["pebble"]["certificateValidityPeriod"] = validity_s
    (d / "pebble.json").write_text(json.dumps(cfg))
    dns_log = d / "challtestsrv.log"
    with open(dns_log, "wb") as out:
        dns_proc = subprocess.Popen(
            [CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns_port}",
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{dns_mgmt}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    dns = Process(dns_proc, dns_mgmt, dns_log)
    wait_for_port("127.0.0.1", dns_mgmt, proc=dns_proc)
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_VA_ALWAYS_VALID": "0", "PEBBLE_WFE_NONCEREJECT": "0",
           "PEBBLE_AUTHZREUSE": "0"}
    log = d / "pebble.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([PEBBLE, "-config", str(d / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns_port}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(d))
    p = Process(proc, acme_port, log)
    try:
        wait_for_port("127.0.0.1", acme_port, proc=proc)
    except Exception:
        p.stop()
        dns.stop()
        raise
    return Pebble(p, dns, acme_port, mgmt_port, ca.ca_path)
