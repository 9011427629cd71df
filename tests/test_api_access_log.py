"""The real server's access log for the HTTP API: one structured ``http_request`` line per call,
in the same JSON lines as every other event, and never a token or an API key, wherever the
caller put it (header, query string, body)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.conftest import make_token
from tests.proc import start_server

API_KEY = "access-log-key-0123456789abcdef"


async def test_api_calls_are_logged_without_credentials(tmp_path: Path) -> None:
    server = await start_server(tmp_path, "auth:\n  dev_login: true\n", env={"WS_API_KEYS": API_KEY})
    admin = make_token("ops", roles=["admin"])
    issued = ""
    try:
        async with aiohttp.ClientSession() as session:
            calls = [
                ("GET", "/api/stats", {"X-API-Key": API_KEY}, None, 200),
                ("GET", "/api/stats", {"X-API-Key": API_KEY[::-1]}, None, 401),
                ("GET", f"/api/online?token={admin}&api_key={API_KEY}",
                 {"Authorization": f"Bearer {admin}"}, None, 200),
                ("POST", "/api/tokens/revoke", {"Authorization": f"Bearer {admin}"},
                 {"jti": "j-1"}, 200),
            ]
            for method, path, headers, body, status in calls:
                async with session.request(method, server.url + path, headers=headers,
                                           json=body) as resp:
                    assert resp.status == status
            async with session.post(server.url + "/api/dev/token", json={"username": "v"}) as resp:
                issued = (await resp.json())["token"]
        assert await server.stop() == 0
    finally:
        await server.kill()
    text = "\n".join(server.lines)
    for secret in (admin, admin.rsplit(".", 1)[1], API_KEY, API_KEY[::-1], issued,
                   issued.rsplit(".", 1)[1]):
        assert secret not in text
    requests = [e for e in server.events() if e["event"] == "http_request"]
    seen = [(e["method"], e["path"], e["status"]) for e in requests]
    assert seen == [("GET", "/api/stats", 200), ("GET", "/api/stats", 401),
                    ("GET", "/api/online", 200), ("POST", "/api/tokens/revoke", 200),
                    ("POST", "/api/dev/token", 200)]
    for event in requests:
        assert {"timestamp", "level", "remote", "duration", "bytes"} <= set(event)
    revoked = next(e for e in server.events() if e["event"] == "api_token_revoked")
    assert revoked["by"] == "ops" and revoked["jti"] == "j-1"
