#!/usr/bin/env python3
"""Key set and token for the auth benchmark (scripts/bench_configs/auth_jwt.yaml).

Writes an RSA public key set to ``/tmp/edge-bench-auth/jwks.json`` (or the directory
given as the first argument) and prints an RS256 token for it, valid for a day, with
``aud: bench``. The private key is not kept.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

if Path(sys.executable).parent != Path(__file__).resolve().parent.parent / ".venv" / "bin":
    venv = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    if venv.exists():
        os.execv(str(venv), [str(venv), *sys.argv])

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/edge-bench-auth")
    out.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (out / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "bench", "alg": "RS256"}]}))
    claims = {"sub": "bench-user", "aud": "bench", "exp": int(time.time()) + 86400}
    print(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"}))


if __name__ == "__main__":
    main()
