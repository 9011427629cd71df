"""``switchboard client``: its options, and the entry that picks the interactive prompt
(``client_tui.py``) or the script runner (``client_script.py``) and runs :class:`Client` under it.

``server/cli.py`` registers :func:`add_parser`, loads the config and calls :func:`run` with the
URL and a token minter; the client machinery is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from .options import Minter, split_roles, token_options


def add_parser(sub: Any, default_config: str) -> argparse.ArgumentParser:
    client: argparse.ArgumentParser = sub.add_parser(
        "client", help="a WebSocket client: interactive on a terminal, JSON lines for scripts",
        description="Interactive (line editing, history, coloured frames) when stdin and stdout "
                    "are a terminal; otherwise, or with --script, it runs the commands read from "
                    "stdin or FILE, each waiting for its reply, and prints every frame received "
                    "as one JSON line. Type `help` for the commands. Exit status: 0, 1 when the "
                    "connection or a command failed, 2 for bad options, 130 after Ctrl-C.")
    client.add_argument("--url", help="ws://host:port/ws (default: the configured listen address)")
    who = client.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", help="a JWT to connect with")
    who.add_argument("--username", help="mint a token for this user with the configured key")
    client.add_argument("--sub", help="user id of the minted token (default: --username)")
    client.add_argument("--email", help="email claim of the minted token")
    client.add_argument("--roles", action="append", help="roles of the minted token, comma-separated; repeatable")
    token_options(client, default_config)
    client.add_argument("--auto-ping", type=float, metavar="SECONDS",
                        help="ping every SECONDS; an unanswered ping means reconnect")
    client.add_argument("--script", metavar="FILE", help="run the commands in FILE ('-' for stdin) and exit")
    client.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="scripts: how long a command waits for its reply (default 5)")
    client.add_argument("--max-retries", type=int, default=10, metavar="N",
                        help="reconnect attempts before giving up (default 10)")
    client.add_argument("--history-file", metavar="FILE", help="line history (default ~/.switchboard_history)")
    client.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                        help="colour the frames (default: on, unless NO_COLOR is set)")
    return client


def run(args: argparse.Namespace, url: str, mint: Minter) -> int:
    """The command, once ``server/cli.py`` has the URL and the minter: the exit status."""
    from ..errors import AuthError

    if args.token:
        def token() -> str:
            return str(args.token)
    else:
        def token() -> str:
            return mint(args.sub or args.username, username=args.username, email=args.email,
                        roles=split_roles(args.roles))
        try:
            token()
        except AuthError as exc:
            print(f"switchboard client: cannot mint a token: {exc}", file=sys.stderr)
            return 2
    interactive = args.script is None and sys.stdin.isatty() and sys.stdout.isatty()
    color = args.color if args.color is not None else not os.environ.get("NO_COLOR")  # no-color.org
    try:
        return asyncio.run(main(
            url, token, fresh_tokens=not args.token, interactive=interactive, script=args.script,
            auto_ping=args.auto_ping, timeout=args.timeout, max_retries=args.max_retries,
            history_file=args.history_file, color=color))
    except KeyboardInterrupt:
        return 130


async def main(url: str, token: Callable[[], str], *, fresh_tokens: bool, interactive: bool,
               script: str | None = None, auto_ping: float | None = None, timeout: float = 5.0,
               max_retries: int = 10, history_file: str | None = None,
               color: bool = True) -> int:
    """``switchboard client``: 0 on success, 1 when the connection failed or a script line
    did, 130 after Ctrl-C."""
    from .client import Client, ConnectError, Output
    from .client_script import JsonLines, run_script, script_lines

    if interactive:
        from .client_tui import Terminal, run_interactive
        out: Output = Terminal(color)
    else:
        out = JsonLines()
    client = Client(url, token, out, fresh_tokens=fresh_tokens, auto_ping=auto_ping,
                    max_retries=max_retries)
    try:
        await client.start()
    except ConnectError as exc:
        print(f"switchboard client: {exc}", file=sys.stderr)
        return 1
    try:
        if interactive:
            return await run_interactive(client, history_file)
        return await run_script(client, script_lines(script), timeout)
    finally:
        await client.close()
