// The demo page's shared ground: the config the server rendered into the page, the state every
// feature reads (the client, the session, the user, the conversations, the people), small DOM
// helpers, and `ui`, through which the features call each other. The features are the other
// demo-*.js modules; demo.js wires them together.
//
// The imports go one way, so they never form a circle:
//   demo.js -> every feature module -> demo-core.js (demo-connection.js also -> switchboard.js)
// A feature module imports nothing of the page but this one. When a feature needs another's
// function (a message's sender goes into demo-presence.js's people list), it calls it through
// `ui`, which the owning module fills in its setup function (`Object.assign(ui, {...})`).
// demo.js runs those setups before it signs in, and the calls only come from events after
// that, so every slot is filled when it is used. A new cross-feature call: add its slot to
// `ui` below, under the module that fills it.

/** What the server says about itself (features, limits, dev login, roles): see server/http/pages.py. */
export const cfg = JSON.parse(document.getElementById("sb-config").textContent);
export const F = cfg.features;
export const $ = (id) => document.getElementById(id);
export const STORE = "switchboard-demo"; // sessionStorage: one user per tab
export const FLASH = "switchboard-demo-flash"; // why the last session ended, shown after the reload

/** The page's mutable state, one object so every module sees the same values. */
export const app = {
  sb: null, // the Switchboard client
  session: null, // {mode: "dev" | "token", username, admin, token, rooms}
  me: null, // {id, username}
  roles: [],
  active: null, // the key of the open conversation
};

export const convs = new Map(); // "r:<room>" | "u:<user id>" -> conversation
export const people = new Map(); // user id -> {id, name, online, status}

/** The features' functions that other features call; each module fills its own in its setup.
 * Sealed: a name that is not listed here cannot be filled (a typo throws). */
export const ui = Object.seal({
  // demo-rooms.js
  activate: null, ensureConv: null, renderConvLists: null, renderMeta: null,
  // demo-messages.js
  renderMessages: null, systemLine: null,
  // demo-presence.js
  seePerson: null,
  // demo-private.js
  openDm: null,
  // demo-typing.js
  renderTyping: null, stopTyping: null, typingInput: null, typingStopped: null,
});

// --- small helpers ----------------------------------------------------------------------------
export const pageUrl = (path) => new URL(path, location.href);

export function wsUrl() {
  const url = pageUrl(cfg.ws_path);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

export function el(tag, props = {}, ...children) {
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

export function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

export function avatar(id, name, extraClass = "") {
  let hash = 0;
  for (const ch of String(id)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const node = el("span", { class: `avatar ${extraClass}`, "aria-hidden": "true", text: (name || "?").slice(0, 1).toUpperCase() });
  node.style.background = `hsl(${hash % 360} 52% 40%)`;
  return node;
}

export const timeOf = (ts) => (ts ? new Date(ts) : new Date()).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
export const isAdmin = () => app.roles.some((r) => cfg.roles.admin.includes(r));
export const mayNotify = () => app.roles.some((r) => cfg.roles.notify.includes(r));

export function save() {
  if (app.session) sessionStorage.setItem(STORE, JSON.stringify(app.session));
}

/** GET a JSON resource of the HTTP API with the session's token; throws with `status`. */
export async function authedJson(path) {
  const res = await fetch(pageUrl(path), { headers: { Authorization: `Bearer ${app.session?.token}` } });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    throw Object.assign(new Error(body.error?.message || `HTTP ${res.status}`), { status: res.status });
  }
  return res.json();
}

// --- phone layout: one panel at a time, chosen by the tabs -------------------------------------
export function setView(view) {
  $("app").dataset.view = view;
  for (const tab of document.querySelectorAll(".tabs button")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "true");
    else tab.removeAttribute("aria-current");
  }
}

export function setupLayout() {
  for (const tab of document.querySelectorAll(".tabs button")) tab.addEventListener("click", () => setView(tab.dataset.view));
}
