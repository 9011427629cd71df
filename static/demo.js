// The demo page: everything here goes through switchboard.js, the way an app would use it.
// The server renders its config into #sb-config (features, limits, dev login); every URL is
// relative to the page, so the page also works behind a reverse proxy under a path prefix.
import { Switchboard } from "./switchboard.js";

const cfg = JSON.parse(document.getElementById("sb-config").textContent);
const F = cfg.features;
const $ = (id) => document.getElementById(id);
const STORE = "switchboard-demo"; // sessionStorage: one user per tab
const FLASH = "switchboard-demo-flash"; // why the last session ended, shown after the reload
const GROUP_MS = 5 * 60 * 1000;

let sb = null;
let session = null; // {mode: "dev" | "token", username, admin, token, rooms}
let me = null; // {id, username}
let roles = [];
const convs = new Map(); // "r:<room>" | "u:<user id>" -> conversation
let active = null;
const people = new Map(); // user id -> {id, name, online, status}
const notes = new Map(); // notification id -> {id, title, message, ts, read}
const typers = new Map(); // conversation key -> Map(user id -> {name, until})
let countdown = null;

// --- small helpers ----------------------------------------------------------------------------
const pageUrl = (path) => new URL(path, location.href);

function wsUrl() {
  const url = pageUrl(cfg.ws_path);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

function avatar(id, name, extraClass = "") {
  let hash = 0;
  for (const ch of String(id)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const node = el("span", { class: `avatar ${extraClass}`, "aria-hidden": "true", text: (name || "?").slice(0, 1).toUpperCase() });
  node.style.background = `hsl(${hash % 360} 52% 40%)`;
  return node;
}

const timeOf = (ts) => (ts ? new Date(ts) : new Date()).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const isAdmin = () => roles.some((r) => cfg.roles.admin.includes(r));
const mayNotify = () => roles.some((r) => cfg.roles.notify.includes(r));

function save() {
  if (session) sessionStorage.setItem(STORE, JSON.stringify(session));
}

// --- signing in -----------------------------------------------------------------------------------
async function devToken(username, admin) {
  const res = await fetch(pageUrl("api/dev/token"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, roles: admin ? ["admin"] : [] }),
  });
  const body = await res.json().catch(() => ({}));
  if (res.status === 404) throw Object.assign(new Error("Dev login is off on this server: use a token."), { final: true });
  if (!res.ok || !body.token) {
    // a refusal (4xx) will not change by retrying; a server error or a proxy hiccup may
    const message = body.error?.message || `Dev login failed (HTTP ${res.status}).`;
    throw Object.assign(new Error(message), { final: res.status < 500 });
  }
  return body.token;
}

function showLogin(message = "") {
  $("login").hidden = false;
  $("app").hidden = true;
  $("me").hidden = true;
  const error = $("login-error");
  error.textContent = message;
  error.hidden = !message;
  setConn("idle", "Signed out");
}

/** End the session and start over from a fresh page (no state of the last user is left). */
function signOut(message = "") {
  const client = sb;
  sb = null; // before close(): its "closed" state must not sign out twice
  client?.close();
  sessionStorage.removeItem(STORE);
  if (message) sessionStorage.setItem(FLASH, message);
  location.reload();
}

$("login-form")?.addEventListener("submit", (event) => {
  event.preventDefault();
  const username = $("login-name").value.trim();
  if (!/^[A-Za-z0-9_.-]{1,40}$/.test(username)) {
    showLogin("A name is 1 to 40 letters, digits, dots, dashes or underscores.");
    return;
  }
  start({ mode: "dev", username, admin: $("login-admin").checked, token: null, rooms: [] });
});

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (token.split(".").length !== 3) {
    showLogin("That is not a JWT (three dot-separated parts).");
    return;
  }
  start({ mode: "token", username: claimsOf(token).username || claimsOf(token).sub, token, rooms: [] });
});

$("logout").addEventListener("click", () => signOut());

function start(state) {
  session = state;
  save();
  $("login").hidden = true;
  $("app").hidden = false;
  const getToken = session.mode === "dev"
    ? async () => {
      try {
        session.token = await devToken(session.username, session.admin);
      } catch (err) {
        if (err.final) queueMicrotask(() => signOut(err.message));
        throw err; // otherwise the client retries with backoff (the server may be restarting)
      }
      save();
      return session.token;
    }
    : null;
  // dev mode always asks for a fresh token; a pasted one is used as it is
  sb = new Switchboard(wsUrl(), { token: session.mode === "dev" ? null : session.token, getToken });
  wire(sb);
  sb.connect().catch(() => {}); // when the client stops, the "closed" state signs out
}

// --- the connection -------------------------------------------------------------------------------
/** The connection state; `countdown` is seen, not announced (a live region that changed every
 * second would talk over everything else). */
function setConn(state, text, countdown = "") {
  $("conn").dataset.state = state;
  if ($("conn-text").textContent !== text) $("conn-text").textContent = text;
  $("conn-countdown").textContent = countdown;
  $("retry-now").hidden = state !== "reconnecting";
}

function closedMessage(reason) {
  return `Disconnected: ${reason || "the server closed the connection"}.`;
}

const STOP_TEXT = {
  4500: "the server refused the token",
  4503: "disconnected by an operator",
  4507: "not allowed",
  4501: "too many invalid frames",
};

function onState({ state, retryAt, code, reason, attempt }) {
  clearInterval(countdown);
  if (state === "connecting") setConn(state, attempt ? "Reconnecting…" : "Connecting…");
  else if (state === "open") setConn(state, "Connected");
  else if (state === "reconnecting") {
    const tick = () => {
      const left = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      setConn(state, "Reconnecting", ` in ${left} s`);
    };
    tick();
    countdown = setInterval(tick, 250);
  } else if (state === "closed" && sb) {
    const why = STOP_TEXT[code] || reason || `close code ${code}`;
    signOut(closedMessage(why));
  }
}

$("retry-now").addEventListener("click", () => sb?.connect().catch(() => {}));

function wire(client) {
  client.on("state", onState);
  client.on("connected", onConnected);
  client.on("joined", onJoined);
  client.on("rejoined", onRejoined);
  client.on("left", (frame) => dropConv(`r:${frame.data?.room ?? frame.room}`));
  client.on("message", (frame) => addMessage(frame));
  client.on("user_joined", (frame) => memberEvent(frame, "joined"));
  client.on("user_left", (frame) => memberEvent(frame, "left"));
  client.on("typing", onTyping);
  client.on("presence", onPresence);
  client.on("user_status", onUserStatus);
  client.on("notification", onNotification);
  client.on("broadcast", (frame) => systemLine(active, `Announcement: ${frame.data?.content ?? JSON.stringify(frame.data)}`));
  client.on("system_message", (frame) => systemLine(active, frame.data?.content ?? frame.data?.message ?? "System message"));
  client.on("error", (err) => {
    if (err.code !== "UNAUTHORIZED") systemLine(active, `Error: ${err.message}`);
  });
  client.on("disconnected", () => {
    typers.clear();
    renderTyping();
  });
}

async function onConnected(data) {
  me = data.user;
  const claims = claimsOf(session.token || "");
  roles = Array.isArray(claims.roles) ? claims.roles : [];
  $("me").hidden = false;
  $("me-name").textContent = me.username;
  $("me-avatar").replaceWith(Object.assign(avatar(me.id, me.username), { id: "me-avatar" }));
  seePerson(me.id, me.username, { online: true, status: $("status-select")?.value || "online" });
  if (!data.reconnected) {
    const wanted = session.rooms.length ? session.rooms : data.rooms.length ? [] : ["general"];
    for (const room of wanted) joinRoom(room, { focus: false });
    setupOperator();
    const status = $("status-select")?.value;
    if (status && status !== "online") sb.setStatus(status).catch(() => {});
  }
  loadRooms();
  loadOnline();
}

// --- conversations --------------------------------------------------------------------------------
function ensureConv(key, title) {
  let conv = convs.get(key);
  if (!conv) {
    conv = { key, kind: key[0] === "r" ? "room" : "dm", id: key.slice(2), title, items: [], ids: new Set(), unread: 0, members: null, history: false };
    convs.set(key, conv);
    renderConvLists();
  }
  return conv;
}

function dropConv(key) {
  convs.delete(key);
  if (session && key.startsWith("r:")) {
    session.rooms = session.rooms.filter((r) => `r:${r}` !== key);
    save();
  }
  if (active === key) activate(convs.keys().next().value ?? null);
  renderConvLists();
  loadRooms();
}

function activate(key) {
  active = key;
  const conv = key ? convs.get(key) : null;
  if (conv) conv.unread = 0;
  $("chat-title").textContent = conv ? (conv.kind === "room" ? `# ${conv.id}` : `@ ${conv.title}`) : "No conversation";
  $("leave").hidden = !conv || conv.kind !== "room";
  $("composer-input").disabled = $("send").disabled = !conv;
  $("composer-input").placeholder = conv ? `Message ${conv.kind === "room" ? "#" + conv.id : conv.title}` : "Write a message";
  renderMeta();
  renderMessages();
  renderConvLists();
  renderTyping();
}

function renderMeta() {
  const conv = convs.get(active);
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
  if (conv.key === active) button.setAttribute("aria-current", "true");
  return el("li", {}, button);
}

function renderConvLists() {
  const all = [...convs.values()];
  $("room-list").replaceChildren(...all.filter((c) => c.kind === "room").map(convButton));
  $("dm-list")?.replaceChildren(...all.filter((c) => c.kind === "dm").map(convButton));
  const unread = all.reduce((n, c) => n + c.unread, 0);
  $("tab-chats-badge").textContent = String(unread);
  $("tab-chats-badge").hidden = !unread;
}

async function joinRoom(room, { focus = true } = {}) {
  try {
    await sb.join(room);
    if (focus) {
      activate(`r:${room}`);
      setView("chat");
    }
  } catch (err) {
    systemLine(active, `Could not join #${room}: ${err.message}`);
  }
}

function onJoined(frame) {
  const data = frame.data || {};
  const room = data.room ?? frame.room;
  const key = `r:${room}`;
  const conv = ensureConv(key, room);
  conv.members = data.members_count ?? conv.members;
  if (!session.rooms.includes(room)) {
    session.rooms.push(room);
    save();
  }
  if (!active) activate(key);
  else if (active === key) renderMeta();
  if (F.history && !conv.history) loadHistory(conv);
  loadRooms();
}

function onRejoined({ room, recovered, missed }) {
  const conv = convs.get(`r:${room}`);
  if (!conv) return;
  if (recovered) systemLine(conv.key, missed ? `Reconnected: ${plural(missed, "missed message")} recovered` : "Reconnected");
  else {
    systemLine(conv.key, "Reconnected; some messages were too old to recover");
    if (F.history) loadHistory(conv);
  }
}

async function loadHistory(conv) {
  conv.history = true;
  try {
    const messages = await sb.history(conv.id, { limit: 50 });
    const fresh = messages.filter((m) => m.id != null && !conv.ids.has(m.id));
    for (const m of fresh) conv.ids.add(m.id);
    conv.items = [...fresh.map((frame) => ({ kind: "msg", frame })), ...conv.items];
    if (conv.key === active) renderMessages();
  } catch (err) {
    conv.history = false;
    systemLine(conv.key, `History unavailable: ${err.message}`);
  }
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = $("join-input").value.trim();
  if (!room) return;
  $("join-input").value = "";
  joinRoom(room);
});

$("leave").addEventListener("click", async () => {
  const conv = convs.get(active);
  if (!conv || conv.kind !== "room") return;
  try {
    await sb.leave(conv.id);
    dropConv(conv.key);
  } catch (err) {
    systemLine(active, `Could not leave: ${err.message}`);
  }
});

function openDm(userId) {
  const person = people.get(userId);
  const conv = ensureConv(`u:${userId}`, person?.name || userId);
  activate(conv.key);
  setView("chat");
  $("composer-input").focus();
}

$("dm-form")?.addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("dm-input").value.trim();
  if (!id) return;
  $("dm-input").value = "";
  openDm(id);
});

async function authedJson(path) {
  const res = await fetch(pageUrl(path), { headers: { Authorization: `Bearer ${session?.token}` } });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    throw Object.assign(new Error(body.error?.message || `HTTP ${res.status}`), { status: res.status });
  }
  return res.json();
}

async function loadRooms() {
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

window.addEventListener("focus", () => {
  if (sb?.state === "open") loadRooms();
});

// --- messages -------------------------------------------------------------------------------------
function keyOf(frame) {
  if (frame.room != null) return `r:${frame.room}`;
  const peer = frame.from?.id === me?.id ? frame.to : frame.from?.id;
  return `u:${peer}`;
}

function addMessage(frame) {
  const key = keyOf(frame);
  if (frame.room == null && !F.private) return;
  const peerName = frame.from?.id === me?.id ? (people.get(frame.to)?.name || frame.to) : frame.from?.username;
  const conv = ensureConv(key, peerName);
  if (frame.id != null) {
    if (conv.ids.has(frame.id)) return;
    conv.ids.add(frame.id);
  }
  if (frame.from) seePerson(frame.from.id, frame.from.username);
  stopTyping(key, frame.from?.id);
  const item = { kind: "msg", frame };
  conv.items.push(item);
  if (key === active) appendItem(item, conv.items[conv.items.length - 2]);
  else {
    conv.unread += 1;
    renderConvLists();
  }
}

function systemLine(key, text) {
  const conv = key ? convs.get(key) : null;
  const item = { kind: "sys", text };
  if (conv) conv.items.push(item);
  if (!conv || key === active) appendItem(item);
}

function messageNode(item, prev) {
  if (item.kind === "sys") return el("li", { class: "sys", text: item.text });
  const f = item.frame;
  const from = f.from || { id: "?", username: "server" };
  const own = from.id === me?.id;
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

function renderMessages() {
  const conv = convs.get(active);
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
  if (atBottom || item.frame?.from?.id === me?.id) list.scrollTop = list.scrollHeight;
}

async function send() {
  const input = $("composer-input");
  const conv = convs.get(active);
  const content = input.value.trim();
  if (!conv || !content) return;
  input.value = "";
  autosize();
  typingStopped();
  const target = conv.kind === "room" ? { room: conv.id } : { to: conv.id };
  const frame = { type: "message", ...target, from: me, ts: new Date().toISOString(), data: { content } };
  const item = { kind: "msg", frame, pending: true };
  conv.items.push(item);
  if (conv.key === active) appendItem(item, conv.items[conv.items.length - 2]);
  try {
    const ack = await (conv.kind === "room" ? sb.sendMessage(conv.id, content) : sb.sendPrivate(conv.id, content));
    frame.id = ack.id;
    conv.ids.add(ack.id);
    item.pending = false;
    item.node?.classList.remove("pending");
    if (item.node) item.node.dataset.id = ack.id;
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
  const conv = convs.get(active);
  if (!F.typing || !conv || !sb) return;
  if ($("composer-input").value.trim()) sb.typing(conv.kind === "room" ? { room: conv.id } : { to: conv.id }, true);
  else typingStopped();
});

$("composer-input").addEventListener("blur", () => typingStopped());

function typingStopped() {
  const conv = convs.get(active);
  if (F.typing && conv && sb) sb.typing(conv.kind === "room" ? { room: conv.id } : { to: conv.id }, false);
}

// --- typing -------------------------------------------------------------------------------------------
function onTyping(frame) {
  if (!frame.from || frame.from.id === me?.id) return;
  const key = frame.room != null ? `r:${frame.room}` : `u:${frame.from.id}`;
  if (!typers.has(key)) typers.set(key, new Map());
  if (frame.data?.is_typing) {
    typers.get(key).set(frame.from.id, { name: frame.from.username, until: Date.now() + cfg.limits.typing_timeout * 1000 });
    setTimeout(renderTyping, cfg.limits.typing_timeout * 1000 + 50);
  } else typers.get(key).delete(frame.from.id);
  renderTyping();
}

function stopTyping(key, userId) {
  if (typers.get(key)?.delete(userId)) renderTyping();
}

function renderTyping() {
  const node = $("typing");
  if (!node) return;
  const now = Date.now();
  const names = [...(typers.get(active)?.values() || [])].filter((t) => t.until > now).map((t) => t.name);
  node.textContent = names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` :
    names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : `${names.length} people are typing…`;
}

// --- presence -----------------------------------------------------------------------------------------
function seePerson(id, name, change = {}) {
  if (id == null) return;
  const person = people.get(id) || { id, name: name || id, online: false, status: "offline" };
  if (name) person.name = name;
  Object.assign(person, change);
  people.set(id, person);
  renderPeople();
}

function memberEvent(frame, what) {
  const data = frame.data || {};
  const user = data.user || frame.from;
  if (!user) return;
  const room = data.room ?? frame.room;
  const conv = convs.get(`r:${room}`);
  if (conv && data.members_count != null) conv.members = data.members_count;
  if (what === "joined") {
    seePerson(user.id, user.username, { online: true, status: people.get(user.id)?.status === "offline" ? "online" : people.get(user.id)?.status || "online" });
    if (F.presence) sb.queryPresence([user.id]).then(applyPresenceState, () => {});
  }
  systemLine(`r:${room}`, `${user.username} ${what}`);
  if (active === `r:${room}`) renderMeta();
}

function applyPresenceState(users) {
  for (const u of users || []) seePerson(u.user_id, u.username, { online: !!u.online, status: u.online ? u.status || "online" : "offline" });
  renderMeta();
}

function onPresence(frame) {
  const data = frame.data || {};
  const id = data.user_id ?? frame.from?.id;
  const status = data.status || "online";
  seePerson(id, frame.from?.username || data.username, { online: status !== "offline", status });
  renderMeta();
}

function onUserStatus(frame) {
  const data = frame.data || {};
  const online = data.status === "online";
  const current = people.get(data.user_id);
  seePerson(data.user_id, data.username || frame.from?.username, {
    online, status: online ? (current?.status && current.status !== "offline" ? current.status : "online") : "offline",
  });
  renderMeta();
}

async function loadOnline() {
  if (!F.presence) return;
  try {
    const body = await authedJson("api/online?limit=100");
    for (const u of body.users || []) seePerson(u.user_id, u.username, { online: true, status: u.status || "online" });
  } catch {
    // no HTTP API: the list fills from room events and presence.query
  }
}

function renderPeople() {
  const list = $("people");
  if (!list) return;
  const order = [...people.values()].sort((a, b) => (b.online - a.online) || a.name.localeCompare(b.name));
  list.replaceChildren(...order.map((p) => {
    const status = p.online ? p.status || "online" : "offline";
    const wrap = el("span", { class: "person-avatar" }, avatar(p.id, p.name),
      el("span", { class: "status-dot", dataset: { status }, "aria-hidden": "true" }));
    const action = F.private && p.id !== me?.id
      ? el("button", { type: "button", class: "button ghost", text: "Message", "aria-label": `Message ${p.name}`, onclick: () => openDm(p.id) })
      : null;
    return el("li", { dataset: { user: p.id, status } }, wrap,
      el("span", { class: "person-text" },
        el("span", { class: "person-name", text: p.id === me?.id ? `${p.name} (you)` : p.name }),
        el("span", { class: "person-status", text: status })), action);
  }));
}

$("status-select")?.addEventListener("change", async (event) => {
  const status = event.target.value;
  try {
    await sb.setStatus(status);
    seePerson(me.id, me.username, { status, online: true });
  } catch (err) {
    systemLine(active, `Status not changed: ${err.message}`);
  }
});

// --- notifications ----------------------------------------------------------------------------------
function onNotification(frame) {
  const data = frame.data || {};
  const id = data.id ?? frame.id;
  if (notes.has(id)) return;
  notes.set(id, { id, title: data.title || data.notification_type || "Notification", message: data.message || "", link: data.link, ts: frame.ts, read: !!data.read });
  renderNotes();
}

function renderNotes() {
  if (!$("alert-list")) return;
  const all = [...notes.values()].reverse();
  $("alert-list").replaceChildren(...all.map((n) => el("li", { class: n.read ? "" : "unread", dataset: { id: n.id } },
    el("span", { class: "alert-title", text: n.title }),
    n.message ? el("p", { class: "alert-text", text: n.message }) : null,
    el("time", { class: "alert-time", datetime: n.ts || "", text: timeOf(n.ts) }))));
  const unread = all.filter((n) => !n.read).length;
  for (const id of ["unread", "tab-alerts-badge"]) {
    $(id).textContent = String(unread);
    $(id).hidden = unread === 0;
  }
  $("unread").setAttribute("aria-label", `${unread} unread`);
  $("mark-read").disabled = unread === 0;
  $("alerts-empty").hidden = all.length > 0;
}

$("mark-read")?.addEventListener("click", async () => {
  const ids = [...notes.values()].filter((n) => !n.read).map((n) => n.id);
  try {
    await sb.markNotificationsRead(ids);
    for (const id of ids) notes.get(id).read = true;
    renderNotes();
  } catch (err) {
    systemLine(active, `Could not mark read: ${err.message}`);
  }
});

// --- operator -----------------------------------------------------------------------------------------
function setupOperator() {
  $("ops").hidden = !isAdmin();
  if ($("notify-form")) $("notify-form").hidden = !(F.notifications && mayNotify());
  if (!isAdmin()) return;
  loadStats();
  setInterval(() => {
    if (document.visibilityState === "visible") loadStats();
  }, 2000);
}

const STATS = [
  ["total_connections", "Connections"], ["unique_users", "Users online"], ["total_rooms", "Rooms"],
  ["messages_in", "Messages in"], ["messages_out", "Messages out"], ["uptime_seconds", "Uptime"],
];

function uptime(seconds) {
  const s = Math.floor(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

async function loadStats() {
  try {
    const stats = await authedJson("api/stats");
    $("stats").replaceChildren(...STATS.filter(([key]) => stats[key] != null).map(([key, label]) => el("div", {},
      el("dt", { text: label }),
      el("dd", { dataset: { stat: key }, text: key === "uptime_seconds" ? uptime(stats[key]) : Number(stats[key]).toLocaleString() }))));
    $("stats-error").hidden = true;
  } catch (err) {
    $("stats-error").textContent = err.status === 404 ? "The stats API is not available on this server." : `Stats unavailable: ${err.message}`;
    $("stats-error").hidden = false;
  }
}

$("notify-form")?.addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("notify-result");
  const to = $("notify-to").value.trim();
  try {
    await sb.send("notification", { to, data: { notification_type: "demo", title: $("notify-title").value.trim(), message: $("notify-message").value.trim() } });
    result.textContent = `Sent to ${to}.`;
    $("notify-title").value = $("notify-message").value = "";
  } catch (err) {
    result.textContent = `Not sent: ${err.message}`;
  }
});

// --- phone layout -----------------------------------------------------------------------------------
function setView(view) {
  $("app").dataset.view = view;
  for (const tab of document.querySelectorAll(".tabs button")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "true");
    else tab.removeAttribute("aria-current");
  }
}

for (const tab of document.querySelectorAll(".tabs button")) tab.addEventListener("click", () => setView(tab.dataset.view));

// --- go -----------------------------------------------------------------------------------------------
const saved = JSON.parse(sessionStorage.getItem(STORE) || "null");
const flash = sessionStorage.getItem(FLASH) || "";
sessionStorage.removeItem(FLASH);
if (saved && (saved.mode === "token" || cfg.dev_login)) start(saved);
else showLogin(flash);
