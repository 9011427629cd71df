"""``switchboard reload``: have the running server re-read its config file, as SIGHUP does,
through ``POST /api/config/reload`` (a console script's process is ``python``, so ``pidof
switchboard`` finds nothing to signal). It authenticates with ``--api-key`` (or
``$SWITCHBOARD_API_KEY``), else with a short-lived token of an admin role minted with the
configured key (``server/cli.py`` gives the minter). Prints what was applied and what needs a
restart; exit 1 when the server refused the file (every error with its key path) or could not
be reached, 2 for bad options."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from .options import Minter, token_options

_TIMEOUT = 10.0


def add_parser(sub: Any, default_config: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "reload", help="make the running server re-read its config file (as SIGHUP does)",
        description="POST /api/config/reload on the server at the configured listen address "
                    "(or --url). Exit 0 when the file was applied, 1 when it was refused or the "
                    "server could not be reached.")
    token_options(parser, default_config)
    parser.set_defaults(ttl="60")  # the minted token is used at once
    parser.add_argument("--url", help="the server's address, http://host:port (default: the "
                                      "configured listen address)")
    parser.add_argument("--api-key", default=os.environ.get("SWITCHBOARD_API_KEY"),
                        help="an api.keys entry (default $SWITCHBOARD_API_KEY); without one, a "
                             "token of an admin role is minted with the configured key")
    return parser


def endpoint(url: str) -> str:
    """``http(s)://host:port/api/config/reload`` from a base or WebSocket URL."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/api/config/reload", "", ""))


async def _post(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.post(url, headers=headers) as resp:
        body = await resp.read()
        try:
            return resp.status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return resp.status, body.decode(errors="replace")


def run(args: argparse.Namespace, url: str, mint: Minter, admin_role: str | None) -> int:
    target = endpoint(args.url or url)
    if args.api_key:
        headers = {"X-API-Key": args.api_key}
    elif admin_role is not None:
        headers = {"Authorization": f"Bearer {mint('switchboard-reload', roles=[admin_role])}"}
    else:
        print("switchboard reload: api.admin_roles is empty: give --api-key", file=sys.stderr)
        return 2
    try:
        status, body = asyncio.run(_post(target, headers))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"switchboard reload: no answer from {target}: {exc or type(exc).__name__}",
              file=sys.stderr)
        return 1
    if status == 200 and isinstance(body, dict):
        print(orjson.dumps(body).decode())
        for key in body.get("restart_required") or ():
            print(f"switchboard reload: {key} changed: it takes effect at the next start",
                  file=sys.stderr)
        return 0
    error = body.get("error", {}) if isinstance(body, dict) else {}
    print(f"switchboard reload: refused ({status} {error.get('code', '')}): "
          f"{error.get('message', body)}", file=sys.stderr)
    for problem in error.get("errors") or ():
        print(f"  {problem}", file=sys.stderr)
    return 1
