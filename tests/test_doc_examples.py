"""The shell examples of README.md and docs/ run as shown. A block marked for it (a
``<!-- doc-test -->`` line right before its opening ``sh`` fence) runs in bash against a live
``switchboard serve`` on a free port (``localhost:8000`` and ``127.0.0.1:8000`` in the text point
to it), from a directory whose ``websocket.yaml`` is that server's, with ``switchboard`` on the
PATH and the environment the examples name: ``JWT_SECRET``, ``TOKEN`` (a ``service`` user's),
``KEY`` and ``API_KEY`` (an ``api.keys`` entry), ``MAINPID`` (the server's process id).

Two forms: a transcript, where ``$ `` starts a command (continued by a trailing backslash) and
the lines after it are what it prints; or a script, where each line is a command and the
``# ...`` lines right after one are what it prints. Every command must exit 0, and each line it
is shown to print must come out, in order (other lines may come between: headers, warnings);
spaces are not compared and ``...`` stands for anything."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import SECRET, make_token
from tests.proc import start_server
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- doc-test -->"
KEY = "doc-" + "k" * 32
TIMEOUT = 60.0


@dataclass
class Command:
    text: str
    shows: list[str] = field(default_factory=list)


@dataclass
class Block:
    where: str
    commands: list[Command]


def _commands(lines: list[str]) -> list[Command]:
    transcript = any(line.startswith("$ ") for line in lines)
    commands: list[Command] = []
    continued = False
    for line in lines:
        if continued:
            commands[-1].text += "\n" + line
        elif transcript and line.startswith("$ "):
            commands.append(Command(line[2:]))
        elif transcript:
            if commands and line.strip():
                commands[-1].shows.append(line)
            continue
        elif line.startswith("# ") and commands:
            commands[-1].shows.append(line[2:])
            continue
        elif line.strip() and not line.startswith("#"):
            commands.append(Command(line))
        else:
            continue
        continued = line.endswith("\\")
    return commands


def marked_blocks() -> list[Block]:
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() != MARK:
                continue
            assert lines[i + 1].strip() == "```sh", f"{path.name}:{i + 1}: {MARK} must precede an sh block"
            end = lines.index("```", i + 2)
            blocks.append(Block(f"{path.relative_to(ROOT)}:{i + 2}", _commands(lines[i + 2:end])))
    return blocks


BLOCKS = marked_blocks()


def test_the_examples_a_new_user_meets_are_marked() -> None:
    where = {b.where.split(":")[0] for b in BLOCKS}
    assert {"docs/authentication.md", "docs/api.md", "docs/operations.md"} <= where


def _pattern(shown: str) -> re.Pattern[str]:
    text = re.sub(r"\s+", "", shown)
    return re.compile(".*".join(re.escape(part) for part in text.split("...")))


def shows_in_order(shown: list[str], output: str) -> list[str]:
    """The shown lines that do not come out, in order (none: all do)."""
    lines = [re.sub(r"\s+", "", line) for line in output.splitlines()]
    at = 0
    for expected in shown:
        pattern = _pattern(expected)
        while at < len(lines) and not pattern.fullmatch(lines[at]):
            at += 1
        if at == len(lines):
            return [expected]
        at += 1
    return []


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
async def test_a_marked_shell_example_runs_as_shown(tmp_path: Path, block: Block) -> None:
    port = free_port()
    config = (f"server:\n  port: {port}\napi:\n  keys: [{KEY}]\n"
              "rooms:\n  default_rooms: [general]\n")
    server = await start_server(tmp_path, config, args=("--port", str(port)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    env.update({"JWT_SECRET": SECRET, "KEY": KEY, "API_KEY": KEY, "MAINPID": str(server.proc.pid),
                "TOKEN": make_token("deployer", username="deployer", roles=["service"]),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": str(ROOT)})
    env.pop("SWITCHBOARD_CONFIG", None)
    script = ["set -o pipefail"]
    for n, command in enumerate(block.commands):
        text = command.text.replace("localhost:8000", f"127.0.0.1:{port}")
        text = text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        script += [f"echo '@@@ {n}'", f"{{\n{text}\n}} 2>&1", f"echo; echo \"@@@ rc $?\""]
    try:
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", "\n".join(script), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        await server.kill()
    parts = re.split(r"^@@@ (\d+)$", out.decode(), flags=re.MULTILINE)[1:]
    assert len(parts) == 2 * len(block.commands), out.decode()
    for command, output in zip(block.commands, parts[1::2]):
        body, _, rc = output.rpartition("@@@ rc ")
        assert rc.strip() == "0", f"{block.where}: `{command.text}` exited {rc.strip()}:\n{body}"
        missing = shows_in_order(command.shows, body)
        assert not missing, f"{block.where}: `{command.text}` did not print {missing[0]!r}:\n{body}"
