"""The demo page's sign-in paths, its operator panel, its use behind a reverse proxy path, and
its accessibility (labels, keyboard, contrast), in a real browser."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, WSMsgType, web
from playwright.async_api import expect

from tests.conftest import make_token
from tests.e2e.conftest import Demo, OpenPage, StartDemo, message, send, sign_in_with_token


async def test_dev_login_signs_in_with_a_name(demo: Demo, open_page: OpenPage) -> None:
    page = await open_page(demo.url)
    await expect(page.locator("#login-name")).to_be_focused()
    await page.fill("#login-name", "dora")
    await page.press("#login-name", "Enter")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    await expect(page.locator("#me-name")).to_have_text("dora")
    await send(page, "signed in by name")
    await page.reload()  # the tab keeps its user
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    await expect(page.locator("#me-name")).to_have_text("dora")
    await expect(message(page, "signed in by name")).to_have_count(1)  # history


async def test_without_dev_login_the_page_asks_for_a_token(start_demo: StartDemo,
                                                          open_page: OpenPage) -> None:
    demo = await start_demo({"auth": {"dev_login": False}})
    page = await open_page(demo.url)
    await expect(page.locator("#login-form")).to_have_count(0)
    await expect(page.locator("#token-command")).to_have_text(
        "switchboard token --sub alice --username alice --ttl 8h")
    await page.fill("#token-input", "not a token")
    await page.click("#token-form button[type=submit]")
    await expect(page.locator("#login-error")).to_have_text("That is not a JWT (three dot-separated parts).")
    await page.fill("#token-input", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bad-signature")
    await page.click("#token-form button[type=submit]")
    await expect(page.locator("#login-error")).to_have_text("Disconnected: the server refused the token.")
    await sign_in_with_token(page, "erin")
    await expect(page.locator("#me-name")).to_have_text("erin")


async def test_operator_panel_shows_live_stats_to_admins_only(demo: Demo, open_page: OpenPage) -> None:
    admin = await open_page(demo.url)
    await sign_in_with_token(admin, "olga", roles=["admin"])
    connections = admin.locator('#stats dd[data-stat="total_connections"]')
    await expect(connections).to_have_text("1")
    user = await open_page(demo.url)
    await sign_in_with_token(user, "pete")
    await expect(connections).to_have_text("2")  # polled while the page is open
    await expect(user.locator("#ops")).to_be_hidden()
    # charts of the polls so far: a line each, their figures in words for screen readers
    conns_chart = admin.locator('#charts svg[data-chart="connections"]')
    await expect(conns_chart).to_have_attribute("aria-label", re.compile(r"^Connections, last \d+ s: now 2, highest 2$"))
    await send(user, "one for the chart")  # one in, one out (to olga in #general)
    in_chart = admin.locator('#charts svg[data-chart="in"]')
    await expect(in_chart).to_have_attribute("aria-label", re.compile(r"highest 0\.[1-9]|highest [1-9]"))
    line = admin.locator('#charts svg[data-chart="in"] polyline')
    await expect(line).to_have_attribute("points", re.compile(r"^\S+( \S+)+$"))  # a line: 2+ points


async def _reverse_proxy(upstream: str, prefix: str) -> web.Application:
    """A minimal reverse proxy serving ``upstream`` under ``prefix``, WebSockets included."""
    session = ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        url = upstream + request.match_info["tail"] + (f"?{request.query_string}" if request.query_string else "")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            downstream = web.WebSocketResponse()
            await downstream.prepare(request)
            async with session.ws_connect(url.replace("http", "ws", 1)) as up:
                async def pump(src: Any, dst: Any) -> None:
                    async for msg in src:
                        if msg.type is WSMsgType.TEXT:
                            await dst.send_str(msg.data)
                    await dst.close(code=src.close_code or 1000)

                await asyncio.gather(pump(downstream, up), pump(up, downstream))
            return downstream
        async with session.request(request.method, url, data=await request.read(),
                                   headers={k: v for k, v in request.headers.items()
                                            if k.lower() in ("content-type", "authorization")}) as resp:
            keep = ("Content-Type", "Content-Security-Policy")
            return web.Response(body=await resp.read(), status=resp.status,
                                headers={k: resp.headers[k] for k in keep if k in resp.headers})

    async def close_session(app: web.Application) -> None:
        await session.close()

    app = web.Application()
    app.router.add_route("*", prefix + "{tail:.*}", forward)
    app.on_cleanup.append(close_session)
    return app


async def test_the_page_works_behind_a_proxy_path(demo: Demo, start_demo: StartDemo,
                                                  open_page: OpenPage) -> None:
    proxy = await start_demo(app=await _reverse_proxy(demo.url, "/chat/"))
    url = proxy.url + "chat/"
    quinn = await open_page(url)
    requests: list[str] = []
    quinn.on("request", lambda r: requests.append(r.url))
    await sign_in_with_token(quinn, "quinn")
    rosa = await open_page(url)
    await sign_in_with_token(rosa, "rosa")
    await send(quinn, "through the proxy")
    await expect(message(rosa, "through the proxy")).to_have_count(1)
    await quinn.reload()
    await expect(quinn.locator("#conn")).to_have_attribute("data-state", "open")
    assert requests and all(r.startswith(url) for r in requests), requests


async def test_labels_keyboard_and_contrast(demo: Demo, open_page: OpenPage) -> None:
    page = await open_page(demo.url)
    # keyboard only: the name field has the focus, Enter signs in, Enter sends
    await page.keyboard.type("kim")
    await page.keyboard.press("Enter")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    await page.focus("#composer-input")
    await page.keyboard.type("typed, not clicked")
    await page.keyboard.press("Enter")
    await expect(message(page, "typed, not clicked")).to_have_count(1)
    unlabelled = await page.evaluate("""() => [...document.querySelectorAll(
        'input, select, textarea, button')].filter((el) => el.offsetParent !== null).filter((el) =>
        !(el.labels?.length || el.getAttribute('aria-label') || (el.tagName === 'BUTTON' && el.textContent.trim())))
        .map((el) => el.outerHTML)""")
    assert unlabelled == []
    low = await page.evaluate(CONTRAST_JS)
    assert low == [], f"text below 4.5:1 contrast: {low}"


#: every visible text element whose colour against its background is below WCAG AA (4.5:1)
CONTRAST_JS = """() => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.offsetParent === null || ![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    if (el.closest('[aria-hidden="true"]')) continue;
    const style = getComputedStyle(el);
    if (parseFloat(style.opacity) < 1) continue;  // disabled controls are exempt
    const [a, b] = [lum(rgb(style.color)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(`${el.tagName}.${el.className}: ${ratio.toFixed(2)}`);
  }
  return low;
}"""


async def test_rooms_are_created_joined_with_history_and_left(demo: Demo, open_page: OpenPage) -> None:
    alice = await open_page(demo.url)
    await sign_in_with_token(alice, "alice")
    await alice.fill("#join-input", "random")
    await alice.press("#join-input", "Enter")
    await expect(alice.locator("#chat-title")).to_have_text("# random")
    await expect(alice.locator("#room-list button")).to_have_text(["#general", "#random"])
    await send(alice, "first in random")

    bob = await open_page(demo.url)
    await sign_in_with_token(bob, "bob")
    offered = bob.locator('#available-list li[data-room="random"]')
    await expect(offered).to_contain_text("# random · 1")
    await offered.get_by_role("button", name="Join random").click()
    await expect(bob.locator("#chat-title")).to_have_text("# random")
    await expect(message(bob, "first in random")).to_have_count(1)  # its history
    await expect(alice.locator("#chat-meta")).to_have_text("2 members")

    await alice.click("#leave")
    await expect(alice.locator("#room-list button")).to_have_text(["#general"])
    await expect(alice.locator("#chat-title")).to_have_text("# general")
    await expect(bob.locator("#messages .sys", has_text="alice left")).to_have_count(1)
    await expect(bob.locator("#chat-meta")).to_have_text("1 member")
    await expect(alice.locator('#available-list li[data-room="random"]')).to_be_visible()


async def test_the_readmes_console_snippet_works_pasted_whole(demo: Demo, open_page: OpenPage) -> None:
    """README's "Try it" lines for a browser console, pasted at once into a page of the server:
    each waits for what it needs (the socket open), so the message is acknowledged."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("in the browser console"):]
    block = block[block.index("```js\n") + len("```js\n"):]
    lines = block[:block.index("```")].splitlines()
    assert len(lines) >= 5, lines
    origin = demo.url.rstrip("/").removeprefix("http://")
    snippet = "\n".join(lines).replace("127.0.0.1:8000", origin).replace(
        "<token>", make_token("alice", username="alice"))
    page = await open_page(demo.url)
    got = await page.evaluate("""async (snippet) => {
        const log = [];
        const seen = console.log;
        console.log = (x) => log.push(x);
        try {
          await (async () => {}).constructor(snippet + "; return ws;")();
          const deadline = Date.now() + 8000;
          while (!log.some((f) => f.type === "ack" && f.reply_to === "2") && Date.now() < deadline)
            await new Promise((r) => setTimeout(r, 20));
        } finally { console.log = seen; }
        return log.map((f) => [f.type, f.reply_to ?? null]);
    }""", snippet)
    assert [t for t, _ in got][:1] == ["connected"], got
    assert ["joined", "1"] in got and ["ack", "2"] in got, got


async def test_the_ping_button_shows_the_round_trip(demo: Demo, open_page: OpenPage) -> None:
    page = await open_page(demo.url)
    await sign_in_with_token(page, "pinger")
    await page.click("#ping")  # the text comes when the pong does
    await expect(page.locator("#ping-result")).to_have_text(re.compile(r"^\d+\.\d ms$"))
