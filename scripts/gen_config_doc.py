#!/usr/bin/env python3
"""Generate docs/config.md from the configuration schema (edge/config.py).

    python scripts/gen_config_doc.py            # rewrite docs/config.md
    python scripts/gen_config_doc.py --check    # exit 1 if docs/config.md is out of date

Every key comes from the pydantic models, walked recursively from ``EdgeConfig``:
its key path, type, default and ``description``. The text before the reference
(units, route matching and precedence, an example) is kept here in ``INTRO``; the
matching and precedence rules are taken from the docstring of ``edge.routing`` so
that the code's documentation and the user's cannot drift apart. A unit test
(tests/unit/test_config.py) regenerates the file in memory and compares.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import annotated_types  # noqa: E402  (pydantic's constraint markers)
from pydantic import BaseModel, BeforeValidator  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

import edge.config as config  # noqa: E402
import edge.routing as routing  # noqa: E402

OUTPUT = ROOT / "docs" / "config.md"

EXAMPLE = """\
server:
  bind: ["0.0.0.0:8080"]
  workers: 0                  # one per core

upstreams:
  app:
    servers: ["10.0.0.11:8000", "10.0.0.12:8000"]
    timeouts: {connect: 2s, read: 30s}
  api:
    servers:
      - {host: 10.0.1.21, port: 9000, weight: 2}
      - http://10.0.1.22:9000

routes:
  - name: health
    match: {path: {exact: /healthz}}
    respond: {body: "ok\\n"}

  - name: www
    match: {host: [example.com]}
    redirect: {status: 308, location: "https://www.example.com$path$query"}

  - name: api
    match: {host: [www.example.com, "*.example.com"], path: /api}
    strip_prefix: true                # /api/users reaches the backend as /users
    upstream: api
    timeouts: {read: 5s}

  - name: site
    upstream: app
"""

INTRO = """\
# Configuration

edge reads one YAML file: `conf/edge.yaml`, or the file named by the `EDGE_CONFIG`
environment variable. It is validated completely at start and on reload
(`kill -HUP` of the master); a file that fails validation is refused and the
running workers keep serving. Check a file without starting anything:

```
python -m edge check conf/edge.yaml
conf/edge.yaml: ok (4 routes, 1 upstreams)
```

Unknown keys are errors (a typo is never silently ignored). Every error names the
file, the key path and the reason:

```
conf/edge.yaml: upstreams.demo.servers[1].port: port must be 1-65535 (got 70000)
```

## Units

- **Durations**: `500ms`, `2s`, `1m`, `1h`, `1d`; a bare number is seconds.
- **Sizes**: `10MB` (decimal, 10,000,000 bytes), `64KiB` or `64k` (binary, 65,536
  bytes); a bare number is bytes.
- **Rates** (used by plugins): `100/s`, `5000/h`, `10/5m`.

## Example

```yaml
{example}```

More complete files are in `conf/edge.yaml` and `conf/examples/`.

## Routes

Each request is answered by one route: forwarded to an upstream pool (`upstream`),
redirected (`redirect`), or answered by edge itself (`respond`). A request that no
route matches gets 404.

Paths are matched after normalisation (the backend receives the normalised path too,
unless `forward_normalized_path: false`): percent-escapes of unreserved characters
are decoded (`/%61dmin` is `/admin`), `.` and `..` segments are resolved without
going above the root (`/x/../admin`, `/./admin`, `/admin/.` are `/admin`), and
repeated slashes are collapsed (`//admin`). `%2F` stays encoded: it is a reserved
character, and `/a%2Fb` is one segment, not two. Paths are case-sensitive
(`/ADMIN` is not `/admin`).

{routing}
`strip_prefix` removes the matched prefix (`/api/users` for prefix `/api` becomes
`/users`; the result always starts with `/`), then `rewrite` applies its regular
expression to what is left (every match is replaced, as by Python's `re.sub`).

In a redirect `location`, `$host` is the Host the client sent (port included),
`$path` the normalised path after `strip_prefix` and `rewrite`, and `$query` the
query string with its `?` (empty when there is none). `${{path}}` is the same as
`$path`; any other `$name` is refused.

A route's `timeouts` override only the keys the route sets: `timeouts: {{read: 5s}}`
keeps the pool's `connect`, `send` and `total`.

"""

# --------------------------------------------------------------------------- rendering


def routing_rules() -> str:
    """The matching and precedence rules from edge.routing's docstring, as Markdown."""
    doc = routing.__doc__ or ""
    start = doc.index("Conditions (")
    end = doc.index("How match() stays cheap")
    return doc[start:end].replace("``", "`").rstrip() + "\n"


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """Strip ``Annotated`` (and ``X | None``), returning the inner type and its metadata."""
    meta: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        args = typing.get_args(annotation)
        annotation, meta = args[0], meta + list(args[1:])
    return annotation, meta


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _special(meta: list[Any]) -> str | None:
    for m in meta:
        if isinstance(m, BeforeValidator):
            if m.func is config._duration:
                return "duration"
            if m.func is config._size:
                return "size"
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def type_name(annotation: Any, meta: list[Any] | None = None) -> str:
    annotation, more = _unwrap(annotation)
    meta = (meta or []) + more
    special = _special(meta)
    if special:
        return special
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is tuple:
        return "list of " + _plural(type_name(args[0]))
    if origin is dict:
        if args[1] is Any:
            return "mapping"
        inner = type_name(args[1])
        return "map of name to " + (f"({inner})" if " or " in inner else inner)
    if _is_model(annotation):
        return "section"
    return {str: "string", int: "integer", float: "number", bool: "boolean", Any: "any"}.get(annotation, str(annotation))


def _plural(name: str) -> str:
    return {"string": "strings", "section": "sections", "integer": "integers"}.get(name, name)


def constraints(meta: list[Any]) -> str:
    out = []
    for m in meta:
        if isinstance(m, annotated_types.Ge):
            out.append(f"≥ {m.ge}")
        elif isinstance(m, annotated_types.Gt):
            out.append(f"> {m.gt}")
        elif isinstance(m, annotated_types.Le):
            out.append(f"≤ {m.le}")
        elif isinstance(m, annotated_types.Lt):
            out.append(f"< {m.lt}")
        elif isinstance(m, annotated_types.MinLen) and m.min_length:
            out.append(f"at least {m.min_length}")
    return ", ".join(out)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0 and seconds >= 120:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return ""  # a section built from the defaults of its keys
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return ""
    special = _special(list(field.metadata)) or _special(_unwrap(field.annotation)[1])
    if special == "duration":
        return f"`{_duration(value)}`"
    if special == "size":
        return f"`{_size(value)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (tuple, list, dict, str)):
        return f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def walk(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    """Rows (key path, type, default, description) for every key under ``model``."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # internal, not written by users (EdgeConfig.source)
        key = f"{prefix}{name}"
        ann, meta = _unwrap(field.annotation)
        meta = list(field.metadata) + meta
        typ = type_name(ann, meta)
        limits = constraints(meta)
        if limits:
            typ = f"{typ} ({limits})"
        rows.append((key, typ, default_text(field), field.description or ""))
        rows.extend(_nested(_without_none(ann), key))
    return rows


def _nested(ann: Any, key: str) -> list[tuple[str, str, str, str]]:
    ann, _ = _unwrap(ann)
    ann = _without_none(ann)
    ann, _ = _unwrap(ann)
    if _is_model(ann):
        return walk(ann, f"{key}.")
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is tuple:
        inner = _unwrap(args[0])[0]
        return walk(inner, f"{key}[].") if _is_model(inner) else []
    if origin is dict:
        inner = _unwrap(args[1])[0]
        return walk(inner, f"{key}.<name>.") if _is_model(inner) else []
    return []


def reference() -> str:
    out = [
        "## Reference\n\n",
        "Every key, generated from `edge/config.py`. `routes[]` stands for any item of the\n",
        "list, `<name>` for a name you choose. A section without a default is built from the\n",
        "defaults of its keys.\n",
    ]
    rows = walk(config.EdgeConfig, "")
    for name, field in config.EdgeConfig.model_fields.items():
        if field.exclude:
            continue
        top = next(r for r in rows if r[0] == name)
        below = [r for r in rows if r[0].startswith((name + ".", name + "["))]
        out.append(f"\n### `{name}`\n\n{top[3]}")
        details = ", ".join(x for x in (top[1], f"default {top[2]}" if top[2] else "") if x)
        out.append(f" ({details}).\n\n" if details else ".\n\n")
        if not below:
            continue
        out.append("| Key | Type | Default | Description |\n|---|---|---|---|\n")
        for key, typ, default, desc in below:
            out.append(f"| `{key}` | {_cell(typ)} | {_cell(default)} | {_cell(desc)} |\n")
    return "".join(out)


def render() -> str:
    header = "<!-- Generated by scripts/gen_config_doc.py from edge/config.py: edit those, not this file. -->\n\n"
    return header + INTRO.format(example=EXAMPLE, routing=routing_rules()) + reference()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date instead of writing it")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python scripts/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
