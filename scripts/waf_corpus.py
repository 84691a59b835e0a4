#!/usr/bin/env python3
"""Run the waf plugin over the test corpus and print detection and false-positive rates.

Usage (from the repository root)::

    .venv/bin/python scripts/waf_corpus.py                 # default settings (paranoia 1)
    .venv/bin/python scripts/waf_corpus.py --paranoia 2
    .venv/bin/python scripts/waf_corpus.py --show-misses   # list attacks let through, benign requests flagged
    .venv/bin/python scripts/waf_corpus.py --json          # the figures as JSON

Pure: every request of ``tests/data/waf/attacks.jsonl`` and ``benign.jsonl`` (written by
``tests/data/waf/make_corpus.py``) becomes a ``RequestContext`` (``edge.testing.make_ctx``)
and goes through the plugin's ``on_request`` and, for a body, ``on_request_body_complete``
in ``detect`` mode: no sockets, no edge process. A request is *flagged* when its anomaly
score reaches the threshold. The unit test ``tests/unit/plugins/test_waf.py`` asserts the
acceptance figures (detection >= 95%, false positives <= 1%) with ``evaluate``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "waf"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.plugins import load_plugin_file  # noqa: E402
from edge.testing import make_ctx, make_plugin  # noqa: E402

logging.getLogger("edge.plugins.test").setLevel(logging.ERROR)  # the waf logs every flagged request


def load_corpus(name: str) -> list[dict[str, Any]]:
    with open(CORPUS / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def flagged(plugin: Any, row: dict[str, Any]) -> tuple[bool, Any]:
    """Whether the plugin scores ``row`` as an attack, and its verdict."""
    ctx = make_ctx(row["method"], row["path"], [tuple(h) for h in row["headers"]], query=row["query"])
    plugin.on_request(ctx)
    body = row.get("body")
    if body is not None:
        plugin.on_request_body_complete(ctx, body.encode("utf-8"), False)
    verdict = ctx.facts.get("waf")
    return (verdict is not None and verdict.attack), verdict


def evaluate(settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Detection per attack kind and class, false positives per benign class."""
    waf_cls = load_plugin_file(ROOT / "plugins" / "waf.py")
    plugin = make_plugin(waf_cls, {**(settings or {}), "mode": "detect"})
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses: list[dict[str, Any]] = []
    false_positives: list[tuple[dict[str, Any], Any]] = []
    for row in load_corpus("attacks.jsonl"):
        hit, _ = flagged(plugin, row)
        for key in (row["kind"], f'{row["kind"]}/{row["class"]}', f'context/{row["context"]}'):
            per[key][0] += hit
            per[key][1] += 1
        if not hit:
            misses.append(row)
    benign: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in load_corpus("benign.jsonl"):
        hit, verdict = flagged(plugin, row)
        for key in ("benign", f'benign/{row["class"]}'):
            benign[key][0] += hit
            benign[key][1] += 1
        if hit:
            false_positives.append((row, verdict))
    attacks_total = per["sqli"][1] + per["xss"][1]
    detected = per["sqli"][0] + per["xss"][0]
    return {
        "settings": settings or {},
        "attacks": attacks_total,
        "detected": detected,
        "detection_rate": detected / attacks_total,
        "benign": benign["benign"][1],
        "false_positives": benign["benign"][0],
        "false_positive_rate": benign["benign"][0] / benign["benign"][1],
        "per_class": {k: {"flagged": v[0], "total": v[1], "rate": v[0] / v[1]} for k, v in sorted(per.items())},
        "per_benign_class": {k: {"flagged": v[0], "total": v[1], "rate": v[0] / v[1]}
                             for k, v in sorted(benign.items())},
        "misses": misses,
        "false_positive_rows": false_positives,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--paranoia", type=int, default=1)
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = evaluate({"paranoia": args.paranoia})
    if args.json:
        out = {k: v for k, v in r.items() if k not in ("misses", "false_positive_rows")}
        print(json.dumps(out, indent=2))
        return 0
    print(f"waf corpus, paranoia {args.paranoia}: {r['attacks']} attacks, {r['benign']} benign requests")
    print(f"  detection       {r['detected']}/{r['attacks']} = {r['detection_rate']:.1%}")
    print(f"  false positives {r['false_positives']}/{r['benign']} = {r['false_positive_rate']:.1%}")
    print("  per class (detected or flagged / total):")
    for k, v in {**r["per_class"], **r["per_benign_class"]}.items():
        print(f"    {k:28s} {v['flagged']:4d}/{v['total']:<4d} {v['rate']:6.1%}")
    if args.show_misses:
        for row in r["misses"]:
            print("MISS", row["id"], row["class"], row["context"], row["query"] or row["body"] or row["path"]
                  or row["headers"])
        for row, verdict in r["false_positive_rows"]:
            print("FP  ", row["id"], row["class"], [str(m) for m in verdict.matches],
                  row["query"] or row["body"] or row["headers"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
