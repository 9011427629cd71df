"""The browser client follows the server's close-code catalogue: ``static/switchboard.js``
carries the block ``server.protocol.codes.js_catalogue()`` generates, exactly, and its
``closeAction`` gives the same answer as ``close_action`` for every code of the catalogue, the
edges of its ranges and codes outside them. The JS is the real file, run by ``node`` (when it is
installed) and by headless Chromium (which the browser tests need anyway), never re-implemented
here."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.async_api import Route, async_playwright

from server.protocol.codes import CLOSE_CODES, CLOSE_RANGES, JS_BEGIN, JS_END, close_action, js_catalogue
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "static" / "switchboard.js"
REGENERATE = ("run `python -m server.protocol` and paste its output over the block between "
              f"{JS_BEGIN!r} and {JS_END!r} in static/switchboard.js")

#: every code of the catalogue, each range's edges and neighbours, and codes outside the ranges
#: (None: no close code, as when the network dropped)
CODES: list[int | None] = sorted(
    {c.code for c in CLOSE_CODES}
    | {edge + step for low, high, _ in CLOSE_RANGES for edge in (low, high) for step in (-1, 0, 1)}
    | {0, 1004, 1005, 1006, 1012, 1014, 1015, 2999, 3000, 3999, 4002, 4008, 4250, 4502, 4600, 5000, 65535}
) + [None]


def _js_block(text: str) -> str:
    begin, end = text.find(JS_BEGIN), text.find(JS_END)
    assert begin >= 0 and end > begin and text.count(JS_BEGIN) == text.count(JS_END) == 1, \
        f"static/switchboard.js has no single close-code block: {REGENERATE}"
    return text[begin:end + len(JS_END)]


def test_switchboard_js_carries_the_generated_catalogue() -> None:
    block = _js_block(CLIENT.read_text(encoding="utf-8"))
    assert block == js_catalogue(), \
        f"the close codes in static/switchboard.js differ from server/protocol/codes.py: {REGENERATE}"


def _close_actions_in_node(codes: list[int | None], tmp_path: Path) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the chromium case runs the same check")
    # the same bytes, named .mjs so that any node version loads it as the ES module it is
    module = tmp_path / "switchboard.mjs"
    shutil.copyfile(CLIENT, module)
    script = ("const { closeAction } = await import(process.argv[1]);"
              "process.stdout.write(JSON.stringify(JSON.parse(process.argv[2]).map((c) => closeAction(c))));")
    done = subprocess.run([node, "--input-type=module", "-e", script, module.as_uri(), json.dumps(codes)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    actions: list[str] = json.loads(done.stdout)
    return actions


async def _close_actions_in_chromium(codes: list[int | None]) -> list[str]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: run tests/run.sh (it installs Debian's chromium) or "
                    "set SWITCHBOARD_CHROMIUM")
    origin = "http://switchboard.test"

    async def serve(route: Route) -> None:
        if route.request.url.split("?")[0] == f"{origin}/static/switchboard.js":
            await route.fulfill(status=200, body=CLIENT.read_bytes(), content_type="text/javascript")
        else:
            await route.fulfill(status=200, body="<!doctype html><title>close codes</title>",
                                content_type="text/html")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.route(f"{origin}/**", serve)
            await page.goto(f"{origin}/")
            actions: list[str] = await page.evaluate(
                """async (codes) => {
                  const { closeAction } = await import("/static/switchboard.js");
                  return codes.map((c) => closeAction(c));
                }""", codes)
        finally:
            await browser.close()
    return actions


@pytest.mark.parametrize("runtime", ["node", "chromium"])
async def test_js_close_action_matches_the_catalogue(runtime: str, tmp_path: Path) -> None:
    if runtime == "node":
        actions = _close_actions_in_node(CODES, tmp_path)
    else:
        actions = await _close_actions_in_chromium(CODES)
    expected = [close_action(code) for code in CODES]
    assert len(set(expected)) == 3  # the samples reach every action: reconnect, token, stop
    wrong = [f"{code}: closeAction gives {js!r}, close_action {py!r}"
             for code, js, py in zip(CODES, actions, expected) if js != py]
    assert not wrong, "static/switchboard.js's closeAction disagrees with server/protocol/codes.py:\n" + \
        "\n".join(wrong)
