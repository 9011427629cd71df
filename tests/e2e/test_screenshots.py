"""The page at desktop and phone width, with a conversation going on: the layout holds (three
panels side by side on a desktop; one panel at a time and nothing wider than the screen on a
phone). The screenshots go to docs/screenshots/ when SWITCHBOARD_SCREENSHOTS=update:

    SWITCHBOARD_SCREENSHOTS=update .venv/bin/pytest tests/e2e/test_screenshots.py
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from playwright.async_api import Page, expect

from tests.e2e.conftest import PHONE, Demo, OpenPage, message, send, sign_in_with_token

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


async def _visible(page: Page, selector: str) -> bool:
    return await page.locator(selector).is_visible()


async def test_desktop_and_phone_layouts(demo: Demo, open_page: OpenPage, tmp_path: Path) -> None:
    alice = await open_page(demo.url)
    await sign_in_with_token(alice, "alice", roles=["admin"])
    bob = await open_page(demo.url)
    await sign_in_with_token(bob, "bob")
    carol = await open_page(demo.url)
    await sign_in_with_token(carol, "carol")
    await send(alice, "Morning! The 2.4 release went out at nine.")
    await send(bob, "Nice. Dashboards look healthy, error rate is flat.")
    await send(carol, "Do we have release notes yet?")
    await send(alice, "Writing them now, I will post them in #releases.")
    await carol.select_option("#status-select", "busy")
    await alice.click('#people li[data-user="bob"] button')
    await send(alice, "Could you review my pull request when you have a minute?")
    await alice.fill("#notify-to", "bob")
    await alice.fill("#notify-title", "Deploy finished")
    await alice.fill("#notify-message", "Version 2.4.1 is live on all nodes.")
    await alice.click("#notify-form button[type=submit]")
    await alice.click('#room-list button[data-key="r:general"]')
    await expect(bob.locator("#unread")).to_have_text("1")
    await expect(bob.locator('#dm-list button[data-key="u:alice"] .badge')).to_have_text("1")
    await expect(bob.locator('#people li[data-user="carol"]')).to_have_attribute("data-status", "busy")
    await expect(alice.locator('#stats dd[data-stat="total_connections"]')).to_have_text("3")

    phone = await open_page(demo.url, **PHONE)
    await sign_in_with_token(phone, "dave")
    await expect(message(phone, "Writing them now, I will post them in #releases.")).to_have_count(1)
    await carol.fill("#composer-input", "Thanks! I will")
    for page in (bob, phone):
        await expect(page.locator("#typing")).to_have_text("carol is typing…")

    for page in (alice, bob):  # desktop: the three panels side by side
        for panel in ("#nav-panel", "#chat-panel", "#side-panel"):
            assert await _visible(page, panel), panel
        assert not await _visible(page, ".tabs")
    # phone: one panel at a time, switched by the tabs, nothing wider than the screen
    assert await _visible(phone, ".tabs")
    assert [await _visible(phone, p) for p in ("#nav-panel", "#chat-panel", "#side-panel")] == [False, True, False]
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await phone.screenshot(path=tmp_path / "phone.png")
    await phone.click(".tabs button[data-view=side]")
    assert [await _visible(phone, p) for p in ("#nav-panel", "#chat-panel", "#side-panel")] == [False, False, True]
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await phone.click(".tabs button[data-view=chat]")

    await bob.screenshot(path=tmp_path / "desktop.png")
    # the charts have a line once the panel has polled a few times (every 2 s)
    await expect(alice.locator('#charts svg[data-chart="out"] polyline')).to_have_attribute(
        "points", re.compile(r"^\S+( \S+){2,}$"), timeout=15000)
    await alice.locator("#ops").evaluate("(el) => el.scrollIntoView({block: 'start'})")
    await alice.screenshot(path=tmp_path / "operator.png")
    if os.environ.get("SWITCHBOARD_SCREENSHOTS") == "update":
        DOCS.mkdir(parents=True, exist_ok=True)
        for name in ("desktop.png", "operator.png", "phone.png"):
            shutil.copyfile(tmp_path / name, DOCS / name)
