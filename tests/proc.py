"""Run the real ``switchboard serve`` in a subprocess on a free port and read its JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.conftest import SECRET

START_TIMEOUT = 20.0


class ServerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.port = 0
        self._listening = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if not self._listening.done() and '"server_listening"' in line:
                self._listening.set_result(json.loads(line)["port"])
        if not self._listening.done():
            self._listening.set_exception(RuntimeError("server exited:\n" + "\n".join(self.lines)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    async def wait_listening(self) -> None:
        self.port = await asyncio.wait_for(asyncio.shield(self._listening), START_TIMEOUT)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit (after a signal already sent); its exit code."""
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


async def start_server(tmp_path: Path, config_text: str = "", *, env: dict[str, str] | None = None,
                       args: tuple[str, ...] = ()) -> ServerProcess:
    cfg = tmp_path / "websocket.yaml"
    cfg.write_text(config_text)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    full_env.update({"JWT_SECRET": SECRET, "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", "-c", str(cfg), "--port", "0", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=full_env, cwd=str(tmp_path),
    )
    server = ServerProcess(proc)
    try:
        await server.wait_listening()
    except BaseException:
        await server.kill()
        raise
    return server
