"""axe-core (npm, installed into tests/js by tests/run.sh) on every view of the demo page, in
Chromium: no violation of its rules (WCAG 2 A/AA and its best practices) on the sign-in view,
the chat, a private conversation, the operator's panel, or a phone's width."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, expect

from tests.e2e.conftest import PHONE, Demo, OpenPage, send, sign_in_with_token

AXE = Path(__file__).resolve().parents[1] / "js" / "node_modules" / "axe-core" / "axe.min.js"


async def violations(page: Page) -> list[str]:
    """Each violation axe finds on the page as it is now: the rule and where."""
    assert AXE.exists(), f"{AXE} is missing: tests/run.sh installs it (npm ci --prefix tests/js)"
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE.read_text(encoding="utf-8"))  # DevTools' way: not the page's CSP
    found: list[str] = await page.evaluate("""async () => {
        const result = await axe.run(document, { resultTypes: ["violations"] });
        return result.violations.map((v) =>
            `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    }""")
    return found


async def test_no_violation_on_any_view(demo: Demo, open_page: OpenPage) -> None:
    page = await open_page(demo.url)
    await expect(page.locator("#login")).to_be_visible()
    assert await violations(page) == [], "sign-in view"

    await sign_in_with_token(page, "ada", roles=["admin"])
    await expect(page.locator("#chat-title")).to_have_text("# general")
    await send(page, "hello")
    assert await violations(page) == [], "chat with the operator's panel"

    other = await open_page(demo.url)
    await sign_in_with_token(other, "bo")
    await page.locator('#people li[data-user="bo"] button').click()  # a private conversation
    await expect(page.locator("#chat-title")).to_have_text("@ bo")
    assert await violations(page) == [], "private conversation"

    phone = await open_page(demo.url, **PHONE)
    await sign_in_with_token(phone, "cy")
    await expect(phone.locator("#chat-title")).to_have_text("# general")
    assert await violations(phone) == [], "phone"
