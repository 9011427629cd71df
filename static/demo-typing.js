// "alice is typing…": this user's typing goes out through the client (spaced by its
// typingInterval; stopped when the box is emptied, sent or left), others' is shown for the
// open conversation until they stop, send, or the server's typing timeout passes.
import { $, F, app, cfg, convs, ui } from "./demo-core.js";

const typers = new Map(); // conversation key -> Map(user id -> {name, until})

const targetOf = (conv) => (conv.kind === "room" ? { room: conv.id } : { to: conv.id });

/** The composer's text changed: typing while there is text, stopped when it is emptied. */
export function typingInput() {
  const conv = convs.get(app.active);
  if (!F.typing || !conv || !app.sb) return;
  if ($("composer-input").value.trim()) app.sb.typing(targetOf(conv), true);
  else typingStopped();
}

export function typingStopped() {
  const conv = convs.get(app.active);
  if (F.typing && conv && app.sb) app.sb.typing(targetOf(conv), false);
}

/** The client's "typing" event. */
export function onTyping(frame) {
  if (!frame.from || frame.from.id === app.me?.id) return;
  const key = frame.room != null ? `r:${frame.room}` : `u:${frame.from.id}`;
  if (!typers.has(key)) typers.set(key, new Map());
  if (frame.data?.is_typing) {
    typers.get(key).set(frame.from.id, { name: frame.from.username, until: Date.now() + cfg.limits.typing_timeout * 1000 });
    setTimeout(renderTyping, cfg.limits.typing_timeout * 1000 + 50);
  } else typers.get(key).delete(frame.from.id);
  renderTyping();
}

/** `userId` sent a message in conversation `key`: they are no longer typing. */
export function stopTyping(key, userId) {
  if (typers.get(key)?.delete(userId)) renderTyping();
}

/** The connection dropped: nobody is known to be typing any more. */
export function clearTyping() {
  typers.clear();
  renderTyping();
}

export function renderTyping() {
  const node = $("typing");
  if (!node) return;
  const now = Date.now();
  const names = [...(typers.get(app.active)?.values() || [])].filter((t) => t.until > now).map((t) => t.name);
  node.textContent = names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` :
    names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : `${names.length} people are typing…`;
}

export function setupTyping() {
  Object.assign(ui, { renderTyping, stopTyping, typingInput, typingStopped });

  $("composer-input").addEventListener("blur", () => typingStopped());
}
