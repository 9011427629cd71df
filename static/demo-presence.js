// People and their status: who is online (GET /api/online), room-mates joining and leaving,
// presence and user_status events, presence.query, and a selector for this user's own status.
import { $, F, app, authedJson, avatar, convs, el, people, ui } from "./demo-core.js";

/** Remember (or update) person `id`, with `change` ({online, status}). */
export function seePerson(id, name, change = {}) {
  if (id == null) return;
  const person = people.get(id) || { id, name: name || id, online: false, status: "offline" };
  if (name) person.name = name;
  Object.assign(person, change);
  people.set(id, person);
  renderPeople();
}

/** The client's "user_joined" and "user_left" events (`what`: "joined" or "left"). */
export function memberEvent(frame, what) {
  const data = frame.data || {};
  const user = data.user || frame.from;
  if (!user) return;
  const room = data.room ?? frame.room;
  const conv = convs.get(`r:${room}`);
  if (conv && data.members_count != null) conv.members = data.members_count;
  if (what === "joined") {
    seePerson(user.id, user.username, { online: true, status: people.get(user.id)?.status === "offline" ? "online" : people.get(user.id)?.status || "online" });
    if (F.presence) app.sb.queryPresence([user.id]).then(applyPresenceState, () => {});
  }
  ui.systemLine(`r:${room}`, `${user.username} ${what}`);
  if (app.active === `r:${room}`) ui.renderMeta();
}

function applyPresenceState(users) {
  for (const u of users || []) seePerson(u.user_id, u.username, { online: !!u.online, status: u.online ? u.status || "online" : "offline" });
  ui.renderMeta();
}

/** The client's "presence" event: a room-mate set a status. */
export function onPresence(frame) {
  const data = frame.data || {};
  const id = data.user_id ?? frame.from?.id;
  const status = data.status || "online";
  seePerson(id, frame.from?.username || data.username, { online: status !== "offline", status });
  ui.renderMeta();
}

/** The client's "user_status" event: someone came online or went offline. */
export function onUserStatus(frame) {
  const data = frame.data || {};
  const online = data.status === "online";
  const current = people.get(data.user_id);
  seePerson(data.user_id, data.username || frame.from?.username, {
    online, status: online ? (current?.status && current.status !== "offline" ? current.status : "online") : "offline",
  });
  ui.renderMeta();
}

/** The status the server keeps for this user (set in another tab, or before a reload) in the
 * status menu: the page does not start over at "Online" while everyone else sees "Busy". */
export function showMyStatus(me) {
  if (!F.presence) return;
  app.sb.queryPresence([me.id]).then((users) => {
    const mine = (users || []).find((u) => u.user_id === me.id);
    const status = mine?.online && mine.status ? mine.status : "online";
    const select = $("status-select");
    if (select) select.value = status;
    seePerson(me.id, me.username, { online: true, status });
  }, () => {});
}

/** Who is online now, from the HTTP API. */
export async function loadOnline() {
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
    const action = F.private && p.id !== app.me?.id
      ? el("button", { type: "button", class: "button ghost", text: "Message", "aria-label": `Message ${p.name}`, onclick: () => ui.openDm(p.id) })
      : null;
    return el("li", { dataset: { user: p.id, status } }, wrap,
      el("span", { class: "person-text" },
        el("span", { class: "person-name", text: p.id === app.me?.id ? `${p.name} (you)` : p.name }),
        el("span", { class: "person-status", text: status })), action);
  }));
}

export function setupPresence() {
  Object.assign(ui, { seePerson });

  $("status-select")?.addEventListener("change", async (event) => {
    const status = event.target.value;
    try {
      await app.sb.setStatus(status);
      seePerson(app.me.id, app.me.username, { status, online: true });
    } catch (err) {
      ui.systemLine(app.active, `Status not changed: ${err.message}`);
    }
  });
}
