"""What a private message costs a node, end to end: one user sends ``--messages`` private
messages to another who is online, over real WebSockets, at most ``--window`` unacknowledged
at a time; prints the messages per second and the server process's CPU time per message.

Run it against two checkouts to see what a change costs (docs/benchmarks.md, "Private
messages"): ``--root`` is the checkout whose ``python -m server serve`` is started (on a free
port, rate limits off, log level warning); ``--redis URL`` uses the Redis backend (a
redis-server of your own: never a production one, nothing is cleaned up), else the memory
backend. Each run starts its own server; run a few and compare the spread.

    .venv/bin/python benchmarks/private_messages.py --root . --messages 20000
    .venv/bin/python benchmarks/private_messages.py --root /tmp/old --redis redis://127.0.0.1:17379/0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import jwt
import orjson

SECRET = "private-messages-benchmark-" + "k" * 32


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "username": sub, "exp": int(time.time()) + 3600}, SECRET,
                      algorithm="HS256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User and system CPU of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_healthy(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            async with http.get(f"{url}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)  # polling a process that gives no other sign it listens
    raise SystemExit("the server did not come up in 30 s")


async def run(root: Path, messages: int, window: int, redis_url: str | None) -> None:
    port = free_port()
    backend = (f"backend:\n  type: redis\n  redis:\n    url: {redis_url}\n" if redis_url else "")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as cfg:
        cfg.write(f"{backend}server:\n  port: {port}\nrate_limit:\n  enabled: false\n"
                  "logging:\n  level: warning\n")
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "-c", cfg.name],
                            cwd=root, env={**os.environ, "JWT_SECRET": SECRET},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, url, proc)
            alice = await http.ws_connect(f"ws://127.0.0.1:{port}/ws?token={token('alice')}")
            bob = await http.ws_connect(f"ws://127.0.0.1:{port}/ws?token={token('bob')}")
            await alice.receive()
            await bob.receive()  # both connected

            async def receive_all() -> None:
                got = 0
                while got < messages:
                    got += orjson.loads((await bob.receive()).data)["type"] == "message"

            receiving = asyncio.create_task(receive_all())
            cpu, started = cpu_seconds(proc.pid), time.perf_counter()
            sent = acked = 0
            while acked < messages:
                while sent < messages and sent - acked < window:
                    await alice.send_str(orjson.dumps({
                        "type": "message", "id": str(sent), "to": "bob",
                        "data": {"content": "x" * 64}}).decode())
                    sent += 1
                reply = orjson.loads((await alice.receive()).data)
                if reply["type"] == "error":
                    raise SystemExit(f"the server refused a message: {reply['data']}")
                acked += reply["type"] == "ack"
            await receiving
            elapsed = time.perf_counter() - started
            used = cpu_seconds(proc.pid) - cpu
            print(f"{root} ({'redis' if redis_url else 'memory'}): {messages / elapsed:,.0f} "
                  f"messages/s, server CPU {used / messages * 1e6:.0f} us a message")
    finally:
        proc.terminate()
        proc.wait()
        os.unlink(cfg.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout to serve")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--window", type=int, default=64, help="most unacknowledged messages")
    parser.add_argument("--redis", help="a Redis URL (your own, scratch): the Redis backend")
    args = parser.parse_args()
    asyncio.run(run(args.root.resolve(), args.messages, args.window, args.redis))


if __name__ == "__main__":
    main()
