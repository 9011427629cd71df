// switchboard.js: the browser client of Switchboard. An ES module with no dependencies and
// no build step: copy it next to your page and `import { Switchboard } from "./switchboard.js"`.
//
// What it does for you (docs/client.md is the guide):
// - sends the token in the first frame (never in the URL) and asks your getToken() for a new
//   one before the old one expires (`refresh`), and when the server closed with 4001;
// - reconnects with exponential backoff and full jitter; close codes 4000-4499 (and network
//   drops, 1001, 1011, 1013) reconnect, 1000, 1002, 1003, 1007, 1009 and 4500-4999 stop;
// - heartbeats: a `ping` every heartbeat.interval; a server silent for heartbeat.timeout is
//   treated as gone and reconnected;
// - re-joins its rooms after a reconnect with `since`, replays what was missed as ordinary
//   "message" events and reports whether the history covered the gap ("rejoined" event);
// - drops frames whose `id` it has already seen (delivery is at-most-once live, and replays
//   overlap live traffic);
// - acknowledges private messages from the inbox (`inbox.ack`);
// - send() returns a promise that resolves with the reply (`ack`, `joined`, ...) and rejects
//   with a SwitchboardError on `error`, on timeout, or when the connection dropped first.

/** Close codes after which the client stops (besides 4500-4999). Everything else reconnects. */
const STOP_CODES = new Set([1000, 1002, 1003, 1007, 1009]);

export const DEFAULTS = Object.freeze({
  token: null, // a JWT, or leave null and give getToken
  getToken: null, // async ({reason: "connect" | "refresh" | "expired"}) => JWT
  backoff: Object.freeze({ initial: 500, max: 30000, factor: 2 }), // ms
  stableAfter: 5000, // ms a connection must last for the backoff to start over
  busyAttempt: 3, // 1013 "try again later": back off as if this many attempts had failed
  connectTimeout: 10000, // ms from opening the socket to the `connected` frame
  requestTimeout: 10000, // ms send() waits for a reply
  heartbeat: true,
  refreshMargin: 60000, // ms before expiry to refresh the token (at most half its lifetime)
  refreshRetry: 5000, // ms between refresh attempts that failed
  ackInbox: true,
  inboxAckDelay: 200, // ms: acknowledgements of a burst of inbox messages go as one
  typingInterval: 3000, // ms between repeated "is typing" frames for one target
  dedupSize: 2000, // frame ids remembered
  watchNetwork: true, // reconnect at once when the browser reports it is online again
  WebSocket: null, // the WebSocket class (default: the global one)
  timers: null, // {setTimeout, clearTimeout} (default: the global ones)
  now: null, // () => ms since the epoch (default: Date.now)
  random: null, // () => [0, 1) (default: Math.random)
});

/** What to do after the socket closed with `code`: "reconnect", "token" (get a new token, then
 * reconnect) or "stop". A browser reports a dropped network as 1006: reconnect. */
export function closeAction(code) {
  if (code === 4001) return "token";
  if (code >= 4500 && code <= 4999) return "stop";
  if (code >= 4000 && code <= 4499) return "reconnect";
  return STOP_CODES.has(code) ? "stop" : "reconnect";
}

/** Exponential backoff with full jitter: a uniform delay in [0, min(max, initial * factor^attempt)). */
export function backoffDelay(attempt, { initial = 500, max = 30000, factor = 2 } = {}, random = Math.random) {
  const cap = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt)));
  return Math.floor(random() * cap);
}

/** A bounded set of recently seen frame ids; the oldest are forgotten first. */
export class RecentIds {
  constructor(limit = 2000) {
    this.limit = limit;
    this._ids = new Set();
  }

  /** Remember `id`; true when it is new, false when it was seen already. */
  add(id) {
    if (this._ids.has(id)) return false;
    this._ids.add(id);
    if (this._ids.size > this.limit) this._ids.delete(this._ids.values().next().value);
    return true;
  }

  has(id) {
    return this._ids.has(id);
  }

  get size() {
    return this._ids.size;
  }
}

/** True when offset `a` is later than `b`. Offsets are opaque strings; those of the form
 * "<epoch>:<n>" with the same epoch compare by n, any other new offset counts as later
 * (another epoch: the server's history restarted). */
export function offsetAfter(a, b) {
  if (a == null) return false;
  if (b == null) return true;
  const [ea, na] = splitOffset(a);
  const [eb, nb] = splitOffset(b);
  if (ea === eb && na !== null && nb !== null) return na > nb;
  return a !== b;
}

function splitOffset(offset) {
  const text = String(offset);
  const at = text.lastIndexOf(":");
  const n = at >= 0 && /^\d+$/.test(text.slice(at + 1)) ? Number(text.slice(at + 1)) : null;
  return [at >= 0 ? text.slice(0, at) : text, n];
}

export class SwitchboardError extends Error {
  constructor(code, message, { retryAfter = null, frame = null } = {}) {
    super(message);
    this.name = "SwitchboardError";
    this.code = code;
    this.retryAfter = retryAfter;
    this.frame = frame;
  }
}

function errorFromFrame(frame) {
  const data = frame.data || {};
  return new SwitchboardError(data.code || "ERROR", data.message || "error", {
    retryAfter: data.retry_after ?? null, frame,
  });
}

export class Switchboard {
  /** @param {string} url  the ws:// or wss:// URL of the server's WebSocket endpoint
   *  @param {object} options  see DEFAULTS */
  constructor(url, options = {}) {
    const o = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    this.url = url;
    this.options = o;
    /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
    this.state = "idle";
    /** the `connected` frame's data of the current connection */
    this.session = null;
    /** {id, username} of the connected user */
    this.user = null;
    /** rooms this client is in, each with the offset of the last message it saw */
    this.rooms = new Map();
    this._WS = o.WebSocket || globalThis.WebSocket;
    const timers = o.timers || globalThis;
    this._setTimeout = (fn, ms) => timers.setTimeout(fn, ms);
    this._clearTimeout = (handle) => timers.clearTimeout(handle);
    this._now = o.now || (() => Date.now());
    this._random = o.random || Math.random;
    this._listeners = new Map();
    this._seen = new RecentIds(o.dedupSize);
    this._pending = new Map(); // frame id -> {frame, resolve, reject, timer, written}
    this._timers = new Map(); // name -> handle
    this._waiters = []; // connect() promises
    this._token = o.token;
    this._tokenReason = "connect";
    this._ws = null;
    this._seq = 0;
    this._generation = 0;
    this._attempt = 0;
    this._openedAt = 0;
    this._lastFrameAt = 0;
    this._skew = 0; // server clock minus ours, in ms
    this._stopped = true;
    this._everConnected = false;
    this._inboxAck = null;
    this._inboxAcked = null;
    this._rejoins = new Set(); // ids of the join frames sent to re-join after a reconnect
    this._typing = new Map();
    this._status = null;
    this._onOnline = () => {
      if (this.state === "reconnecting") this._open();
    };
  }

  // --- events -----------------------------------------------------------------------------

  /** Listen to an event: a server type ("message", "typing", "presence", "notification",
   * "user_joined", ...) gets the frame; the client's own events are "state", "connected",
   * "disconnected", "rejoined", "error" and "frame" (every frame). Returns an unsubscribe
   * function. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  once(event, fn) {
    const off = this.on(event, (value) => {
      off();
      fn(value);
    });
    return off;
  }

  _emit(event, value) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try {
        fn(value);
      } catch (err) {
        // a failing listener must not break the client or the other listeners
        if (typeof globalThis.reportError === "function") globalThis.reportError(err);
        else console.error(err);
      }
    }
  }

  // --- connecting -------------------------------------------------------------------------

  /** Connect (or reconnect now, when waiting to retry). Resolves with the `connected` data;
   * rejects with a SwitchboardError when the client stops (auth failed, close() ...). */
  connect() {
    if (this.state === "open") return Promise.resolve(this.session);
    const promise = new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
    if (this._stopped) {
      this._attempt = 0; // a new start, not one more failure
      if (this.options.watchNetwork && typeof globalThis.addEventListener === "function") {
        globalThis.addEventListener("online", this._onOnline);
      }
    }
    this._stopped = false;
    if (this.state !== "connecting") this._open();
    return promise;
  }

  /** Give the client a new token to use from the next connection on. */
  setToken(token) {
    this._token = token;
  }

  /** Close for good (until connect() is called again). */
  close(code = 1000, reason = "client closed") {
    const ws = this._ws;
    this._stop({ code, reason });
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
  }

  async _open() {
    this._clearTimer("reconnect");
    const ws0 = this._ws;
    if (ws0) {
      this._ws = null;
      ws0.close();
    }
    this._setState("connecting", { attempt: this._attempt });
    const generation = ++this._generation; // a later _open() or close() makes this one moot
    let token = this._token;
    if (!token && this.options.getToken) {
      try {
        token = await this.options.getToken({ reason: this._tokenReason });
      } catch (err) {
        if (generation !== this._generation || this._stopped) return;
        this._emit("error", new SwitchboardError("TOKEN_UNAVAILABLE", `getToken failed: ${err?.message || err}`));
        this._scheduleReconnect({ code: 0, reason: "no token" });
        return;
      }
      if (generation !== this._generation || this._stopped) return;
      this._token = token;
    }
    if (!token) {
      this._stop({ code: 4500, reason: "no token: give options.token or options.getToken" });
      return;
    }
    let ws;
    try {
      ws = new this._WS(this.url);
    } catch (err) {
      this._stop({ code: 1002, reason: `cannot open ${this.url}: ${err?.message || err}` });
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      if (ws === this._ws) this._write({ type: "auth", id: this._nextId(), data: { token } });
    };
    ws.onmessage = (event) => {
      if (ws === this._ws) this._onFrame(event.data);
    };
    ws.onclose = (event) => this._onClose(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
    this._timer("connect", this.options.connectTimeout, () => this._drop(ws, 4000, "connect timeout"));
  }

  /** Give up on a socket we no longer trust, and handle it as closed with `code`. */
  _drop(ws, code, reason) {
    this._onClose(ws, code, reason);
    try {
      ws.close(4000, reason);
    } catch {
      ws.close();
    }
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    for (const name of ["connect", "heartbeat", "refresh", "inboxAck"]) this._clearTimer(name);
    if (this._openedAt && this._now() - this._openedAt >= this.options.stableAfter) this._attempt = 0;
    this._openedAt = 0;
    const lost = new SwitchboardError("DISCONNECTED", `connection closed (${code}) before the reply`);
    for (const [id, entry] of this._pending) {
      if (entry.written) this._settle(id, null, lost);
    }
    this._emit("disconnected", { code, reason });
    const action = closeAction(code);
    if (action === "stop" || (action === "token" && !this.options.getToken)) {
      this._stop({ code, reason });
      return;
    }
    if (action === "token") {
      this._token = null;
      this._tokenReason = "expired";
    }
    if (code === 1013) this._attempt = Math.max(this._attempt, this.options.busyAttempt);
    this._scheduleReconnect({ code, reason });
  }

  _scheduleReconnect({ code, reason }) {
    const delay = backoffDelay(this._attempt, this.options.backoff, this._random);
    this._attempt += 1;
    this._setState("reconnecting", { delay, retryAt: this._now() + delay, attempt: this._attempt, code, reason });
    this._timer("reconnect", delay, () => this._open());
  }

  _stop({ code, reason }) {
    this._stopped = true;
    this._ws = null;
    for (const name of [...this._timers.keys()]) this._clearTimer(name);
    if (typeof globalThis.removeEventListener === "function") globalThis.removeEventListener("online", this._onOnline);
    const closed = new SwitchboardError("CLOSED", `client stopped: ${reason || code}`);
    for (const id of [...this._pending.keys()]) this._settle(id, null, closed);
    for (const waiter of this._waiters.splice(0)) waiter.reject(closed);
    this._setState("closed", { code, reason });
  }

  _setState(state, detail = {}) {
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  // --- frames in --------------------------------------------------------------------------

  _onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    this._lastFrameAt = this._now();
    if (frame.id != null && !this._seen.add(frame.id)) return; // a duplicate
    this._emit("frame", frame);
    const pending = frame.reply_to != null && this._pending.has(frame.reply_to);
    switch (frame.type) {
      case "connected":
        this._onConnected(frame);
        break;
      case "refreshed":
        this._scheduleRefresh(frame.data?.expires_at);
        break;
      case "joined":
        this._onJoined(frame);
        break;
      case "left":
        this.rooms.delete(frame.data?.room ?? frame.room);
        this._emit("left", frame);
        break;
      case "message":
        this._onMessage(frame);
        break;
      case "error":
        if (!pending) this._emit("error", errorFromFrame(frame));
        break;
      case "ack":
      case "pong":
        break;
      default:
        this._emit(frame.type, frame);
    }
    if (pending) {
      if (frame.type === "error") this._settle(frame.reply_to, null, errorFromFrame(frame));
      else this._settle(frame.reply_to, frame);
    }
  }

  _onConnected(frame) {
    const data = frame.data || {};
    this._clearTimer("connect");
    const reconnected = this._everConnected;
    this._everConnected = true;
    this._tokenReason = "connect";
    this.session = data;
    this.user = data.user || null;
    this._openedAt = this._now();
    if (frame.ts) {
      const serverNow = Date.parse(frame.ts);
      if (!Number.isNaN(serverNow)) this._skew = serverNow - this._now();
    }
    for (const room of data.rooms || []) {
      if (!this.rooms.has(room)) this.rooms.set(room, { offset: null });
    }
    this._setState("open", { reconnected });
    // re-joins go out before anything queued while disconnected (which may need the rooms)
    for (const [room, info] of this.rooms) this._rejoin(room, info.offset, reconnected);
    if (this._status && this._status.status !== "online") {
      this.send("presence", { data: this._status }).catch((err) => this._emit("error", err));
    }
    for (const entry of this._pending.values()) {
      if (!entry.written) this._flush(entry);
    }
    this._startHeartbeat();
    this._scheduleRefresh(data.expires_at);
    for (const waiter of this._waiters.splice(0)) waiter.resolve(data);
    this._emit("connected", { ...data, reconnected });
  }

  _rejoin(room, since, reconnected) {
    const frame = { type: "join", room, data: since != null ? { since } : {} };
    const reply = this._request(frame, this.options.requestTimeout);
    if (reconnected) this._rejoins.add(frame.id);
    reply.then(
      () => this._rejoins.delete(frame.id),
      (err) => {
        this._rejoins.delete(frame.id);
        if (err.code !== "DISCONNECTED" && err.code !== "CLOSED") {
          this.rooms.delete(room);
          this._emit("error", err);
        }
      },
    );
  }

  _onJoined(frame) {
    const data = frame.data || {};
    const room = data.room ?? frame.room;
    if (room == null) return;
    const info = this.rooms.get(room) || { offset: null };
    this.rooms.set(room, info);
    let fresh = 0;
    for (const missed of data.missed || []) {
      if (missed.id != null && !this._seen.add(missed.id)) continue;
      fresh += 1;
      this._onMessage(missed.type ? missed : { ...missed, type: "message" });
    }
    if (data.offset != null && offsetAfter(data.offset, info.offset)) info.offset = data.offset;
    this._emit("joined", frame);
    if (this._rejoins.has(frame.reply_to)) {
      // missed: how many of the replayed messages were new to this client
      this._emit("rejoined", { room, recovered: data.recovered !== false, missed: fresh });
    }
  }

  _onMessage(frame) {
    if (frame.room != null) {
      const info = this.rooms.get(frame.room);
      if (info && offsetAfter(frame.offset, info.offset)) info.offset = frame.offset;
    } else if (frame.offset != null && this.options.ackInbox && frame.from?.id !== this.user?.id) {
      this._queueInboxAck(frame.offset);
    }
    this._emit("message", frame);
  }

  _queueInboxAck(offset) {
    if (offsetAfter(offset, this._inboxAck)) this._inboxAck = offset;
    this._timer("inboxAck", this.options.inboxAckDelay, () => {
      const upTo = this._inboxAck;
      if (upTo === this._inboxAcked) return;
      this.send("inbox.ack", { data: { offset: upTo } }).then(
        () => {
          this._inboxAcked = upTo;
        },
        (err) => this._emit("error", err),
      );
    });
  }

  // --- heartbeat and token refresh -------------------------------------------------------

  _startHeartbeat() {
    if (!this.options.heartbeat) return;
    const hb = this.session?.heartbeat || {};
    const interval = (hb.interval || 25) * 1000;
    const timeout = (hb.timeout || 60) * 1000;
    const ws = this._ws;
    const tick = () => {
      if (ws !== this._ws) return;
      if (this._now() - this._lastFrameAt > timeout) {
        this._drop(ws, 4010, "heartbeat timeout: the server went silent");
        return;
      }
      this._write({ type: "ping" });
      this._timer("heartbeat", interval, tick);
    };
    this._timer("heartbeat", interval, tick);
  }

  _scheduleRefresh(expiresAt) {
    this._clearTimer("refresh");
    if (expiresAt == null || !this.options.getToken) return;
    const left = expiresAt * 1000 - this._skew - this._now();
    const margin = Math.min(this.options.refreshMargin, Math.max(left, 0) / 2);
    this._timer("refresh", Math.max(0, left - margin), () => this._refresh());
  }

  async _refresh() {
    const ws = this._ws;
    const retry = () => {
      if (ws === this._ws) this._timer("refresh", this.options.refreshRetry, () => this._refresh());
    };
    let token;
    try {
      token = await this.options.getToken({ reason: "refresh" });
    } catch (err) {
      this._emit("error", new SwitchboardError("TOKEN_UNAVAILABLE", `getToken failed: ${err?.message || err}`));
      retry();
      return;
    }
    if (ws !== this._ws || this.state !== "open") return;
    this._token = token;
    try {
      await this.send("refresh", { data: { token } }); // "refreshed" reschedules
    } catch (err) {
      this._emit("error", err);
      retry();
    }
  }

  // --- frames out -------------------------------------------------------------------------

  /** Send a frame `{type, ...fields}` (fields: room, to, data). Resolves with the reply frame
   * (`ack`, `joined`, `history`, ...); rejects with a SwitchboardError on an `error` reply
   * (err.code, err.retryAfter), after `timeout` ms, or when the connection closed before the
   * reply came (code DISCONNECTED: it may or may not have been handled). While disconnected the
   * frame waits for the next connection (up to `timeout`). With `reply: false` (types the
   * server does not answer, like typing) it resolves to true when written now, false when
   * dropped because the client is not connected. */
  send(type, fields = {}, { timeout = this.options.requestTimeout, reply = true } = {}) {
    const frame = { ...fields, type };
    if (!reply) {
      if (this.state !== "open") return Promise.resolve(false);
      return Promise.resolve(this._write(frame));
    }
    if (this._stopped && this.state !== "open") {
      return Promise.reject(new SwitchboardError("CLOSED", "not connected: call connect() first"));
    }
    return this._request(frame, timeout);
  }

  /** Give `frame` an id, write it now or when connected, and settle with its reply. */
  _request(frame, timeout) {
    frame.id = this._nextId();
    return new Promise((resolve, reject) => {
      const entry = { frame, resolve, reject, written: false, timer: null };
      entry.timer = this._setTimeout(() => {
        this._settle(frame.id, null, new SwitchboardError("TIMEOUT", `no reply to ${frame.type} within ${timeout} ms`));
      }, timeout);
      this._pending.set(frame.id, entry);
      if (this.state === "open") this._flush(entry);
    });
  }

  _flush(entry) {
    entry.written = this._write(entry.frame);
  }

  _settle(id, frame, error) {
    const entry = this._pending.get(id);
    if (!entry) return;
    this._pending.delete(id);
    this._clearTimeout(entry.timer);
    if (error) entry.reject(error);
    else entry.resolve(frame);
  }

  _write(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  _nextId() {
    this._seq += 1;
    return `c${this._seq}`;
  }

  // --- the built-in message types ----------------------------------------------------------

  /** Join a room (created when the server allows it); resolves with the `joined` data. */
  async join(room) {
    const frame = await this.send("join", { room });
    return frame.data;
  }

  async leave(room) {
    const frame = await this.send("leave", { room });
    this.rooms.delete(room);
    return frame.data;
  }

  /** A message to a room's members; resolves with the ack's {id, offset}. */
  async sendMessage(room, content, extra = {}) {
    return this._sendContent({ room }, content, extra);
  }

  /** A private message to every connection of user `to` (kept in their inbox when offline). */
  async sendPrivate(to, content, extra = {}) {
    return this._sendContent({ to }, content, extra);
  }

  async _sendContent(target, content, extra) {
    const ack = await this.send("message", { ...target, data: { ...extra, content } });
    if (ack.data?.id != null) this._seen.add(ack.data.id); // our own copy, if replayed, is not new
    return ack.data;
  }

  /** Room history: resolves with the messages (oldest first). */
  async history(room, { since = null, limit = 50 } = {}) {
    const data = { limit };
    if (since != null) data.since = since;
    const frame = await this.send("history", { room, data });
    return frame.data?.messages || [];
  }

  /** "is typing" for a room ({room}) or a user ({to}). Call it on every keystroke: the frames
   * are spaced by options.typingInterval; call it with false when the user stops or sends. */
  typing(target, isTyping = true) {
    const key = target.room != null ? `r:${target.room}` : `u:${target.to}`;
    const last = this._typing.get(key);
    if (isTyping) {
      if (last != null && this._now() - last < this.options.typingInterval) return;
      this._typing.set(key, this._now());
    } else {
      if (last == null) return;
      this._typing.delete(key);
    }
    this.send("typing", { ...target, data: { is_typing: isTyping } }, { reply: false });
  }

  /** Set this user's status ("online", "away", "busy", "offline"), kept across reconnects. */
  async setStatus(status, extra = {}) {
    this._status = { ...extra, status };
    const frame = await this.send("presence", { data: this._status });
    return frame.data;
  }

  /** Presence of users: resolves with [{user_id, online, status, last_seen, connections}]. */
  async queryPresence(userIds) {
    const frame = await this.send("presence.query", { data: { user_ids: userIds } });
    return frame.data?.users || [];
  }

  /** Mark notifications read by their ids. */
  async markNotificationsRead(ids) {
    const frame = await this.send("notification.read", { data: { ids } });
    return frame.data;
  }

  // --- timers -------------------------------------------------------------------------------

  _timer(name, ms, fn) {
    this._clearTimer(name);
    this._timers.set(name, this._setTimeout(() => {
      this._timers.delete(name);
      fn();
    }, ms));
  }

  _clearTimer(name) {
    if (this._timers.has(name)) {
      this._clearTimeout(this._timers.get(name));
      this._timers.delete(name);
    }
  }
}
