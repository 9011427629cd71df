"""The server side of ``switchboard bench``, when it runs on this machine: the process
listening on the URL's port, its RSS over a test and its CPU time over a phase (from /proc)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from yarl import URL

from .bench_model import Results


def listener_pid(url: str) -> int | None:
    """The process listening on ``url``'s port when the host is this machine's loopback."""
    parsed = URL(url)
    if parsed.host not in ("127.0.0.1", "localhost", "::1") or parsed.port is None:
        return None
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == parsed.port:  # LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time, the generator's CPU time and the server's over one phase."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.started, self.cpu = time.perf_counter(), time.process_time()
        self.server_cpu = cpu_seconds(server_pid) if server_pid else None

    def wall(self) -> float:
        return time.perf_counter() - self.started

    def stop(self, res: Results) -> None:
        res.phase, res.cpu = self.wall(), time.process_time() - self.cpu
        end = cpu_seconds(self.server_pid) if self.server_pid else None
        if end is not None and self.server_cpu is not None:
            res.server_cpu = end - self.server_cpu


class RssSampler:
    """The server's RSS at the start, at its peak (sampled every 0.2 s) and at the end."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.pid is not None:
            self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        assert self.pid is not None
        while (value := rss_mib(self.pid)) is not None:
            self.samples.append(value)
            await asyncio.sleep(0.2)

    async def stop(self) -> dict[str, float] | None:
        if self._task is None:
            return None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        end = rss_mib(self.pid) if self.pid is not None else None
        if end is not None:
            self.samples.append(end)
        if not self.samples:
            return None
        return {"start": round(self.samples[0], 1), "peak": round(max(self.samples), 1),
                "end": round(self.samples[-1], 1)}
