"""The shell examples of README.md and docs/ run as shown. A block marked for it (a
``<!-- doc-test -->`` line right before its opening ``sh`` fence) runs in bash against a live
``switchboard serve`` on a free port (``localhost:8000`` and ``127.0.0.1:8000`` in the text point
to it), from a directory whose ``websocket.yaml`` is that server's, with ``switchboard`` on the
PATH and the environment the examples name: ``JWT_SECRET``, ``TOKEN`` (a ``service`` user's),
``KEY`` and ``API_KEY`` (an ``api.keys`` entry), ``MAINPID`` (the server's process id); its
``.venv`` is the environment running the tests (README's commands call ``.venv/bin/...``).

A block marked ``<!-- doc-test: tty -->`` runs each command in a terminal of its own
(``script``), for tools that act differently without one (wscat sends its ``-x`` frame only
then); their colours, cursor moves and ``> `` prompts are left out of what they print. The npm
tools of tests/js (wscat) are on the PATH.

Two forms: a transcript, where ``$ `` starts a command (continued by a trailing backslash) and
the lines after it are what it prints; or a script, where each line is a command and the
``# ...`` lines right after one are what it prints. Every command must exit 0, and each line it
is shown to print must come out, in order (other lines may come between: headers, warnings);
spaces are not compared and ``...`` stands for anything.

Left unmarked on purpose, each run some other way: README's run command (the last test here
starts it as written, from the checkout), other commands that start a server and keep it
running (docs/deploy.md, the ``--workers`` and bench servers; ``serve`` and its workers are
tests/test_serve.py's and test_workers.py's), README's test command (it is CI's: .ci/run), examples naming the reader's own hosts
(``chat.example.com``, ``redis.internal``), the interactive client (tests/test_client.py drives
it), the benchmarks, which take minutes each (``switchboard bench`` is tests/test_bench*.py's),
the example plugin's install and tests (tests/run.sh installs it and the suite runs them) and
one-off secrets (``openssl rand``)."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import SECRET, make_token
from tests.proc import ServerProcess, start_server
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"<!-- doc-test(: tty)? -->")
#: what a terminal program writes besides its text: colours and cursor moves, carriage returns
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
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
    tty: bool = False


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
            mark = MARK.fullmatch(line.strip())
            if mark is None:
                continue
            assert lines[i + 1].strip() == "```sh", f"{path.name}:{i + 1}: a doc-test mark must precede an sh block"
            end = lines.index("```", i + 2)
            blocks.append(Block(f"{path.relative_to(ROOT)}:{i + 2}", _commands(lines[i + 2:end]),
                                tty=mark.group(1) is not None))
    return blocks


BLOCKS = marked_blocks()


def test_the_examples_a_new_user_meets_are_marked() -> None:
    where = {b.where.split(":")[0] for b in BLOCKS}
    assert {"README.md", "docs/authentication.md", "docs/api.md", "docs/operations.md"} <= where


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
    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    env.update({"JWT_SECRET": SECRET, "KEY": KEY, "API_KEY": KEY, "MAINPID": str(server.proc.pid),
                "TOKEN": make_token("deployer", username="deployer", roles=["service"]),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                         str(ROOT / "tests" / "js" / "node_modules" / ".bin"),
                                         env.get("PATH", "")]),
                "SHELL": "/bin/bash",
                "PYTHONPATH": str(ROOT)})
    env.pop("SWITCHBOARD_CONFIG", None)
    script = ["set -o pipefail"]
    for n, command in enumerate(block.commands):
        text = command.text.replace("localhost:8000", f"127.0.0.1:{port}")
        text = text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        if block.tty:  # in a terminal of its own, which ends with the command (its exit status)
            text = f"script -qec {shlex.quote(text)} /dev/null < /dev/null"
        script += [f"echo '@@@ {n}'", f"{{\n{text}\n}} 2>&1", f"echo; echo \"@@@ rc $?\""]
    try:
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", "\n".join(script), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        await server.kill()
    text = out.decode()
    if block.tty:
        text = re.sub(r"^(> )+", "", ANSI.sub("", text), flags=re.MULTILINE)
    parts = re.split(r"^@@@ (\d+)$", text, flags=re.MULTILINE)[1:]
    assert len(parts) == 2 * len(block.commands), out.decode()
    for command, output in zip(block.commands, parts[1::2]):
        body, _, rc = output.rpartition("@@@ rc ")
        assert rc.strip() == "0", f"{block.where}: `{command.text}` exited {rc.strip()}:\n{body}"
        missing = shows_in_order(command.shows, body)
        assert not missing, f"{block.where}: `{command.text}` did not print {missing[0]!r}:\n{body}"


def readme_run_command() -> str:
    """The command of README's first block that starts the server (after the install)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_line = readme.split("```sh\n", 1)[1].splitlines()[0]
    return first_line.split("  #")[0].split("&&")[-1].strip()


async def test_the_readmes_run_command_serves_the_demo_with_nothing_else_running() -> None:
    """README's first command, as written, from the checkout (``.venv`` is the environment
    running the tests): the server comes up on the memory backend with dev login; only the
    port is a free one (``WS_SERVER_PORT``) instead of 8000, and the log lines are JSON
    (``WS_LOGGING_FORMAT``) for the test to read."""
    command = readme_run_command()
    assert command.startswith(".venv/bin/switchboard serve"), command
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        command = command.replace(".venv/", f"{sys.prefix}/", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_") and k != "JWT_SECRET"}
    env.update({"WS_SERVER_PORT": "0", "WS_LOGGING_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    env.pop("SWITCHBOARD_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f"exec {command}", cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    server = ServerProcess(proc)
    try:
        await server.wait_listening()
        started = next(e for e in server.events() if e.get("event") == "server_started")
        assert started["backend"] == "memory"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
            async with http.get(f"{server.url}/") as resp:
                assert resp.status == 200 and "Switchboard" in await resp.text()
            async with http.post(f"{server.url}/api/dev/token", json={"username": "visitor"}) as resp:
                assert resp.status == 200 and (await resp.json())["token"]
    finally:
        await server.kill()
