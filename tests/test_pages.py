"""The demo page over HTTP (``GET /``, ``/static/``): what the server tells it from its config,
that it shows only what is enabled and loads nothing from elsewhere; and the startup refusal of
dev login in a production config. tests/e2e/ drives the page in a real browser."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.config import DEV_SECRET, load_config
from server.errors import ConfigError
from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parent.parent
ALL_PLUGINS = ["chat", "plugins.typing_indicator:TypingPlugin", "plugins.presence:PresencePlugin",
               "plugins.notification:NotificationPlugin"]
LONG_SECRET = "p" * 48
DEV_LOGIN_IN_PRODUCTION = ("auth.dev_login: must be false when server.environment is production: "
                           "POST /api/dev/token would give a token to anyone who asks")
DEV_SECRET_IN_PRODUCTION = ("auth.secret: is the public development default, refused when "
                            "server.environment is production: set the JWT_SECRET environment variable")


async def get_page(client: TestClient[Any, Any]) -> tuple[str, dict[str, Any]]:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    found = re.search(r'<script type="application/json" id="sb-config">(.*?)</script>', html, re.DOTALL)
    assert found, html
    return html, json.loads(found.group(1))


def has_id(html: str, element_id: str) -> bool:
    return f'id="{element_id}"' in html


async def test_the_page_gets_the_ws_path_features_and_limits_from_the_config(make_server: Any) -> None:
    client = await make_server({
        "server": {"ws_path": "/socket/ws"}, "plugins": {"enabled": ALL_PLUGINS},
        "messages": {"max_message_length": 500}, "rooms": {"allow_client_create": False,
                                                          "default_rooms": ["lobby"]},
        "typing": {"timeout": 7}, "auth": {"dev_login": True},
        "permissions": {"notify": ["ops"]},
    })
    html, page = await get_page(client)
    assert page == {
        "ws_path": "socket/ws",  # relative to the page, so a proxy path prefix is kept
        "dev_login": True,
        "features": {"history": True, "private": True, "typing": True, "presence": True,
                     "notifications": True},
        "limits": {"max_message_length": 500, "max_rooms_per_user": 50,
                   "allow_client_create": False, "typing_timeout": 7.0},
        "default_rooms": ["lobby"],
        "roles": {"admin": ["admin"], "notify": ["ops"]},
        "version": page["version"],
    }
    assert 'maxlength="500"' in html
    assert "Join a room</label>" in html  # not "Join or create": clients cannot create rooms
    for element in ("typing", "people", "status-select", "alert-list", "notify-form", "dm-list",
                    "login-form"):
        assert has_id(html, element), element


async def test_the_page_shows_only_what_is_enabled(make_server: Any) -> None:
    html, page = await get_page(await make_server())  # chat only
    assert page["features"] == {"history": True, "private": True, "typing": False,
                                "presence": False, "notifications": False}
    for element in ("typing", "people", "status-select", "alert-list", "notify-form"):
        assert not has_id(html, element), element
    assert has_id(html, "dm-list") and has_id(html, "composer-input")
    html, page = await get_page(await make_server({"plugins": {"enabled": ALL_PLUGINS},
                                                   "presence": {"enabled": False}}))
    assert page["features"]["presence"] is False and not has_id(html, "people")
    assert page["features"]["typing"] is True and has_id(html, "typing")


async def test_without_dev_login_the_page_shows_how_to_get_a_token(make_server: Any) -> None:
    html, page = await get_page(await make_server())
    assert page["dev_login"] is False
    assert not has_id(html, "login-form")
    assert has_id(html, "token-form")
    assert "switchboard token --sub alice --username alice --ttl 8h" in html
    html, _ = await get_page(await make_server({"auth": {"dev_login": True}}))
    assert has_id(html, "login-form") and has_id(html, "token-form")
    assert "switchboard token" not in html


async def test_the_page_loads_only_its_own_files_by_relative_urls(make_server: Any) -> None:
    client = await make_server()
    resp = await client.get("/")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    html = await resp.text()
    urls = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert urls and all(u.startswith(("static/", "#")) for u in urls), urls
    for path in sorted((ROOT / "static").iterdir()):
        text = path.read_text(encoding="utf-8")
        # the SVG namespace (favicon.svg's xmlns, the operator charts' createElementNS) names,
        # it does not load
        names_a_namespace = re.sub(r'(?:xmlns=)?"http://www\.w3\.org/2000/svg"', "", text)
        assert not re.search(r"https?://|url\(|@import|fetch\([\"'`]/", names_a_namespace), path.name
        if path.suffix in (".js", ".css", ".svg") and path.name != "index.html":
            served = await client.get(f"/static/{path.name}")
            assert served.status == 200, path.name
            assert await served.text() == text
    js = await client.get("/static/switchboard.js")
    assert js.content_type in ("application/javascript", "text/javascript")
    assert (await client.get("/static/demo.css")).content_type == "text/css"


async def test_static_serves_nothing_outside_its_folder(make_server: Any) -> None:
    client = await make_server()
    for path in ("/static/../server/config.py", "/static/%2e%2e/server/config.py",
                 "/static/..%2fserver%2fconfig.py", "/static/", "/static/missing.js"):
        resp = await client.get(path)
        assert resp.status in (403, 404), path
        assert "DEV_SECRET" not in await resp.text()


# --- dev login is refused in production ------------------------------------------------------
def refused(env: dict[str, str] | None = None, **overrides: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env or {}, overrides=overrides)
    return info.value.errors


def test_production_refuses_dev_login_and_the_development_secret() -> None:
    production = {"environment": "production"}
    assert refused(server=production, auth={"dev_login": True, "secret": LONG_SECRET}) == \
        [DEV_LOGIN_IN_PRODUCTION]
    assert refused(server=production) == [DEV_SECRET_IN_PRODUCTION]
    assert refused(server=production, auth={"dev_login": True}) == \
        [DEV_LOGIN_IN_PRODUCTION, DEV_SECRET_IN_PRODUCTION]
    assert refused({"WS_SERVER_ENVIRONMENT": "production", "WS_AUTH_DEV_LOGIN": "true",
                    "JWT_SECRET": LONG_SECRET}) == [f"{DEV_LOGIN_IN_PRODUCTION} (from WS_AUTH_DEV_LOGIN)"]
    # the same settings are fine on a developer's machine, and production without them
    assert load_config(None, env={}, overrides={"auth": {"dev_login": True}}).config.auth.dev_login
    assert load_config(None, env={}, overrides={"server": production, "auth": {"secret": LONG_SECRET}})
    assert load_config(None, env={}, overrides={"server": production, "auth": {
        "algorithm": "RS256", "public_key_file": "/keys/pub.pem"}}).config.auth.secret == DEV_SECRET


def test_dev_login_needs_a_key_it_can_sign_with() -> None:
    assert refused(auth={"dev_login": True, "algorithm": "ES256", "jwks_url": "https://idp.example/jwks"}) == [
        ("auth.dev_login: needs an HS algorithm: with ES256 the server holds only a public key "
         "and cannot sign tokens")]


def test_the_shipped_configs_keep_dev_login_where_it_belongs() -> None:
    assert load_config(ROOT / "websocket.yaml", env={}).config.auth.dev_login is False
    assert load_config(ROOT / "config" / "development.yaml", env={}).config.auth.dev_login is True
    env = {"JWT_SECRET": LONG_SECRET, "REDIS_URL": "redis://redis.internal:6379/0"}
    production = load_config(ROOT / "config" / "production.yaml", env=env).config
    assert (production.server.environment, production.auth.dev_login) == ("production", False)
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "config" / "production.yaml", env={**env, "WS_AUTH_DEV_LOGIN": "true"})
    assert info.value.errors == [f"{DEV_LOGIN_IN_PRODUCTION} (from WS_AUTH_DEV_LOGIN)"]


def test_serve_refuses_to_start_with_dev_login_in_production(tmp_path: Path) -> None:
    config = tmp_path / "websocket.yaml"
    config.write_text(textwrap.dedent("""\
        server:
          environment: production
        auth:
          dev_login: true
        """), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    env["JWT_SECRET"] = SECRET
    for command in (["serve", "-c", str(config), "--port", "0"], ["check-config", str(config)]):
        result = subprocess.run([sys.executable, "-m", "server", *command], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        output = result.stdout + result.stderr
        assert result.returncode == (2 if command[0] == "serve" else 1), output
        assert f"error: {DEV_LOGIN_IN_PRODUCTION}" in output
        assert "server_listening" not in output
