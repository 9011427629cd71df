// Private messages: a conversation with one user, opened from the form or from the people
// list. Messages that came while this user was offline arrive from the server's inbox on the
// next connection, as ordinary "message" events (demo-messages.js shows them); the client
// acknowledges them (inbox.ack) so they do not come again.
import { $, people, setView, ui } from "./demo-core.js";

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
