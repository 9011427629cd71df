// Notifications: pushed by the server (and replayed on each connect until read), listed with an
// unread count on the panel and on the phone's tab, marked read with notification.read.
import { $, app, el, timeOf, ui } from "./demo-core.js";

const notes = new Map(); // notification id -> {id, title, message, ts, read}

/** The client's "notification" event. */
export function onNotification(frame) {
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

export function setupNotifications() {
  $("mark-read")?.addEventListener("click", async () => {
    const ids = [...notes.values()].filter((n) => !n.read).map((n) => n.id);
    try {
      await app.sb.markNotificationsRead(ids);
      for (const id of ids) notes.get(id).read = true;
      renderNotes();
    } catch (err) {
      ui.systemLine(app.active, `Could not mark read: ${err.message}`);
    }
  });
}
