"""``python -m edge cert``: local-ca, issue, info (edge.certs does the work; this is the argument layer)."""

from __future__ import annotations

import argparse
import datetime
import sys

from edge import certs
from edge.config import DEFAULT_CONFIG_PATH, load_config
from edge.errors import ConfigError


def _local_ca(args: argparse.Namespace) -> int:
    try:
        ca = certs.make_local_ca(args.dir, args.name)
    except FileExistsError as e:
        print(f"edge cert local-ca: {e}", file=sys.stderr)
        return 1
    print(certs.trust_instructions(ca.cert_path))
    return 0


def _issue(args: argparse.Namespace) -> int:
    try:
        leaf = certs.issue(args.names, args.ca_dir, args.out, days=args.days)
    except (FileNotFoundError, ValueError) as e:
        print(f"edge cert issue: {e}", file=sys.stderr)
        return 1
    print(f"certificate: {leaf.cert_path}\nkey:         {leaf.key_path}\nnames:       {', '.join(leaf.names)}\n"
          f"expires:     {leaf.not_after:%Y-%m-%d} UTC\n\nin edge.yaml:\n  tls:\n    certificates:\n"
          f"      - {{cert: {leaf.cert_path}, key: {leaf.key_path}}}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from edge.tls import load_certificates

    try:
        cfg = load_config(args.config)
        if cfg.tls is None:
            print(f"{cfg.source}: no tls section, no certificates")
            return 0
        found = load_certificates(cfg.tls, cfg.source)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    for line in certs.info_lines(found, datetime.datetime.now(datetime.timezone.utc)):
        print(line)
    return 0


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edge cert", description="certificate tooling (docs/tls.md)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("local-ca", help="create a local certificate authority (key + certificate)")
    p.add_argument("--dir", default=certs.DEFAULT_CA_DIR, help=f"where to write it (default {certs.DEFAULT_CA_DIR})")
    p.add_argument("--name", default="edge local CA", help="the CA's common name")
    p.set_defaults(func=_local_ca)
    p = sub.add_parser("issue", help="issue a server certificate for NAME... signed by the local CA")
    p.add_argument("names", nargs="+", metavar="NAME", help="DNS names (`*.home.lan` too) and IP addresses")
    p.add_argument("--ca-dir", default=certs.DEFAULT_CA_DIR, help="the local CA's directory")
    p.add_argument("--out", default=".", help="where to write NAME.pem and NAME.key (default: here)")
    p.add_argument("--days", type=int, default=certs.LEAF_DAYS, help=f"validity (default {certs.LEAF_DAYS})")
    p.set_defaults(func=_issue)
    p = sub.add_parser("info", help="list the configured certificates, soonest expiry first")
    p.add_argument("--config", default=None, help=f"configuration file (default $EDGE_CONFIG or {DEFAULT_CONFIG_PATH})")
    p.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)
