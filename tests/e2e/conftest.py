"""Browser tests: real headless Chromium (Debian's ``chromium``, driven by Playwright) against
the real app on a free port. One browser per session, one fresh server per test.

tests/run.sh installs ``chromium`` when it is missing; Playwright's own browser download is
never used (``executable_path``). Everything here runs on one event loop (the session's), so
the server, Playwright and the test share it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from aiohttp import ClientSession, web
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from server.app import create_app
from tests.conftest import _merge, make_config, make_token

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("SWITCHBOARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: the longest any expect() waits; most pass in milliseconds
WAIT_MS = 8000
#: a phone-sized viewport (CSS pixels)
PHONE = {"width": 390, "height": 844}

PLUGINS = ["chat", "plugins.typing_indicator:TypingPlugin", "plugins.presence:PresencePlugin",
           "plugins.notification:NotificationPlugin"]
E2E_CONFIG: dict[str, Any] = {
    "auth": {"dev_login": True},
    "plugins": {"enabled": PLUGINS},
    "presence": {"grace_period": 0.2},
    # long enough that an indicator seen to stop was stopped by the page, not by the timeout
    "typing": {"timeout": 30},
}

expect.set_options(timeout=WAIT_MS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: run tests/run.sh (it installs Debian's chromium) or "
                    "set SWITCHBOARD_CHROMIUM")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@dataclass
class Demo:
    """The running app, by the URL of its page."""

    url: str

    async def disconnect(self, user_id: str, code: int) -> int:
        """Close every connection of ``user_id`` from the server, the way an operator does
        (``POST /api/disconnect``); how many there were."""
        token = make_token("operator", roles=["admin"])
        async with ClientSession() as session, session.post(
                self.url + "api/disconnect", json={"user_id": user_id, "code": code},
                headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()
            closed: int = (await resp.json())["closed"]
            return closed


StartDemo = Callable[..., Awaitable[Demo]]


@pytest_asyncio.fixture(loop_scope="session")
async def start_demo() -> AsyncIterator[StartDemo]:
    """Start the app (E2E_CONFIG plus overrides) on a free port; stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(overrides: dict[str, Any] | None = None, *, app: web.Application | None = None) -> Demo:
        app = app or create_app(make_config(_merge(E2E_CONFIG, overrides or {})))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return Demo(f"http://127.0.0.1:{port}/")

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def demo(start_demo: StartDemo) -> Demo:
    return await start_demo()


OpenPage = Callable[..., Awaitable[Page]]


@pytest_asyncio.fixture(loop_scope="session")
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """A page in a browser context of its own (its own sessionStorage: one user per context).
    Errors the page's scripts raise fail the test."""
    contexts = []
    errors: list[str] = []

    async def open_(url: str, *, width: int = 1280, height: int = 800) -> Page:
        context = await browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(url)
        return page

    yield open_
    for context in contexts:
        await context.close()
    assert errors == [], f"the page raised: {errors}"


async def sign_in_with_token(page: Page, user: str, *, roles: list[str] | None = None) -> None:
    """Sign in by pasting a token (user id = username = ``user``) and wait until connected."""
    if await page.locator("details.token-login").count():
        await page.click("details.token-login summary")
    await page.fill("#token-input", make_token(user, username=user, roles=roles))
    await page.click("#token-form button[type=submit]")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")


async def send(page: Page, text: str) -> None:
    """Type ``text`` in the message box and press Enter; wait until the server acknowledged it."""
    await page.fill("#composer-input", text)
    await page.press("#composer-input", "Enter")
    await expect(message(page, text)).to_have_count(1)
    await expect(page.locator("#messages li.msg.pending")).to_have_count(0)


def message(page: Page, text: str) -> Locator:
    """The messages of the open conversation whose text is exactly ``text``."""
    return page.locator("#messages li.msg .msg-text").filter(has_text=re.compile(f"^{re.escape(text)}$"))
