"""``python -m edge <command>`` (also the ``edge`` console script).

Commands live in ``COMMANDS``: a name mapped to a function that takes the remaining
arguments and returns the exit status. To add one (``certs``, ``purge``, ``status``
...), write ``def cmd_name(argv: list[str]) -> int`` with a one-line docstring (shown
by ``python -m edge --help``) and register it in ``COMMANDS``.

``status [--config FILE]`` prints every upstream server's state from the store
(``edge.upstream.shared_state``); ``drain POOL SERVER`` / ``undrain POOL SERVER``
set or clear a server's runtime drain flag there. They open the store the
configuration names (``edge.store.build_store``), so they must see the same file,
and for the default ``local`` store without ``store.path``, the same working
directory as the running edge.

``check [FILE]`` validates a configuration without serving: it loads it with
``edge.config.load_config`` (the same code a starting worker runs) and then calls
``validate(cfg)``, which builds what a worker would build from it and so catches
what the schema alone cannot see (a rewrite replacement naming a group its regex
lacks, an unknown redirect placeholder, duplicate route names), and builds every
enabled plugin in a short-lived child process (``edge.boot.check_construction``), so
a plugin whose ``__init__`` fails is refused here as it would be by a start or a
reload. A transient failure (a service down right now) is a warning on stderr and
the file still passes. Every error of the file is reported, one
``file: key.path: reason`` per line (up to ``edge.config.MAX_REPORTED_ERRORS``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from edge.config import DEFAULT_CONFIG_PATH, EdgeConfig, load_config
from edge.errors import ConfigError
from edge.routing import compile_routes


def validate(cfg: EdgeConfig) -> list[str]:
    """Everything a worker builds from ``cfg`` that can fail; raise ConfigError.

    Compiles the route table, imports and checks the plugins with their settings
    (global and per route) and builds them in a child process: the same as a start
    or a reload (``edge.boot.validate``), so ``check`` refuses exactly what they would
    refuse. Returns the warnings (transient plugin failures).
    """
    from edge.boot import Loaded, check_construction
    from edge.plugins import discover_plugins

    from edge.tls import load_termination

    compile_routes(cfg)
    load_termination(cfg)  # certificate files, key pairs, names
    return check_construction(Loaded(cfg.source, cfg, discover_plugins(cfg)))


def cmd_check(argv: list[str]) -> int:
    """Validate a configuration file without starting (exit status 1 if it is refused)."""
    parser = argparse.ArgumentParser(prog="edge check", description=cmd_check.__doc__)
    parser.add_argument("file", nargs="?", help=f"configuration file (default: $EDGE_CONFIG or {DEFAULT_CONFIG_PATH})")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.file)
        warnings = validate(cfg)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"{cfg.source}: ok ({len(cfg.routes)} routes, {len(cfg.upstreams)} upstreams)")
    return 0


def _open_store(config_file: str | None):
    """(config, store) for the runtime commands, or an exit status after a message on stderr."""
    from edge.errors import StoreUnavailable
    from edge.store import build_store

    try:
        cfg = load_config(config_file)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None, 1
    if cfg.store.backend == "memory":
        # each worker has its own memory store: nothing outside the worker can read or change it
        print("edge: store.backend is memory (private to each worker): status, drain and undrain need "
              "local, redis or memcached", file=sys.stderr)
        return None, 1
    try:
        return cfg, build_store(cfg.store)
    except (StoreUnavailable, OSError) as e:
        print(f"edge: cannot open the {cfg.store.backend} store: {e}", file=sys.stderr)
        return None, 1


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", dest="config",
                        help=f"configuration file (default: $EDGE_CONFIG or {DEFAULT_CONFIG_PATH})")


def cmd_status(argv: list[str]) -> int:
    """Show every upstream server's state as the node's store holds it (health, drain, in-flight, latency)."""
    import time

    from edge.errors import StoreUnavailable
    from edge.upstream.shared_state import server_statuses

    parser = argparse.ArgumentParser(prog="edge status", description=cmd_status.__doc__)
    _config_arg(parser)
    args = parser.parse_args(argv)
    cfg, store = _open_store(args.config)
    if cfg is None:
        return store
    pools = {name: tuple(s.authority for s in u.servers) for name, u in cfg.upstreams.items()}
    now = time.time()
    try:
        rows = server_statuses(store, pools, now)
    except StoreUnavailable as e:
        print(f"edge: the {cfg.store.backend} store is unavailable: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    table = [("POOL", "SERVER", "STATE", "IN-FLIGHT", "LATENCY", "LAST ERROR", "LAST CHANGE")]
    for r in rows:
        latency = f"{r.latency_ms:.1f}ms" if r.latency_ms is not None else "-"
        change = f"{now - r.last_change:.1f}s ago" if r.last_change else "-"
        table.append((r.pool, r.server, r.state, str(r.inflight), latency, r.last_error[:60] or "-", change))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _drain(argv: list[str], drained: bool, fn) -> int:
    import time

    from edge.errors import StoreUnavailable
    from edge.upstream.shared_state import set_drain

    name = "drain" if drained else "undrain"
    parser = argparse.ArgumentParser(prog=f"edge {name}", description=fn.__doc__)
    parser.add_argument("pool", help="upstream pool name")
    parser.add_argument("server", help="server as `host:port` (as in the configuration) or its position from 0")
    _config_arg(parser)
    args = parser.parse_args(argv)
    cfg, store = _open_store(args.config)
    if cfg is None:
        return store
    try:
        pool = cfg.upstreams.get(args.pool)
        if pool is None:
            known = ", ".join(sorted(cfg.upstreams)) or "none"
            print(f"edge {name}: unknown pool {args.pool!r} (pools: {known})", file=sys.stderr)
            return 2
        labels = [s.authority for s in pool.servers]
        server = args.server
        if server.isdigit() and int(server) < len(labels):
            server = labels[int(server)]
        if server not in labels:
            print(f"edge {name}: pool {args.pool} has no server {args.server!r} (servers: {', '.join(labels)})", file=sys.stderr)
            return 2
        try:
            changed = set_drain(store, args.pool, server, drained, time.time())
        except StoreUnavailable as e:
            print(f"edge {name}: the {cfg.store.backend} store is unavailable: {e}", file=sys.stderr)
            return 1
    finally:
        store.close()
    state = "drained" if drained else "in rotation"
    print(f"{args.pool} {server}: {state}" + ("" if changed else " (already)"))
    return 0


def cmd_drain(argv: list[str]) -> int:
    """Stop sending new requests to a server (POOL SERVER); in-flight ones finish. Every worker follows within one refresh period."""
    return _drain(argv, True, cmd_drain)


def cmd_undrain(argv: list[str]) -> int:
    """Put a drained server (POOL SERVER) back in rotation."""
    return _drain(argv, False, cmd_undrain)


def cmd_cert(argv: list[str]) -> int:
    """Certificates: local-ca, issue NAME..., info (see docs/tls.md)."""
    from edge.cli_cert import run

    return run(argv)


def cmd_purge(argv: list[str]) -> int:
    """Purge cached responses by URL, prefix or surrogate key, on the store itself (docs/cache.md)."""
    import time

    from edge.cache import purge
    from edge.cache.cache import cache_store_config, route_cache
    from edge.context import Headers
    from edge.errors import EdgeError
    from edge.http import split_host_port
    from edge.store import build_store

    parser = argparse.ArgumentParser(prog="edge purge", description=cmd_purge.__doc__)
    parser.add_argument("--config", help=f"configuration file (default: $EDGE_CONFIG or {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--soft", action="store_true", help="mark stale (the next request revalidates) instead of deleting")
    parser.add_argument("urls", nargs="*", metavar="URL", help="a URL to purge, every variant (both schemes without one)")
    parser.add_argument("--prefix", action="append", default=[], metavar="URL", help="purge every URL starting so")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG", help="purge every response with this Surrogate-Key/Cache-Tag")
    args = parser.parse_args(argv)
    if not (args.urls or args.prefix or args.tag):
        parser.error("give at least one URL, --prefix or --tag")
    try:
        cfg = load_config(args.config)
        routes = compile_routes(cfg)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1

    def rules_for(host: str, path: str):
        # the matching route's query normalisation, so the key is the one requests use
        try:
            name, _port = split_host_port(host, 0)
        except ValueError:
            name = host
        route = routes.match(name.lower(), path, "GET", Headers())
        return route_cache(cfg.cache, route.config.cache).keys if route is not None else None

    store = build_store(cache_store_config(cfg))
    try:
        lines = purge.purge(store, urls=args.urls, prefixes=args.prefix, tags=args.tag, soft=args.soft, now=time.time(),
                            max_ttl_s=cfg.cache.max_ttl, rules_for=rules_for)
    except (ValueError, RuntimeError, EdgeError) as e:
        print(f"edge purge: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    for line in lines:
        print(line)
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "check": cmd_check,
    "status": cmd_status,
    "drain": cmd_drain,
    "undrain": cmd_undrain,
    "cert": cmd_cert,
    "purge": cmd_purge,
}


def _usage() -> str:
    lines = ["usage: edge <command> [args]", "", "commands:"]
    for name, fn in COMMANDS.items():
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        lines.append(f"  {name:<10} {summary}")
    lines.append("")
    lines.append("`edge <command> --help` describes a command's arguments.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m edge`` and of the ``edge`` console script."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"edge: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
