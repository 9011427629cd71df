// The open conversation's messages (grouped by sender, own ones marked, pending until the
// server's ack) and the composer: Enter sends, Shift+Enter starts a new line.
import { $, F, app, avatar, convs, el, people, timeOf, ui } from "./demo-core.js";

const GROUP_MS = 5 * 60 * 1000; // messages of one sender closer than this share one header

/** The conversation a message belongs to: its room, or the other person of a private one. */
function keyOf(frame) {
  if (frame.room != null) return `r:${frame.room}`;
  const peer = frame.from?.id === app.me?.id ? frame.to : frame.from?.id;
  return `u:${peer}`;
}

/** The client's "message" event: live, replayed after a reconnect, or from the inbox. */
export function addMessage(frame) {
  const key = keyOf(frame);
  if (frame.room == null && !F.private) return;
  const peerName = frame.from?.id === app.me?.id ? (people.get(frame.to)?.name || frame.to) : frame.from?.username;
  const conv = ui.ensureConv(key, peerName);
  if (frame.id != null) {
    if (conv.ids.has(frame.id)) return;
    conv.ids.add(frame.id);
  }
  if (frame.from) ui.seePerson(frame.from.id, frame.from.username);
  ui.stopTyping(key, frame.from?.id);
  const item = { kind: "msg", frame };
  conv.items.push(item);
  if (key === app.active) appendItem(item, conv.items[conv.items.length - 2]);
  else {
    conv.unread += 1;
    ui.renderConvLists();
  }
}

/** A line of the page's own (joins, errors, reconnects) in conversation `key`, or the open one. */
export function systemLine(key, text) {
  const conv = key ? convs.get(key) : null;
  const item = { kind: "sys", text };
  if (conv) conv.items.push(item);
  if (!conv || key === app.active) appendItem(item);
}

function messageNode(item, prev) {
  if (item.kind === "sys") return el("li", { class: "sys", text: item.text });
  const f = item.frame;
  const from = f.from || { id: "?", username: "server" };
  const own = from.id === app.me?.id;
  const cont = prev?.kind === "msg" && prev.frame.from?.id === from.id &&
    Date.parse(f.ts || 0) - Date.parse(prev.frame.ts || 0) < GROUP_MS;
  const node = el("li", { class: `msg${own ? " own" : ""}${cont ? " cont" : ""}${item.pending ? " pending" : ""}` },
    avatar(from.id, from.username),
    el("div", {},
      el("div", { class: "msg-head" },
        el("span", { class: "msg-from", text: own ? `${from.username} (you)` : from.username }),
        el("time", { class: "msg-time", datetime: f.ts || "", text: timeOf(f.ts) })),
      el("p", { class: "msg-text", text: String(f.data?.content ?? "") })));
  if (f.id != null) node.dataset.id = f.id;
  item.node = node;
  return node;
}

export function renderMessages() {
  const conv = convs.get(app.active);
  const list = $("messages");
  const items = conv ? conv.items : [];
  list.replaceChildren(...items.map((item, i) => messageNode(item, items[i - 1])));
  $("empty").textContent = conv ? "No messages yet. Say hello!" : "Join a room to start chatting.";
  $("empty").hidden = items.length > 0;
  list.scrollTop = list.scrollHeight;
}

function appendItem(item, prev) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.append(messageNode(item, prev));
  $("empty").hidden = true;
  if (atBottom || item.frame?.from?.id === app.me?.id) list.scrollTop = list.scrollHeight;
}

async function send() {
  const input = $("composer-input");
  const conv = convs.get(app.active);
  const content = input.value.trim();
  if (!conv || !content) return;
  input.value = "";
  autosize();
  ui.typingStopped();
  const target = conv.kind === "room" ? { room: conv.id } : { to: conv.id };
  const frame = { type: "message", ...target, from: app.me, ts: new Date().toISOString(), data: { content } };
  const item = { kind: "msg", frame, pending: true };
  conv.items.push(item);
  if (conv.key === app.active) appendItem(item, conv.items[conv.items.length - 2]);
  try {
    const ack = await (conv.kind === "room" ? app.sb.sendMessage(conv.id, content) : app.sb.sendPrivate(conv.id, content));
    frame.id = ack.id;
    conv.ids.add(ack.id);
    item.pending = false;
    item.node?.classList.remove("pending");
    if (item.node) item.node.dataset.id = ack.id;
    if (ack.filtered) {
      // the filter masked the text: show the sender what everyone else got
      frame.data.content = ack.content;
      const text = item.node?.querySelector(".msg-text");
      if (text) text.textContent = String(ack.content ?? "");
    }
  } catch (err) {
    item.node?.classList.add("failed");
    item.node?.querySelector(".msg-text")?.append(el("span", { class: "small", text: ` (not sent: ${err.message})` }));
  }
}

function autosize() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

export function setupMessages() {
  Object.assign(ui, { renderMessages, systemLine });

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });

  $("composer-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });

  $("composer-input").addEventListener("input", () => {
    autosize();
    ui.typingInput();
  });
}
