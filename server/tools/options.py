"""Options the tools share with the rest of ``switchboard``: the token options of ``client``
and ``bench`` (read by ``server/cli.py``, which loads the config and mints the tokens) and
``--roles``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

#: ``mint(sub, **claims)``: a token signed with the configured key (given by ``server/cli.py``)
Minter = Callable[..., str]


def token_options(parser: argparse.ArgumentParser, default_config: str) -> None:
    parser.add_argument("-c", "--config", help="config whose key mints the tokens and whose listen "
                        f"address is the default URL (default: $SWITCHBOARD_CONFIG or ./{default_config})")
    parser.add_argument("--ttl", default="1h", help="lifetime of minted tokens (default 1h)")
    parser.add_argument("--private-key", metavar="FILE", help="PEM private key for RS256/ES256")


def split_roles(values: list[str] | None) -> list[str]:
    """``--roles a,b --roles c`` as ``[a, b, c]``."""
    return [r.strip() for part in (values or []) for r in part.split(",") if r.strip()]
