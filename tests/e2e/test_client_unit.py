"""The unit tests of the browser client (tests/js/switchboard.test.js: backoff, close codes,
de-duplication, re-join with since, send promises, heartbeats, token refresh, inbox acks),
run in headless Chromium. The files are served from the repository by request interception,
so no server runs."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from playwright.async_api import Browser, Route

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "http://switchboard.test"
SERVED = ("static", "tests/js")


async def _serve_repo_file(route: Route) -> None:
    path = route.request.url.removeprefix(ORIGIN + "/").split("?")[0]
    file = (ROOT / path).resolve()
    if not any(file.is_relative_to(ROOT / folder) for folder in SERVED) or not file.is_file():
        await route.fulfill(status=404, body="not found")
        return
    kind = "text/javascript" if file.suffix == ".js" else mimetypes.guess_type(file.name)[0]
    await route.fulfill(status=200, body=file.read_bytes(), content_type=kind or "text/plain")


async def test_client_unit_tests_pass_in_chromium(browser: Browser) -> None:
    page = await browser.new_page()
    try:
        await page.route(f"{ORIGIN}/**", _serve_repo_file)
        await page.goto(f"{ORIGIN}/tests/js/runner.html")
        handle = await page.wait_for_function("window.__results", timeout=30000)
        results = await handle.json_value()
    finally:
        await page.close()
    names = [r["name"] for r in results]
    assert len(names) >= 16 and any(n.startswith("backoff") for n in names) \
        and any(n.startswith("de-duplication") for n in names), names
    failures = "\n\n".join(f"{r['name']}:\n{r['error']}" for r in results if not r["ok"])
    assert not failures, failures
