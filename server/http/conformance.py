"""``GET /conformance/echo``: a WebSocket that echoes every message, for the Autobahn
conformance suite (tests/security/test_conformance.py). Mounted only with
``server.conformance_echo: true`` (never in production). No authentication and no frame
path: it exercises the same socket settings (compression, frame size cap) and the same
close and masking rules as the real endpoint, ``ws.py``."""

from __future__ import annotations

from aiohttp import WSMsgType, web

from ..keys import NODE
from .wire import MaskGuard, answer_close

PATH = "/conformance/echo"


async def echo_handler(request: web.Request) -> web.StreamResponse:
    cfg = request.app[NODE].config.server
    ws = web.WebSocketResponse(max_msg_size=cfg.max_message_size, compress=cfg.compression,
                               autoping=False, autoclose=False)
    await ws.prepare(request)
    MaskGuard.install(request)
    try:
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                await answer_close(ws, msg)
                return ws
            elif msg.type is not WSMsgType.PONG:
                return ws
    except ConnectionError:  # the socket closed under a send (e.g. an unmasked frame refused)
        return ws


def setup(app: web.Application) -> None:
    app.router.add_get(PATH, echo_handler)
