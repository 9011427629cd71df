"""``switchboard client`` for scripts: commands read from stdin or a file, run in order, each
waiting for its reply; every frame received printed as one JSON line on stdout, notices on
stderr."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from .client import Client
from .client_commands import CommandError, Quit


class JsonLines:
    """Script output: each frame received as one JSON line on stdout, notices on stderr."""

    def frame(self, obj: dict[str, Any], rtt_ms: float | None = None) -> None:
        self._line(obj)
        if rtt_ms is not None:
            self._line({"type": "client.rtt", "data": {"reply_to": obj.get("reply_to"),
                                                       "ms": round(rtt_ms, 3)}})

    def local(self, type_: str, data: dict[str, Any]) -> None:
        self._line({"type": type_, "data": data})

    def notice(self, text: str) -> None:
        print(f"switchboard client: {text}", file=sys.stderr, flush=True)

    @staticmethod
    def _line(obj: dict[str, Any]) -> None:
        sys.stdout.write(orjson.dumps(obj).decode() + "\n")
        sys.stdout.flush()


async def script_lines(path: str | None) -> AsyncIterator[str]:
    """Command lines from ``path``, or from stdin as they come (a pipe, a terminal)."""
    if path is not None and path != "-":
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            yield line
        return
    if Path(f"/proc/self/fd/{sys.stdin.fileno()}").resolve().is_file():  # `< file`
        for line in sys.stdin.read().splitlines():
            yield line
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while raw := await reader.readline():
            yield raw.decode("utf-8", errors="replace")
    finally:
        transport.close()


async def _first(aw: Any, gone: asyncio.Future[int]) -> Any:
    """Await ``aw`` unless the client gives up first (then return ``gone``)."""
    task = asyncio.ensure_future(aw)
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    return gone


async def run_script(client: Client, lines: AsyncIterator[str], timeout: float) -> int:
    """Run command lines in order, each one waiting for its reply (up to ``timeout``).
    Returns the exit status: 1 when a line failed or the connection was lost for good."""
    status = 0
    number = 0
    source = aiter(lines)
    while True:
        line = await _first(anext(source, None), client.gone)
        if line is client.gone or line is None:
            break
        number += 1
        try:
            reply = await _first(client.execute(line), client.gone)
            if reply is client.gone:
                break
            if reply is not None:
                await asyncio.wait_for(asyncio.shield(reply), timeout)
        except Quit:
            break
        except CommandError as exc:
            client.out.notice(f"line {number}: {exc}")
            status = 1
        except TimeoutError:
            client.out.notice(f"line {number}: no reply within {timeout:g}s: {line.strip()}")
            status = 1
        except ConnectionError as exc:
            client.out.notice(f"line {number}: no reply: {exc}")
            status = 1
    if client.gone.done():
        return 1
    if not client.connected:  # lost during the script and not back by its end
        client.out.notice("the connection was lost and is not back at the end of the script")
        return 1
    return status
