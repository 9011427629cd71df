// Unit tests of static/switchboard.js: a fake WebSocket and a fake clock stand in for the
// network and time, so every case is deterministic. tests/e2e/test_client_unit.py runs them in
// headless Chromium (runner.html); each test is [name, async function], failing by throwing.
import {
  Switchboard, RecentIds, backoffDelay, closeAction, offsetAfter,
} from "../../static/switchboard.js";

// --- fakes ------------------------------------------------------------------------------------------
function fakeClock() {
  const clock = {
    now: 1_000_000,
    timers: new Map(),
    seq: 0,
    setTimeout(fn, ms) {
      clock.seq += 1;
      clock.timers.set(clock.seq, { at: clock.now + Math.max(0, ms), fn });
      return clock.seq;
    },
    clearTimeout(id) {
      clock.timers.delete(id);
    },
    /** Move time forward by `ms`, running the timers due on the way, in order. */
    async advance(ms) {
      const end = clock.now + ms;
      for (;;) {
        await settle();
        let next = null;
        for (const [id, t] of clock.timers) if (t.at <= end && (next === null || t.at < clock.timers.get(next).at)) next = id;
        if (next === null) break;
        const timer = clock.timers.get(next);
        clock.timers.delete(next);
        clock.now = Math.max(clock.now, timer.at);
        timer.fn();
      }
      clock.now = end;
      await settle();
    },
  };
  return clock;
}

/** Let promise callbacks (async getToken, send().then) run. */
async function settle() {
  for (let i = 0; i < 20; i += 1) await Promise.resolve();
}

function fakeNetwork() {
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code) {
      this.closedWith = code ?? 1000;
      this.readyState = 3;
    }
    // the server's side
    accept(data = {}) {
      this.readyState = 1;
      this.onopen?.({});
      const auth = this.sent[0];
      this.receive({ type: "connected", id: `srv-${Math.random()}`, reply_to: auth?.id, ts: new Date(1_000_000).toISOString(),
        data: { user: { id: "u1", username: "alice" }, rooms: [], heartbeat: { interval: 25, timeout: 60 }, expires_at: null, ...data } });
    }
    receive(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    drop(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    frames(type) {
      return this.sent.filter((f) => f.type === type);
    }
    reply(type, data, to) {
      this.receive({ type, id: `srv-${type}-${to.id}`, reply_to: to.id, data });
    }
  }
  return { FakeSocket, sockets, last: () => sockets[sockets.length - 1] };
}

function setup(options = {}) {
  const clock = fakeClock();
  const net = fakeNetwork();
  const client = new Switchboard("ws://server.test/ws", {
    token: "tok-1", WebSocket: net.FakeSocket, timers: clock, now: () => clock.now, random: () => 0.5,
    watchNetwork: false, ...options,
  });
  const events = [];
  for (const name of ["state", "message", "rejoined", "error", "joined", "connected", "notification"]) {
    client.on(name, (value) => events.push([name, value]));
  }
  return { clock, net, client, events, of: (name) => events.filter((e) => e[0] === name).map((e) => e[1]) };
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

function eq(actual, expected, message = "") {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${message}\n  expected ${e}\n  got      ${a}`);
}

async function connected(t, data = {}) {
  const promise = t.client.connect();
  await settle();
  t.net.last().accept(data);
  await promise;
  return t.net.last();
}

const roomMessage = (id, offset, content = id, room = "general") =>
  ({ type: "message", id, room, offset, from: { id: "u2", username: "bob" }, data: { content } });

// --- the tests ----------------------------------------------------------------------------------------
export const tests = [
  ["backoff: full jitter within an exponentially growing cap", async () => {
    const opts = { initial: 500, max: 30000, factor: 2 };
    eq([0, 1, 2, 3, 6, 7, 20].map((n) => backoffDelay(n, opts, () => 0.999999)),
      [499, 999, 1999, 3999, 29999, 29999, 29999], "the cap doubles up to max");
    eq(backoffDelay(5, opts, () => 0), 0, "full jitter starts at zero");
    const seen = new Set();
    for (let i = 0; i < 200; i += 1) {
      const d = backoffDelay(3, opts);
      assert(d >= 0 && d < 4000, `delay ${d} outside [0, 4000)`);
      seen.add(Math.floor(d / 1000));
    }
    eq([...seen].sort(), [0, 1, 2, 3], "Math.random spreads delays over the whole range");
  }],

  ["backoff: consecutive failures wait longer, a stable connection starts over", async () => {
    const t = setup();
    await connected(t);
    t.net.last().drop(1006);
    const delays = [];
    for (let i = 0; i < 8; i += 1) {
      const state = t.of("state").at(-1);
      eq(state.state, "reconnecting");
      delays.push(state.delay);
      await t.clock.advance(state.delay);
      t.net.last().drop(1006); // the server is still down
    }
    eq(delays, [250, 500, 1000, 2000, 4000, 8000, 15000, 15000], "random 0.5 of a doubling cap, capped at max");
    await t.clock.advance(t.of("state").at(-1).delay);
    t.net.last().accept();
    await t.clock.advance(4000); // open, but not yet stableAfter (5 s)
    t.net.last().drop(4008);
    eq(t.of("state").at(-1).delay, 15000, "a short-lived connection does not reset the backoff");
    await t.clock.advance(15000);
    t.net.last().accept();
    await t.clock.advance(6000);
    t.net.last().drop(4008);
    eq(t.of("state").at(-1).delay, 250, "after a stable connection the backoff starts over");
  }],

  ["backoff: 1013 (try again later) starts further up", async () => {
    const t = setup();
    await connected(t);
    t.net.last().drop(1013);
    eq(t.of("state").at(-1).delay, 2000, "as after busyAttempt=3 failures: 0.5 * 500 * 2^3");
  }],

  ["close codes: which reconnect and which stop", async () => {
    // tests/test_close_codes_js.py holds closeAction to the server's catalogue for every code
    const table = {
      1000: "stop", 1001: "reconnect", 1002: "stop", 1003: "stop", 1006: "reconnect", 1007: "stop",
      1009: "stop", 1011: "reconnect", 1013: "reconnect", 4000: "reconnect", 4001: "token",
      4008: "reconnect", 4010: "reconnect", 4013: "reconnect", 4499: "reconnect", 4500: "stop",
      4501: "stop", 4503: "stop", 4507: "stop", 4999: "stop",
    };
    eq(Object.fromEntries(Object.keys(table).map((c) => [c, closeAction(Number(c))])), table);
    for (const code of [4008, 4010, 4013, 1001, 1006, 1011]) {
      const t = setup();
      await connected(t);
      t.net.last().drop(code);
      await t.clock.advance(t.of("state").at(-1).delay);
      eq(t.net.sockets.length, 2, `${code} reconnects`);
    }
    for (const code of [1000, 1002, 1009, 4500, 4501, 4503, 4507]) {
      const t = setup();
      await connected(t);
      t.net.last().drop(code, "bye");
      await t.clock.advance(120000);
      eq(t.net.sockets.length, 1, `${code} must not reconnect`);
      eq(t.of("state").at(-1), { state: "closed", code, reason: "bye" });
    }
  }],

  ["4001: asks the app for a new token, then reconnects with it", async () => {
    const reasons = [];
    const t = setup({ token: "old", getToken: async ({ reason }) => { reasons.push(reason); return "new"; } });
    await connected(t);
    eq(t.net.sockets[0].sent[0], { type: "auth", id: t.net.sockets[0].sent[0].id, data: { token: "old" } });
    t.net.last().drop(4001, "token expired");
    await t.clock.advance(t.of("state").at(-1).delay);
    eq(reasons, ["expired"]);
    t.net.last().readyState = 1;
    t.net.last().onopen();
    eq(t.net.last().sent[0].data, { token: "new" }, "the new token goes in the first frame");
    const stopped = setup({ token: "old" });
    await connected(stopped);
    stopped.net.last().drop(4001);
    eq(stopped.client.state, "closed", "without getToken a 4001 stops");
  }],

  ["the token goes in the first frame, never in the URL", async () => {
    const t = setup({ token: "secret.jwt.value" });
    const socket = await connected(t);
    eq(socket.url, "ws://server.test/ws");
    eq(socket.sent[0].type, "auth");
    eq(socket.sent[0].data.token, "secret.jwt.value");
  }],

  ["de-duplication: a bounded memory of ids", async () => {
    const ids = new RecentIds(3);
    eq(["a", "b", "a", "c", "d", "a", "b"].map((id) => ids.add(id)), [true, true, false, true, true, true, true],
      "a is forgotten once three newer ids came");
    eq(ids.size, 3);
  }],

  ["de-duplication: a frame id seen live, replayed or acknowledged is delivered once", async () => {
    const t = setup();
    const socket = await connected(t);
    socket.receive(roomMessage("m1", "e:1"));
    socket.receive(roomMessage("m1", "e:1"));
    const sending = t.client.sendMessage("general", "mine");
    const frame = socket.frames("message")[0];
    socket.reply("ack", { id: "m2", offset: "e:2" }, frame);
    eq(await sending, { id: "m2", offset: "e:2" });
    const join = t.client.join("general");
    socket.reply("joined", { room: "general", members_count: 2, recovered: true, offset: "e:3",
      missed: [roomMessage("m1", "e:1"), { ...roomMessage("m2", "e:2"), from: { id: "u1", username: "alice" } }, roomMessage("m3", "e:3")] },
    socket.frames("join")[0]);
    await join;
    eq(t.of("message").map((m) => m.id), ["m1", "m3"]);
  }],

  ["re-join after a reconnect with since, missed messages once, recovered reported", async () => {
    const t = setup();
    let socket = await connected(t);
    const join = t.client.join("general");
    socket.reply("joined", { room: "general", members_count: 1, recovered: true, missed: [], offset: "e:4" }, socket.frames("join")[0]);
    await join;
    socket.receive(roomMessage("m5", "e:5"));
    socket.receive(roomMessage("m6", "e:6"));
    socket.drop(4008, "slow consumer");
    const queued = t.client.sendMessage("general", "written while away");
    await t.clock.advance(t.of("state").at(-1).delay);
    socket = t.net.last();
    socket.accept({ rooms: ["general"] });
    const [rejoin] = socket.frames("join");
    eq(rejoin.room, "general");
    eq(rejoin.data, { since: "e:6" }, "since = the last offset seen");
    eq(socket.sent.map((f) => f.type), ["auth", "join", "message"], "re-joins go before what was queued");
    socket.reply("joined", { room: "general", members_count: 2, recovered: true, offset: "e:8",
      missed: [roomMessage("m6", "e:6"), roomMessage("m7", "e:7"), roomMessage("m8", "e:8")] }, rejoin);
    await settle();
    eq(t.of("message").map((m) => m.id), ["m5", "m6", "m7", "m8"]);
    eq(t.of("rejoined"), [{ room: "general", recovered: true, missed: 2 }], "m6 was seen before the drop");
    eq(t.client.rooms.get("general").offset, "e:8");
    socket.reply("ack", { id: "m9", offset: "e:9" }, socket.frames("message")[0]);
    eq((await queued).id, "m9");
    socket.drop(1006);
    await t.clock.advance(t.of("state").at(-1).delay);
    socket = t.net.last();
    socket.accept({ rooms: ["general"] });
    socket.reply("joined", { room: "general", members_count: 2, recovered: false, offset: "e:300", missed: [] }, socket.frames("join")[0]);
    await settle();
    eq(t.of("rejoined").at(-1), { room: "general", recovered: false, missed: 0 }, "a gap the history no longer covers");
  }],

  ["send: resolves with the reply, rejects on error, on timeout and on a dropped connection", async () => {
    const t = setup({ requestTimeout: 1000 });
    const socket = await connected(t);
    const ok = t.client.send("message", { room: "general", data: { content: "hi" } });
    const bad = t.client.send("message", { room: "nowhere", data: { content: "hi" } });
    const slow = t.client.send("presence", { data: { status: "busy" } });
    const [first, second] = socket.frames("message");
    socket.reply("ack", { id: "x", offset: "e:1" }, first);
    socket.reply("error", { code: "NOT_IN_ROOM", message: "join it first", retry_after: null }, second);
    eq((await ok).type, "ack");
    const err = await bad.then(() => null, (e) => e);
    eq([err.name, err.code, err.message], ["SwitchboardError", "NOT_IN_ROOM", "join it first"]);
    eq(t.of("error"), [], "an answered error is the promise's, not an error event");
    await t.clock.advance(1000);
    eq((await slow.then(() => null, (e) => e)).code, "TIMEOUT");
    const lost = t.client.send("history", { room: "general", data: {} });
    socket.drop(1006);
    eq((await lost.then(() => null, (e) => e)).code, "DISCONNECTED");
    eq(await t.client.send("typing", { room: "general", data: { is_typing: true } }, { reply: false }), false,
      "frames without a reply are dropped while disconnected");
  }],

  ["heartbeat: pings every interval, reconnects when the server goes silent", async () => {
    const t = setup();
    const socket = await connected(t, { heartbeat: { interval: 10, timeout: 25 } });
    await t.clock.advance(10000);
    eq(socket.frames("ping").length, 1);
    socket.receive({ type: "pong", id: "p1" });
    await t.clock.advance(20000);
    eq(socket.frames("ping").length, 3, "a ping each interval");
    eq(t.client.state, "open", "a pong 20 s ago is within the 25 s timeout");
    await t.clock.advance(10000);
    eq(t.of("state").at(-1).state, "reconnecting");
    eq(t.of("state").at(-1).code, 4010);
    eq(socket.closedWith, 4000, "the silent socket is closed");
  }],

  ["token refresh: a new token from getToken before the old one expires", async () => {
    const reasons = [];
    const t = setup({ heartbeat: false, getToken: async ({ reason }) => { reasons.push(reason); return `tok-${reasons.length + 1}`; } });
    const expiresAt = 1_000 + 600; // the fake clock starts at 1,000 s: ten minutes left
    const socket = await connected(t, { expires_at: expiresAt });
    await t.clock.advance(539_000);
    eq(socket.frames("refresh").length, 0, "not yet: a minute before expiry");
    await t.clock.advance(1000);
    eq(reasons, ["refresh"]);
    const [refresh] = socket.frames("refresh");
    eq(refresh.data, { token: "tok-2" });
    socket.reply("refreshed", { expires_at: expiresAt + 600 }, refresh);
    await t.clock.advance(600_000);
    eq(socket.frames("refresh").length, 2, "the next refresh follows the new expiry");
  }],

  ["inbox: private messages from the inbox (only) are acknowledged once, up to the last offset", async () => {
    const t = setup();
    const socket = await connected(t);
    for (const n of [1, 2, 3]) {
      socket.receive({ type: "message", id: `p${n}`, to: "u1", offset: `e:${n}`, inbox: true, from: { id: "u2", username: "bob" }, data: { content: `pm ${n}` } });
    }
    // a live one carries its place in the conversation: not the inbox's to acknowledge
    socket.receive({ type: "message", id: "live", to: "u1", offset: "c:9", from: { id: "u2", username: "bob" }, data: { content: "live" } });
    await t.clock.advance(500);
    eq(socket.frames("inbox.ack").map((f) => f.data), [{ offset: "e:3" }]);
    eq(t.of("message").length, 4);
  }],

  ["typing: frames spaced by typingInterval, a stop only after a start", async () => {
    const t = setup();
    const socket = await connected(t);
    t.client.typing({ room: "general" }, false);
    for (let i = 0; i < 8; i += 1) {
      t.client.typing({ room: "general" });
      await t.clock.advance(500);
    }
    t.client.typing({ room: "general" });
    t.client.typing({ room: "general" }, false);
    eq(socket.frames("typing").map((f) => f.data.is_typing), [true, true, false]);
  }],

  ["offsets compare within an epoch; another epoch counts as newer", async () => {
    eq([offsetAfter("e:10", "e:9"), offsetAfter("e:9", "e:10"), offsetAfter("f:1", "e:10"), offsetAfter("e:1", null), offsetAfter(null, "e:1")],
      [true, false, true, true, false]);
  }],

  ["a listener that throws does not stop the others or the client", async () => {
    const t = setup();
    const socket = await connected(t);
    const reported = [];
    const original = globalThis.reportError;
    globalThis.reportError = (err) => reported.push(err.message);
    try {
      t.client.on("message", () => { throw new Error("app bug"); });
      socket.receive(roomMessage("m1", "e:1"));
      socket.receive(roomMessage("m2", "e:2"));
    } finally {
      globalThis.reportError = original;
    }
    eq(t.of("message").map((m) => m.id), ["m1", "m2"]);
    eq(reported, ["app bug", "app bug"]);
  }],
];
