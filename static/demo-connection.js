// Signing in (a name through dev login, or a pasted token), the client's connection state with
// its reconnect countdown, and signing out.
import { Switchboard } from "./switchboard.js";
import { $, FLASH, STORE, app, claimsOf, pageUrl, save, wsUrl } from "./demo-core.js";

let countdown = null;
let wireClient = () => {}; // demo.js: listens to the client's events

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

export function showLogin(message = "") {
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
  const client = app.sb;
  app.sb = null; // before close(): its "closed" state must not sign out twice
  client?.close();
  sessionStorage.removeItem(STORE);
  if (message) sessionStorage.setItem(FLASH, message);
  location.reload();
}

/** Sign in with `state` ({mode, username, admin, token, rooms}) and connect. */
export function start(state) {
  app.session = state;
  const session = state;
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
  app.sb = new Switchboard(wsUrl(), { token: session.mode === "dev" ? null : session.token, getToken });
  wireClient(app.sb);
  app.sb.connect().catch(() => {}); // when the client stops, the "closed" state signs out
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

/** The client's "state" event. */
export function onState({ state, retryAt, code, reason, attempt }) {
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
  } else if (state === "closed" && app.sb) {
    const why = STOP_TEXT[code] || reason || `close code ${code}`;
    signOut(closedMessage(why));
  }
}

/** The sign-in forms, sign-out and "Retry now"; `wire(client)` listens to each new client. */
/** The Ping button: a `ping` frame and the time until its `pong`, as the user sees it. */
async function ping() {
  const out = $("ping-result");
  const started = performance.now();
  try {
    await app.sb.send("ping");
    out.textContent = `${(performance.now() - started).toFixed(1)} ms`;
  } catch (err) {
    out.textContent = `no pong: ${err.message}`;
  }
}

export function setupConnection({ wire }) {
  wireClient = wire;

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
  $("ping").addEventListener("click", ping);
  $("retry-now").addEventListener("click", () => app.sb?.connect().catch(() => {}));
}
