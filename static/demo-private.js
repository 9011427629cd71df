// Private messages: a conversation with one user, opened from the form or from the people
// list. The server keeps each conversation: on every connection the page lists them again
// (GET /api/messages/conversations) and shows their messages (history with `to`, in
// demo-rooms.js). Messages that came while this user was offline arrive from the server's
// inbox on the next connection, as ordinary "message" events (demo-messages.js shows them); the
// client acknowledges them (inbox.ack) so they do not come again.
import { $, F, app, authedJson, people, setView, ui } from "./demo-core.js";

/** List the conversations the server keeps for this user, the most recent first; what waited
 * in the inbox counts as unread. */
export async function loadConversations() {
  if (!F.private) return;
  let listed;
  try {
    listed = (await authedJson("api/messages/conversations")).conversations || [];
  } catch {
    return; // the HTTP API is not there, or refuses: live messages still come
  }
  for (const c of listed) {
    if (c.username) ui.seePerson(c.user_id, c.username);
    const conv = ui.ensureConv(`u:${c.user_id}`, c.username || people.get(c.user_id)?.name || c.user_id);
    if (conv.key !== app.active) conv.unread = Math.max(conv.unread, c.unread || 0);
  }
  ui.renderConvLists();
}

/** Open (or start) the private conversation with `userId` and put the cursor in the box. */
export function openDm(userId) {
  const person = people.get(userId);
  const conv = ui.ensureConv(`u:${userId}`, person?.name || userId);
  ui.activate(conv.key);
  setView("chat");
  $("composer-input").focus();
}

export function setupPrivate() {
  Object.assign(ui, { openDm });

  $("dm-form")?.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("dm-input").value.trim();
    if (!id) return;
    $("dm-input").value = "";
    openDm(id);
  });
}
