"""The ``switchboard`` command: serve, check-config, token, client, bench."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import collector, event_loop
from .errors import AuthError, ConfigError, PluginError
from .tools import bench_cli, client_cli, reload_cli
from .tools.options import Minter, split_roles
from . import workers

if TYPE_CHECKING:
    from .config import Config, LoadedConfig
    from .plugin_api import Plugin

DEFAULT_CONFIG = "websocket.yaml"


def _config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    env = os.environ.get("SWITCHBOARD_CONFIG")
    if env:
        return env
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def _load(path: str | None, overrides: dict[str, Any] | None = None) -> Any:
    from .registry import load

    return load(path, overrides=overrides)


def _print_config_error(exc: ConfigError, source: str | None) -> None:
    print(f"{source or 'configuration'}: {len(exc.errors)} error(s)", file=sys.stderr)
    for err in exc.errors:
        print(f"  error: {err}", file=sys.stderr)
    for warning in exc.warnings:
        print(f"  warning: {warning}", file=sys.stderr)


# --- serve --------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .versions import installed, problems

    outdated = problems(installed())  # dependencies older than their security fixes
    if outdated:
        for problem in outdated:
            print(f"switchboard: cannot start: {problem}", file=sys.stderr)
        return 2
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
    supervising = args.workers > 1 and args.worker is None  # the parent of --workers N
    problem = workers.refusal(args.workers, loaded.config) if supervising else None
    if problem:
        print(f"switchboard serve: {problem}", file=sys.stderr)
        return 2
    from .log import bind_context, configure_logging

    # one stderr for the workers and their parent: the log's sink writes whole lines, at most
    # 4 KiB a write, which a pipe never interleaves with another process's (server/log.py)
    configure_logging(loaded.config.logging)
    import structlog

    if args.worker is not None:  # every line of a worker says which one
        bind_context(worker=args.worker)
    log = structlog.get_logger("server.cli")
    for warning in loaded.warnings:
        log.warning("config_warning", detail=warning)
    if supervising:
        return workers.supervise(args.workers, workers.worker_command(path, args.host, args.port),
                                 loaded.config)
    from .app import create_app

    try:
        app = create_app(loaded.config, config_path=path, overrides=overrides)
    except (PluginError, ConfigError, AuthError) as exc:
        log.error("startup_failed", error=str(exc))
        print(f"switchboard: cannot start: {exc}", file=sys.stderr)
        return 2
    link = workers.ParentLink(args.worker_fd) if args.worker_fd is not None else None
    # uvloop when installed (server.event_loop: auto); the config check refused a missing one
    with event_loop.runner(loaded.config.server.event_loop) as runner:
        return runner.run(_run(app, loaded.config, log, worker=args.worker is not None,
                               link=link))


async def _run(app: Any, config: Any, log: Any, *, worker: bool = False,
               link: workers.ParentLink | None = None) -> int:
    """Serve until SIGTERM or SIGINT. A worker of ``--workers`` binds with ``SO_REUSEPORT``
    and tells its parent through ``link`` when it listens. The listening socket is
    ``http.handshake``'s (a ``TCPSite`` has no header timeout)."""
    from aiohttp import web

    from .http import handshake
    from .http.access_log import AccessLogger
    from .keys import NODE

    srv = config.server
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("aiohttp.access") if config.logging.access_log else None,
        shutdown_timeout=srv.shutdown_timeout,
        keepalive_timeout=srv.keepalive_timeout,  # aiohttp's own default is an hour
        read_bufsize=srv.read_buffer_size,
    )
    try:
        await runner.setup()  # runs the plugins' on_startup hooks
    except PluginError as exc:
        log.error("startup_failed", error=str(exc))
        print(f"switchboard: cannot start: {exc}", file=sys.stderr)
        return 2
    try:  # each connection must complete its request headers within server.handshake_timeout
        listener = await handshake.listen(runner, srv.host, srv.port, reuse_port=worker,
                                          timeout=srv.handshake_timeout, backlog=srv.backlog)
    except OSError as exc:
        log.error("listen_failed", host=srv.host, port=srv.port, error=str(exc))
        await runner.cleanup()
        return 1
    collector.settle(srv.gc_threshold, srv.gc_freeze)  # start-up is over (server/collector.py)
    # the handlers before the server_listening line: a SIGTERM sent on seeing it drains
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from .log import flush_logs
    from .reload import RELOADER

    loop.add_signal_handler(signal.SIGHUP, app[RELOADER].reload_soon)  # re-read websocket.yaml
    for address in (sock.getsockname() for sock in listener.sockets):
        host, port = address[0], address[1]
        shown = f"[{host}]" if ":" in host else host
        log.info("server_listening", url=f"ws://{shown}:{port}{srv.ws_path}", host=host, port=port,
                 node=app[NODE].node_id, event_loop=event_loop.name(loop))
    flush_logs()  # the lines are out before anyone is told (a worker's parent, a script)
    if link is not None:
        link.ready(stop.set)  # and stop when the parent is gone
    await stop.wait()
    log.info("server_stopping", shutdown_timeout=srv.shutdown_timeout)
    listener.close()  # stop accepting, as runner.cleanup() does for its sites
    try:
        async with asyncio.timeout(srv.shutdown_timeout + 1.0):
            await runner.cleanup()
    except TimeoutError:
        log.error("shutdown_timed_out")
        return 1
    log.info("server_stopped")
    return 0


# --- check-config -------------------------------------------------------------------------
def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _plugin_problems(config: Config) -> tuple[list[str], list[str]]:
    """Every plugin problem, not only the first (unknown or broken plugins, types claimed
    twice, invalid plugin sections), and a warning for each section no enabled plugin reads."""
    from .registry import available_plugins, check_classes, load_plugin_class, plugin_config

    errors: list[str] = []
    classes: list[type[Plugin[Any]]] = []
    installed = available_plugins()
    for name in config.plugins.enabled:
        try:
            classes.append(load_plugin_class(name, installed))
        except PluginError as exc:
            errors.append(str(exc))
    try:
        check_classes(classes)
    except PluginError as exc:
        errors.append(str(exc))
    for plugin_cls in classes:
        try:
            plugin_config(plugin_cls, config)
        except ConfigError as exc:
            errors += exc.errors
    names = {plugin_cls.name for plugin_cls in classes}
    warnings = []
    for name in (config.plugins.model_extra or {}).keys() - names:
        close = difflib.get_close_matches(name, sorted(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        warnings.append(f"plugins.{name}: options for a plugin that is not enabled{hint}")
    return errors, warnings


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _summary(loaded: LoadedConfig) -> list[tuple[str, str]]:
    """What an operator wants to see before deploying; never a secret."""
    from .config import DEV_SECRET

    cfg = loaded.config
    srv, auth, sec, rate = cfg.server, cfg.auth, cfg.security, cfg.rate_limit
    if auth.jwks_url:
        key = f"keys from {auth.jwks_url}"
    elif not auth.algorithm.startswith("HS"):
        key = f"public key {auth.public_key_file}"
    elif auth.secret == DEV_SECRET:
        key = "THE DEVELOPMENT SECRET (set JWT_SECRET before going live)"
    else:
        key = "a secret from " + ("JWT_SECRET" if "JWT_SECRET" in loaded.env else "the config")
    backend = "memory"
    if cfg.backend.type == "redis":  # the URL without its password
        backend = "redis at " + re.sub(r"//[^@/]*@", "//***@", cfg.backend.redis.url)
    limits = f"{srv.max_connections or 'unlimited'} connections, frames up to {srv.max_message_size} bytes, "
    if rate.enabled:
        limits += f"{rate.messages_per_minute} messages/min per connection (burst {rate.burst})"
        limits += " [dry run]" if rate.dry_run else ""
    else:
        limits += "no rate limit"
    security = (f"origin check {_on(sec.check_origin)}, IP whitelist {_on(sec.ip_whitelist_enabled)}, "
                f"IP blacklist {_on(sec.ip_blacklist_enabled)}, "
                f"{_count(len(srv.trusted_proxies), 'trusted proxy range')}")
    return [
        ("listen", f"{srv.host}:{srv.port}{srv.ws_path}"),
        ("auth", f"{auth.algorithm} with {key}" + (", dev login ON" if auth.dev_login else "")),
        ("backend", backend),
        ("plugins", ", ".join(cfg.plugins.enabled) or "(none)"),
        ("limits", limits),
        ("security", security),
        ("logging", f"{cfg.logging.level}, {cfg.logging.format} format"),
        ("env", ", ".join(loaded.env) or "(none)"),
    ]


def _check_one(path: str, strict: bool) -> bool:
    """Validate one file and print the verdict; True when it passes."""
    from .registry import load

    loaded: LoadedConfig | None = None
    try:
        loaded = load(path)
    except ConfigError as exc:
        errors, warnings = exc.errors, exc.warnings
    else:
        errors, plugin_warnings = _plugin_problems(loaded.config)
        warnings = loaded.warnings + plugin_warnings
    failed = bool(errors) or (strict and bool(warnings))
    counts = [_count(len(errors), "error")] if errors else []
    if warnings:
        counts.append(_count(len(warnings), "warning") + (" (fatal under --strict)" if strict else ""))
    print(f"{path}: {'INVALID' if failed else 'valid'}" + "".join(f", {c}" for c in counts))
    for line in [f"error: {e}" for e in errors] + [f"warning: {w}" for w in warnings]:
        print(f"  {line}")
    if loaded is not None and not failed:
        for label, text in _summary(loaded):
            print(f"  {label:<9} {text}")
    return not failed


def cmd_check_config(args: argparse.Namespace) -> int:
    files = args.files or [_config_path(None)]
    if files == [None]:
        print(f"switchboard check-config: no FILE given, $SWITCHBOARD_CONFIG unset and no "
              f"./{DEFAULT_CONFIG}", file=sys.stderr)
        return 2
    results = [_check_one(path, args.strict) for path in files]
    return 0 if all(results) else 1


# --- token --------------------------------------------------------------------------------
def _private_key(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--private-key: cannot read {path}: {exc}") from None


def cmd_token(args: argparse.Namespace) -> int:
    from .auth import Authenticator, mint_token, parse_ttl
    from .config import DEV_SECRET
    from .log import configure_logging

    def fail(message: str) -> int:
        print(f"switchboard token: {message}", file=sys.stderr)
        return 2

    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        return fail(f"--ttl: {exc}")
    path = _config_path(args.config)
    try:
        loaded = _load(path)
    except ConfigError as exc:
        _print_config_error(exc, path)
        return 2
    auth = loaded.config.auth
    configure_logging(loaded.config.logging)  # log lines go to stderr, stdout is the token only
    roles = split_roles(args.roles)
    try:
        private_key = _private_key(args.private_key)
    except ValueError as exc:
        return fail(str(exc))
    try:
        token = mint_token(auth, sub=args.sub, username=args.username, email=args.email,
                           roles=roles, ttl=ttl, private_key=private_key)
    except AuthError as exc:
        return fail(str(exc))
    if not auth.jwks_url:
        # a private key that is not the pair of auth.public_key_file makes a useless token
        try:
            asyncio.run(Authenticator(auth).verify(token))
        except AuthError as exc:
            return fail(f"the token would be refused by this config: {exc}")
    if auth.algorithm.startswith("HS") and auth.secret == DEV_SECRET:
        print("switchboard token: warning: signed with the development default secret; "
              "set JWT_SECRET or auth.secret", file=sys.stderr)
    print(token)
    return 0


# --- client and bench (server/tools/) --------------------------------------------------------
def _tool_setup(args: argparse.Namespace, prog: str) -> tuple[str, Minter, Config] | int:
    """The URL (``--url``, else the configured listen address), a function that mints tokens
    with the configured key, and the config, for ``client``, ``bench`` and ``reload``; an exit
    status on error."""
    from .auth import mint_token, parse_ttl

    path = _config_path(args.config)
    try:
        config = _load(path).config
    except ConfigError as exc:
        _print_config_error(exc, path)
        return 2
    try:
        ttl = parse_ttl(args.ttl)
        private_key = _private_key(args.private_key)
    except ValueError as exc:
        print(f"switchboard {prog}: {exc}", file=sys.stderr)
        return 2
    srv = config.server
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(srv.host, srv.host)
    url = args.url or f"ws://{f'[{host}]' if ':' in host else host}:{srv.port}{srv.ws_path}"

    def mint(sub: str, **claims: Any) -> str:
        return mint_token(config.auth, sub=sub, ttl=ttl, private_key=private_key, **claims)

    return url, mint, config


def _tool(prog: str, run: Callable[[argparse.Namespace, str, Minter], int]) -> Callable[[argparse.Namespace], int]:
    """The command of a tool: the URL and the minter from the config, then the tool's ``run``."""
    def command(args: argparse.Namespace) -> int:
        setup = _tool_setup(args, prog)
        if isinstance(setup, int):
            return setup
        return run(args, setup[0], setup[1])

    return command


def cmd_reload(args: argparse.Namespace) -> int:
    setup = _tool_setup(args, "reload")
    if isinstance(setup, int):
        return setup
    url, mint, config = setup
    roles = config.api.admin_roles
    return reload_cli.run(args, url, mint, roles[0] if roles else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="Switchboard real-time messaging server")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("-c", "--config", help=f"config file (default: $SWITCHBOARD_CONFIG or ./{DEFAULT_CONFIG} if present)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port; 0 picks a free one)")
    serve.add_argument("--workers", type=workers.positive_count, default=1, metavar="N",
                       help="N processes on the same address, each its own node, sharing "
                            "Redis (needs backend.type: redis; default 1)")
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # a worker's number
    serve.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # its link to the parent
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check-config", help="validate config files (with the environment applied, as serve would)",
        description="Exit 0 and print a summary when every FILE is valid; otherwise exit 1 and list "
                    "every error with its key path. Unknown keys are warnings.")
    check.add_argument("files", nargs="*", metavar="FILE",
                       help=f"config file(s) (default: $SWITCHBOARD_CONFIG or ./{DEFAULT_CONFIG})")
    check.add_argument("--strict", action="store_true",
                       help="fail on warnings too (unknown keys, unused WS_ variables, ...)")
    check.set_defaults(func=cmd_check_config)

    token = sub.add_parser("token", help="print a development token signed with the configured key")
    token.add_argument("-c", "--config", help=f"config file (default: $SWITCHBOARD_CONFIG or ./{DEFAULT_CONFIG} if present)")
    token.add_argument("--sub", required=True, help="user id (the 'sub' claim)")
    token.add_argument("--username")
    token.add_argument("--email")
    token.add_argument("--roles", action="append", help="comma-separated roles; repeatable")
    token.add_argument("--ttl", default="1h", help="lifetime: 90, 15m, 1h, 7d (default 1h)")
    token.add_argument("--private-key", metavar="FILE",
                       help="PEM private key for RS256/ES256 (the pair of auth.public_key_file)")
    token.set_defaults(func=cmd_token)
    client_cli.add_parser(sub, DEFAULT_CONFIG).set_defaults(func=_tool("client", client_cli.run))
    bench_cli.add_parser(sub, DEFAULT_CONFIG).set_defaults(func=_tool("bench", bench_cli.run))
    reload_cli.add_parser(sub, DEFAULT_CONFIG).set_defaults(func=cmd_reload)
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
