// Conversations (rooms and private ones) in the side list, the open one, and rooms: joining,
// creating, leaving, their history, the other rooms of the server, catching up after a reconnect.
import { $, F, app, authedJson, convs, el, people, plural, save, setView, ui } from "./demo-core.js";

// --- conversations --------------------------------------------------------------------------------
export function ensureConv(key, title) {
  let conv = convs.get(key);
  if (!conv) {
    conv = { key, kind: key[0] === "r" ? "room" : "dm", id: key.slice(2), title, items: [], ids: new Set(), unread: 0, members: null, history: false };
    convs.set(key, conv);
    renderConvLists();
    if (conv.kind === "dm" && F.history) loadHistory(conv); // a room's comes with its "joined"
  }
  return conv;
}

export function dropConv(key) {
  convs.delete(key);
  if (app.session && key.startsWith("r:")) {
    app.session.rooms = app.session.rooms.filter((r) => `r:${r}` !== key);
    save();
  }
  if (app.active === key) activate(convs.keys().next().value ?? null);
  renderConvLists();
  loadRooms();
}

/** Open the conversation `key` (null: none). */
export function activate(key) {
  app.active = key;
  const conv = key ? convs.get(key) : null;
  if (conv) conv.unread = 0;
  $("chat-title").textContent = conv ? (conv.kind === "room" ? `# ${conv.id}` : `@ ${conv.title}`) : "No conversation";
  $("leave").hidden = !conv || conv.kind !== "room";
  $("composer-input").disabled = $("send").disabled = !conv;
  $("composer-input").placeholder = conv ? `Message ${conv.kind === "room" ? "#" + conv.id : conv.title}` : "Write a message";
  renderMeta();
  ui.renderMessages();
  renderConvLists();
  ui.renderTyping();
}

/** The line under the title: a room's member count, or the peer's status. */
export function renderMeta() {
  const conv = convs.get(app.active);
  let text = "";
  if (conv?.kind === "room" && conv.members != null) text = plural(conv.members, "member");
  else if (conv?.kind === "dm") {
    const p = people.get(conv.id);
    text = p ? (p.online ? p.status || "online" : "offline") : "private conversation";
  }
  $("chat-meta").textContent = text;
}

function convButton(conv) {
  const badge = conv.unread ? el("span", { class: "badge", text: String(conv.unread), "aria-label": `${conv.unread} unread` }) : null;
  const button = el("button", { type: "button", dataset: { key: conv.key }, onclick: () => { activate(conv.key); setView("chat"); } },
    el("span", { class: "sigil", "aria-hidden": "true", text: conv.kind === "room" ? "#" : "@" }),
    el("span", { class: "name", text: conv.kind === "room" ? conv.id : conv.title }), badge);
  if (conv.key === app.active) button.setAttribute("aria-current", "true");
  return el("li", {}, button);
}

export function renderConvLists() {
  const all = [...convs.values()];
  $("room-list").replaceChildren(...all.filter((c) => c.kind === "room").map(convButton));
  $("dm-list")?.replaceChildren(...all.filter((c) => c.kind === "dm").map(convButton));
  const unread = all.reduce((n, c) => n + c.unread, 0);
  $("tab-chats-badge").textContent = String(unread);
  $("tab-chats-badge").hidden = !unread;
}

// --- rooms ----------------------------------------------------------------------------------------
export async function joinRoom(room, { focus = true } = {}) {
  try {
    await app.sb.join(room);
    if (focus) {
      activate(`r:${room}`);
      setView("chat");
    }
  } catch (err) {
    ui.systemLine(app.active, `Could not join #${room}: ${err.message}`);
  }
}

/** The client's "joined" event (a join of this page, or of another tab of the same user). */
export function onJoined(frame) {
  const data = frame.data || {};
  const room = data.room ?? frame.room;
  const key = `r:${room}`;
  const conv = ensureConv(key, room);
  conv.members = data.members_count ?? conv.members;
  if (!app.session.rooms.includes(room)) {
    app.session.rooms.push(room);
    save();
  }
  if (!app.active) activate(key);
  else if (app.active === key) renderMeta();
  if (F.history && !conv.history) loadHistory(conv);
  loadRooms();
}

/** The client's "rejoined" event: a room caught up after a reconnect, or could not. */
export function onRejoined({ room, recovered, missed }) {
  const conv = convs.get(`r:${room}`);
  if (!conv) return;
  if (recovered) ui.systemLine(conv.key, missed ? `Reconnected: ${plural(missed, "missed message")} recovered` : "Reconnected");
  else {
    ui.systemLine(conv.key, "Reconnected; some messages were too old to recover");
    if (F.history) loadHistory(conv);
  }
}

/** The kept messages of a room, or of a private conversation, before those already shown. */
async function loadHistory(conv) {
  conv.history = true;
  try {
    const page = { limit: 50 };
    const messages = await (conv.kind === "room" ? app.sb.history(conv.id, page) : app.sb.conversation(conv.id, page));
    const fresh = messages.filter((m) => m.id != null && !conv.ids.has(m.id));
    for (const m of fresh) conv.ids.add(m.id);
    conv.items = [...fresh.map((frame) => ({ kind: "msg", frame })), ...conv.items];
    if (conv.key === app.active) ui.renderMessages();
  } catch (err) {
    conv.history = false;
    ui.systemLine(conv.key, `History unavailable: ${err.message}`);
  }
}

/** The server's other rooms (GET /api/rooms), offered to join. */
export async function loadRooms() {
  try {
    const body = await authedJson("api/rooms");
    const rooms = (Array.isArray(body) ? body : body.rooms || []).filter((r) => !convs.has(`r:${r.id}`));
    $("available-list").replaceChildren(...rooms.slice(0, 30).map((r) => el("li", { dataset: { room: r.id } },
      el("span", {}, `# ${r.id} `, el("span", { class: "muted small", text: `· ${r.members}` })),
      el("button", { type: "button", class: "button ghost", text: "Join", "aria-label": `Join ${r.id}`, onclick: () => joinRoom(r.id) }))));
    $("available").hidden = rooms.length === 0;
  } catch {
    $("available").hidden = true; // the HTTP API is not there, or refuses: the form still works
  }
}

export function setupRooms() {
  Object.assign(ui, { activate, ensureConv, renderConvLists, renderMeta });

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const room = $("join-input").value.trim();
    if (!room) return;
    $("join-input").value = "";
    joinRoom(room);
  });

  $("leave").addEventListener("click", async () => {
    const conv = convs.get(app.active);
    if (!conv || conv.kind !== "room") return;
    try {
      await app.sb.leave(conv.id);
      dropConv(conv.key);
    } catch (err) {
      ui.systemLine(app.active, `Could not leave: ${err.message}`);
    }
  });

  window.addEventListener("focus", () => {
    if (app.sb?.state === "open") loadRooms();
  });
}
