"""Typed application state keys (``web.AppKey``); the upgrade's request keys are in
``http/guards.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .registry import Registry
    from .node import Node

NODE: web.AppKey["Node"] = web.AppKey("switchboard_node")
REGISTRY: web.AppKey["Registry"] = web.AppKey("switchboard_registry")
PIPELINE: web.AppKey["Pipeline"] = web.AppKey("switchboard_pipeline")
#: the WebSocket endpoint's route name: the middlewares hand its requests straight through, as it
#: answers for itself (``ws.py``)
WS_ROUTE = "switchboard_websocket"
