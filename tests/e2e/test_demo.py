"""The demo page in a real browser: two users in two browser contexts chat, see each other
typing and their presence, lose the connection and recover exactly what they missed, get a
private message and a notification with unread counts, the conversation again after a reload."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from playwright.async_api import Page, WebSocket, expect

from server.protocol import CloseCode
from tests.e2e.conftest import PHONE, Demo, OpenPage, StartDemo, message, send, sign_in_with_token


async def two_users(demo: Demo, open_page: OpenPage, *, alice_roles: list[str] | None = None,
                    bob_screen: dict[str, int] | None = None) -> tuple[Page, Page]:
    alice = await open_page(demo.url)
    await sign_in_with_token(alice, "alice", roles=alice_roles)
    bob = await open_page(demo.url, **(bob_screen or {}))
    await sign_in_with_token(bob, "bob")
    for page in (alice, bob):  # a first visit lands in #general
        await expect(page.locator("#chat-title")).to_have_text("# general")
    await expect(alice.locator("#chat-meta")).to_have_text("2 members")
    return alice, bob


async def test_two_users_chat_and_see_typing_and_presence(demo: Demo, open_page: OpenPage) -> None:
    alice, bob = await two_users(demo, open_page)
    await send(alice, "hello bob")
    await expect(message(bob, "hello bob")).to_have_count(1)
    await send(bob, "hi alice")
    await expect(message(alice, "hi alice")).to_have_count(1)
    await expect(alice.locator("#messages li.msg")).to_have_count(2)

    await alice.fill("#composer-input", "I am writing someth")
    await expect(bob.locator("#typing")).to_have_text("alice is typing…")
    await alice.fill("#composer-input", "")  # an emptied box says it stopped
    await expect(bob.locator("#typing")).to_have_text("")
    await expect(alice.locator("#typing")).to_have_text("")

    alice_seen_by_bob = bob.locator('#people li[data-user="alice"]')
    await expect(alice_seen_by_bob).to_have_attribute("data-status", "online")
    await expect(alice.locator('#people li[data-user="bob"]')).to_have_attribute("data-status", "online")
    await alice.select_option("#status-select", "busy")
    await expect(alice_seen_by_bob).to_have_attribute("data-status", "busy")
    await expect(alice_seen_by_bob.locator(".person-status")).to_have_text("busy")
    await expect(alice_seen_by_bob.locator(".status-dot")).to_have_attribute("data-status", "busy")

    await bob.click("#logout")
    await expect(bob.locator("#login")).to_be_visible()
    await expect(alice.locator('#people li[data-user="bob"]')).to_have_attribute("data-status", "offline")


async def test_the_sender_sees_the_masked_text_the_others_got(start_demo: StartDemo,
                                                                open_page: OpenPage) -> None:
    demo = await start_demo({"messages": {"filter": {"enabled": True, "action": "mask",
                                                     "words": ["darn"]}}})
    alice, bob = await two_users(demo, open_page)
    await alice.fill("#composer-input", "oh darn it")
    await alice.press("#composer-input", "Enter")
    await expect(message(bob, "oh **** it")).to_have_count(1)
    await expect(message(alice, "oh **** it")).to_have_count(1)  # the ack said what was delivered
    await expect(alice.locator("#messages li.msg")).to_have_count(1)
    await expect(alice.locator("#messages li.msg.pending")).to_have_count(0)


async def test_a_closed_connection_recovers_exactly_the_missed_messages(demo: Demo, open_page: OpenPage) -> None:
    alice, bob = await two_users(demo, open_page, bob_screen=PHONE)  # bob is on his phone
    await send(alice, "before the cut")
    await expect(message(bob, "before the cut")).to_have_count(1)

    # bob's network goes away (his open socket keeps working until the server closes it, and
    # every reconnect fails), then the server closes him as a slow consumer
    await bob.context.set_offline(True)
    assert await demo.disconnect("bob", CloseCode.SLOW_CONSUMER) == 1
    await expect(bob.locator("#conn")).to_have_attribute("data-state", "reconnecting")
    await expect(bob.locator("#conn")).to_contain_text(re.compile(r"Reconnecting in \d+ s"))
    await expect(bob.locator("#retry-now")).to_be_visible()
    assert await bob.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    missed = [f"missed {n}" for n in (1, 2, 3)]
    for text in missed:
        await send(alice, text)
    await expect(message(bob, "missed 1")).to_have_count(0)

    await bob.context.set_offline(False)
    await expect(bob.locator("#conn")).to_have_attribute("data-state", "open")
    await expect(bob.locator("#messages .sys", has_text="Reconnected: 3 missed messages recovered")).to_have_count(1)
    for text in missed:
        await expect(message(bob, text)).to_have_count(1)
    texts = await bob.locator("#messages li.msg .msg-text").all_inner_texts()
    assert texts == ["before the cut", *missed]
    await send(bob, "back again")
    await expect(message(alice, "back again")).to_have_count(1)


def _frames_of(ws: WebSocket, frames: list[dict[str, Any]], seen: asyncio.Event, wanted: str) -> None:
    def on_frame(payload: str | bytes) -> None:
        frame = json.loads(payload)
        frames.append(frame)
        if frame.get("type") == wanted:
            seen.set()

    ws.on("framesent", on_frame)
    ws.on("framereceived", on_frame)


async def test_private_message_and_notification_arrive_with_unread_counts(demo: Demo, open_page: OpenPage) -> None:
    alice, bob = await two_users(demo, open_page, alice_roles=["admin"])

    await alice.click('#people li[data-user="bob"] button', timeout=8000)
    await expect(alice.locator("#chat-title")).to_have_text("@ bob")
    await send(alice, "psst, just for you")
    dm = bob.locator('#dm-list button[data-key="u:alice"]')
    await expect(dm.locator(".badge")).to_have_text("1")
    await expect(bob.locator("#tab-chats-badge")).to_have_text("1")
    await dm.click()
    await expect(message(bob, "psst, just for you")).to_have_count(1)
    await expect(dm.locator(".badge")).to_have_count(0)

    await expect(alice.locator("#notify-form")).to_be_visible()
    await expect(bob.locator("#ops")).to_be_hidden()  # bob is no admin
    await alice.fill("#notify-to", "bob")
    await alice.fill("#notify-title", "Build finished")
    await alice.fill("#notify-message", "All tests passed")
    await alice.click("#notify-form button[type=submit]")
    await expect(alice.locator("#notify-result")).to_have_text("Sent to bob.")
    await expect(bob.locator("#unread")).to_have_text("1")
    await expect(bob.locator("#alert-list li.unread")).to_contain_text("Build finished")
    await bob.click("#mark-read")
    await expect(bob.locator("#unread")).to_be_hidden()
    await expect(bob.locator("#alert-list li.unread")).to_have_count(0)

    # bob leaves; a private message waits in his inbox, comes when he is back, and once
    # acknowledged by the client it does not come again
    await bob.click("#logout")
    await expect(alice.locator('#people li[data-user="bob"]')).to_have_attribute("data-status", "offline")
    await send(alice, "while you were away")
    frames: list[dict[str, Any]] = []
    acked = asyncio.Event()
    bob.on("websocket", lambda ws: _frames_of(ws, frames, acked, "inbox.ack"))
    await sign_in_with_token(bob, "bob")
    await expect(bob.locator('#dm-list button[data-key="u:alice"] .badge')).to_have_text("1")
    await expect(bob.locator("#chat-title")).to_have_text("# general")  # after the replays
    await asyncio.wait_for(acked.wait(), 8)
    ack = next(f for f in frames if f.get("type") == "inbox.ack")
    inbox = next(f for f in frames if f.get("inbox"))
    assert ack["data"] == {"offset": inbox["offset"]}
    await expect(bob.locator("#unread")).to_be_hidden()  # read notifications do not come back

    reply = asyncio.Event()
    bob.on("websocket", lambda ws: _frames_of(ws, frames, reply, "connected"))
    await bob.reload()
    await asyncio.wait_for(reply.wait(), 8)
    await expect(bob.locator("#conn")).to_have_attribute("data-state", "open")
    await expect(bob.locator("#chat-title")).to_have_text("# general")
    # the server keeps the conversation: listed again, read already, with its messages
    dm = bob.locator('#dm-list button[data-key="u:alice"]')
    await expect(dm).to_have_count(1)
    await expect(dm.locator(".name")).to_have_text("alice")
    await expect(dm.locator(".badge")).to_have_count(0)
    await dm.click()
    await expect(bob.locator("#chat-title")).to_have_text("@ alice")
    await expect(message(bob, "psst, just for you")).to_have_count(1)
    await expect(message(bob, "while you were away")).to_have_count(1)


async def test_the_status_menu_shows_the_servers_status_after_a_reload(demo: Demo,
                                                                      open_page: OpenPage) -> None:
    """A reload, or a second tab of the same user, shows the status the server has (what
    everyone else sees), not "Online"."""
    alice, bob = await two_users(demo, open_page)
    await alice.select_option("#status-select", "busy")
    alice_seen_by_bob = bob.locator('#people li[data-user="alice"]')
    await expect(alice_seen_by_bob).to_have_attribute("data-status", "busy")
    await alice.reload()
    await expect(alice.locator("#conn")).to_have_attribute("data-state", "open")
    await expect(alice.locator("#status-select")).to_have_value("busy")
    await expect(alice.locator('#people li[data-user="alice"]')).to_have_attribute("data-status", "busy")
    second_tab = await open_page(demo.url)  # no form state to restore: only the server's word
    await sign_in_with_token(second_tab, "alice")
    await expect(second_tab.locator("#status-select")).to_have_value("busy")
    await expect(alice_seen_by_bob).to_have_attribute("data-status", "busy")
