"""The demo page at ``GET /`` (aiohttp-jinja2, template ``static/index.html``) and the files
of ``static/`` under ``/static/``, among them the browser client ``switchboard.js``.

The page is given what it needs from the config, read at each request (so a config reload
shows): the WebSocket path, relative like every other URL of the page, so it also works behind
a reverse proxy that serves it under a path prefix; the features the enabled plugins handle
(the page shows nothing else); the limits; whether dev login is on; the roles of operators.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .. import __version__
from ..keys import REGISTRY, NODE
from .openapi import describe

def _static_dir() -> Path:
    """``static/`` beside the packages (a checkout or an editable install), else where a wheel
    installs it (``<prefix>/share/switchboard/static``, setup.cfg ``data_files``)."""
    here = Path(__file__).resolve().parents[2] / "static"
    if here.is_dir():
        return here
    return Path(sys.prefix) / "share" / "switchboard" / "static"


STATIC_DIR = _static_dir()

#: page feature -> the message type the page sends for it (static/demo-*.js): shown when a
#: plugin handles that type
FEATURE_TYPES = {
    "history": "history",
    "private": "inbox.ack",
    "typing": "typing",
    "presence": "presence",
    "notifications": "notification.read",
}

#: everything the page loads comes from this server; no inline script runs
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def setup(app: web.Application) -> None:
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(STATIC_DIR),
                         autoescape=jinja2.select_autoescape(["html"]))
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR)


def _settings(handlers: dict[str, Any], type_: str) -> Mapping[str, Any]:
    """The client settings of the plugin that handles ``type_`` (none when no plugin does)."""
    handler = handlers.get(type_)
    return handler.plugin.client_settings() if handler is not None else {}


def page_config(request: web.Request) -> dict[str, Any]:
    """What the page knows about this server (rendered into it as JSON): its features are the
    message types the registry has a handler for, with the handling plugins' client settings."""
    cfg = request.app[NODE].config
    handlers = request.app[REGISTRY].handlers
    features = {name: type_ in handlers for name, type_ in FEATURE_TYPES.items()}
    features["presence"] = features["presence"] and _settings(handlers, "presence").get("enabled", True)
    return {
        "ws_path": cfg.server.ws_path.lstrip("/"),
        "dev_login": cfg.auth.dev_login,
        "features": features,
        "limits": {
            "max_message_length": cfg.messages.max_message_length,
            "max_rooms_per_user": cfg.rooms.max_rooms_per_user,
            "allow_client_create": cfg.rooms.allow_client_create,
            "typing_timeout": _settings(handlers, "typing").get("timeout", 5.0),
        },
        "default_rooms": list(cfg.rooms.default_rooms),
        "roles": {"admin": list(cfg.api.admin_roles), "notify": list(cfg.permissions.notify)},
        "version": __version__,
    }


@describe("The demo page", content_type="text/html", tags=("pages",))
async def index(request: web.Request) -> web.Response:
    page = page_config(request)
    response = aiohttp_jinja2.render_template("index.html", request, {"page": page, **page})
    response.headers.update(_HEADERS)
    return response
