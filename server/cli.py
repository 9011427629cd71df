"""The ``switchboard`` command: serve, check-config, token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import AuthError, ConfigError, PluginError

DEFAULT_CONFIG = "websocket.yaml"


def _config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    env = os.environ.get("SWITCHBOARD_CONFIG")
    if env:
        return env
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def _load(path: str | None, overrides: dict[str, Any] | None = None) -> Any:
    from .config import load_config

    return load_config(path, overrides=overrides)


def _print_config_error(exc: ConfigError, source: str | None) -> None:
    print(f"{source or 'configuration'}: {len(exc.errors)} error(s)", file=sys.stderr)
    for err in exc.errors:
        print(f"  error: {err}", file=sys.stderr)
    for warning in exc.warnings:
        print(f"  warning: {warning}", file=sys.stderr)


# --- serve --------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides.setdefault("server", {})["host"] = args.host
    if args.port is not None:
        overrides.setdefault("server", {})["port"] = args.port
    try:
        loaded = _load(path, overrides)
    except ConfigError as exc:
        _print_config_error(exc, path)
        return 2
    from .log import configure_logging

    configure_logging(loaded.config.logging)
    import structlog

    log = structlog.get_logger("server.cli")
    for warning in loaded.warnings:
        log.warning("config_warning", detail=warning)
    from .app import create_app

    try:
        app = create_app(loaded.config, config_path=path)
    except (PluginError, ConfigError, AuthError) as exc:
        log.error("startup_failed", error=str(exc))
        print(f"switchboard: cannot start: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(app, loaded.config, log))


async def _run(app: Any, config: Any, log: Any) -> int:
    from aiohttp import web

    from .log import AccessLogger

    srv = config.server
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("aiohttp.access") if config.logging.access_log else None,
        shutdown_timeout=srv.shutdown_timeout,
        read_bufsize=srv.read_buffer_size,
    )
    await runner.setup()
    site = web.TCPSite(runner, srv.host, srv.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        log.error("listen_failed", host=srv.host, port=srv.port, error=str(exc))
        await runner.cleanup()
        return 1
    for address in runner.addresses:
        host, port = address[0], address[1]
        shown = f"[{host}]" if ":" in host else host
        log.info("server_listening", url=f"ws://{shown}:{port}{srv.ws_path}", host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("server_stopping", shutdown_timeout=srv.shutdown_timeout)
    try:
        async with asyncio.timeout(srv.shutdown_timeout + 1.0):
            await runner.cleanup()
    except TimeoutError:
        log.error("shutdown_timed_out")
        return 1
    log.info("server_stopped")
    return 0


# --- check-config -------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    from .config import load_config
    from .registry import Registry

    try:
        loaded = load_config(args.file)
    except ConfigError as exc:
        _print_config_error(exc, args.file)
        return 1
    errors: list[str] = []
    try:
        Registry.classes(loaded.config)
    except ConfigError as exc:
        errors += exc.errors
    except PluginError as exc:
        errors.append(str(exc))
    warnings = loaded.warnings
    if errors or (args.strict and warnings):
        fatal = "" if errors else " (--strict: warnings are fatal)"
        print(f"{args.file}: {len(errors) + (len(warnings) if args.strict else 0)} error(s){fatal}",
              file=sys.stderr)
        for err in errors:
            print(f"  error: {err}", file=sys.stderr)
        for warning in warnings:
            print(f"  {'error' if args.strict else 'warning'}: {warning}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    cfg = loaded.config
    print(f"{args.file}: valid")
    print(f"  listen     {cfg.server.host}:{cfg.server.port}{cfg.server.ws_path}")
    print(f"  backend    {cfg.backend.type}")
    print(f"  auth       {cfg.auth.algorithm}"
          + (f" (jwks {cfg.auth.jwks_url})" if cfg.auth.jwks_url else ""))
    print(f"  plugins    {', '.join(cfg.plugins.enabled) or '(none)'}")
    print(f"  limits     {cfg.server.max_connections} connections, "
          f"{cfg.rate_limit.messages_per_minute} msg/min (burst {cfg.rate_limit.burst}), "
          f"{cfg.server.max_message_size} B frames")
    if warnings:
        print(f"  {len(warnings)} warning(s)")
    return 0


# --- token --------------------------------------------------------------------------------
def cmd_token(args: argparse.Namespace) -> int:
    from .auth import mint_token, parse_ttl

    path = _config_path(args.config)
    try:
        loaded = _load(path)
        ttl = parse_ttl(args.ttl)
    except ConfigError as exc:
        _print_config_error(exc, path)
        return 2
    except ValueError as exc:
        print(f"switchboard token: --ttl: {exc}", file=sys.stderr)
        return 2
    roles = [r for part in (args.roles or []) for r in part.split(",") if r]
    private_key = Path(args.private_key).read_text() if args.private_key else None
    try:
        token = mint_token(loaded.config.auth, sub=args.sub, username=args.username,
                           email=args.email, roles=roles, ttl=ttl, private_key=private_key)
    except AuthError as exc:
        print(f"switchboard token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="Switchboard real-time messaging server")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("-c", "--config", help=f"config file (default: $SWITCHBOARD_CONFIG or ./{DEFAULT_CONFIG} if present)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port; 0 picks a free one)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.add_argument("--strict", action="store_true", help="treat warnings (unknown keys) as errors")
    check.set_defaults(func=cmd_check_config)

    token = sub.add_parser("token", help="print a development token signed with the configured key")
    token.add_argument("-c", "--config")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--username")
    token.add_argument("--email")
    token.add_argument("--roles", action="append", help="comma-separated roles; repeatable")
    token.add_argument("--ttl", default="1h", help="lifetime: 90, 15m, 1h, 7d (default 1h)")
    token.add_argument("--private-key", help="PEM private key for RS256/ES256")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
