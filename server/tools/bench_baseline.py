"""The yardstick for Switchboard's fan-out: a minimal raw aiohttp WebSocket server, as the
aiohttp documentation writes a broadcast, speaking just enough of the protocol for
``switchboard bench --baseline``: a token in ``?token=`` or ``Authorization`` (decoded for its
``sub``, NOT verified), ``?rooms=``, ``connected``, ``join``/``joined``, ``leave``/``left``,
``message`` to a room (encoded once, then written to each other member in turn, then ``ack``)
and ``ping``/``pong``. No auth check, limits, plugins, history or per-client queue.

    python -m server.tools.bench_baseline [--host 127.0.0.1] [--port 0]

prints ``{"url": "ws://127.0.0.1:PORT/ws"}`` once listening and runs until SIGTERM or SIGINT.
Never expose it: anyone can connect as anyone.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import jwt
import orjson
from aiohttp import WSMsgType, web

from .. import event_loop
from ..protocol import encode, frame

ROOMS: web.AppKey[dict[str, dict[int, web.WebSocketResponse]]] = web.AppKey("rooms", dict)


def _user(request: web.Request) -> dict[str, str]:
    token = request.query.get("token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise web.HTTPUnauthorized(text='{"error": {"code": "UNAUTHORIZED", "message": "no token"}}',
                                   content_type="application/json") from None
    sub = str(claims.get("sub", ""))
    return {"id": sub, "username": str(claims.get("username") or sub)}


async def handler(request: web.Request) -> web.WebSocketResponse:
    user = _user(request)
    rooms = request.app[ROOMS]
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    mine: set[str] = {r for r in request.query.get("rooms", "").split(",") if r}
    for room in mine:
        rooms.setdefault(room, {})[id(ws)] = ws
    await ws.send_frame(encode(frame("connected", {"user": user, "rooms": sorted(mine)})), WSMsgType.TEXT)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await _handle(ws, user, orjson.loads(msg.data), rooms, mine)
    finally:
        for room in mine:
            rooms.get(room, {}).pop(id(ws), None)
    return ws


async def _handle(ws: web.WebSocketResponse, user: dict[str, str], obj: dict[str, Any],
                  rooms: dict[str, dict[int, web.WebSocketResponse]], mine: set[str]) -> None:
    type_, room, fid = obj.get("type"), obj.get("room"), obj.get("id")
    if type_ == "message" and room in mine:
        payload = encode(frame("message", obj.get("data"), room=room, sender=user))
        for member in tuple(rooms[room].values()):
            if member is not ws:
                await member.send_frame(payload, WSMsgType.TEXT)
        await ws.send_frame(encode(frame("ack", {}, reply_to=fid)), WSMsgType.TEXT)
    elif type_ == "join" and isinstance(room, str):
        mine.add(room)
        rooms.setdefault(room, {})[id(ws)] = ws
        await ws.send_frame(encode(frame("joined", {"room": room, "members_count": len(rooms[room])},
                                         room=room, reply_to=fid)), WSMsgType.TEXT)
    elif type_ == "leave" and room in mine:
        mine.discard(room)
        rooms[room].pop(id(ws), None)
        await ws.send_frame(encode(frame("left", {"room": room}, room=room, reply_to=fid)), WSMsgType.TEXT)
    elif type_ == "ping":
        await ws.send_frame(encode(frame("pong", {}, reply_to=fid)), WSMsgType.TEXT)
    else:
        error = {"code": "UNKNOWN_MESSAGE_TYPE", "message": f"the baseline does not handle {type_!r}"}
        await ws.send_frame(encode(frame("error", error, reply_to=fid)), WSMsgType.TEXT)


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app[ROOMS] = {}
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    print(orjson.dumps({"url": f"ws://{bound[0]}:{bound[1]}/ws"}).decode(), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m server.tools.bench_baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    with event_loop.runner(args.event_loop) as runner:  # the loop Switchboard is measured on
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
