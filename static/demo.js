// The demo page: everything here goes through switchboard.js, the way an app would use it.
// The server renders its config into #sb-config (features, limits, dev login); every URL is
// relative to the page, so the page also works behind a reverse proxy under a path prefix.
//
// One module per feature (ES modules, all from this server: the page's CSP allows nothing
// else): demo-core.js (config, shared state, helpers, and `ui`, through which the features call
// each other, as they import only demo-core.js), demo-connection.js (sign-in and the connection
// state), demo-rooms.js (conversations, rooms, history), demo-messages.js (messages and the
// composer), demo-private.js (private messages), demo-typing.js, demo-presence.js,
// demo-notifications.js, demo-operator.js. This one wires them to the client and starts.
import { $, FLASH, STORE, app, cfg, claimsOf, avatar, setupLayout } from "./demo-core.js";
import { onState, setupConnection, showLogin, start } from "./demo-connection.js";
import { addMessage, setupMessages, systemLine } from "./demo-messages.js";
import { onNotification, setupNotifications } from "./demo-notifications.js";
import { setupNotifyForm, setupOperator } from "./demo-operator.js";
import { loadOnline, memberEvent, onPresence, onUserStatus, seePerson, setupPresence, showMyStatus } from "./demo-presence.js";
import { loadConversations, setupPrivate } from "./demo-private.js";
import { dropConv, joinRoom, loadRooms, onJoined, onRejoined, setupRooms } from "./demo-rooms.js";
import { clearTyping, onTyping, setupTyping } from "./demo-typing.js";

/** Route the client's events to the features. */
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
  client.on("broadcast", (frame) => systemLine(app.active, `Announcement: ${frame.data?.content ?? JSON.stringify(frame.data)}`));
  client.on("system_message", (frame) => systemLine(app.active, frame.data?.content ?? frame.data?.message ?? "System message"));
  client.on("error", (err) => {
    if (err.code !== "UNAUTHORIZED") systemLine(app.active, `Error: ${err.message}`);
  });
  client.on("disconnected", () => clearTyping());
}

/** Each connection: who we are; on the first one, the rooms to join, the operator panel and the status. */
async function onConnected(data) {
  const me = data.user;
  app.me = me;
  const claims = claimsOf(app.session.token || "");
  app.roles = Array.isArray(claims.roles) ? claims.roles : [];
  $("me").hidden = false;
  $("me-name").textContent = me.username;
  $("me-avatar").replaceWith(Object.assign(avatar(me.id, me.username), { id: "me-avatar" }));
  seePerson(me.id, me.username, { online: true, status: $("status-select")?.value || "online" });
  if (!data.reconnected) {
    const rooms = app.session.rooms;
    const wanted = rooms.length ? rooms : data.rooms.length ? [] : ["general"];
    for (const room of wanted) joinRoom(room, { focus: false });
    setupOperator();
    showMyStatus(me);
  }
  loadRooms();
  loadOnline();
  loadConversations();
}

setupConnection({ wire });
setupRooms();
setupPrivate();
setupMessages();
setupTyping();
setupPresence();
setupNotifications();
setupNotifyForm();
setupLayout();

// --- go -----------------------------------------------------------------------------------------------
const saved = JSON.parse(sessionStorage.getItem(STORE) || "null");
const flash = sessionStorage.getItem(FLASH) || "";
sessionStorage.removeItem(FLASH);
if (saved && (saved.mode === "token" || cfg.dev_login)) start(saved);
else showLogin(flash);
