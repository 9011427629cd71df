// The operator panel, for the roles in api.admin_roles: the server's live stats (GET /api/stats,
// polled while the page is visible), charts of the last minutes drawn as SVG here (no library,
// nothing from elsewhere) and, for the roles in permissions.notify, a form that sends a
// notification to a user.
import { $, F, app, authedJson, el, isAdmin, mayNotify } from "./demo-core.js";

const STATS = [
  ["total_connections", "Connections"], ["unique_users", "Users online"], ["total_rooms", "Rooms"],
  ["messages_in", "Messages in"], ["messages_out", "Messages out"], ["uptime_seconds", "Uptime"],
];

const POLL_MS = 2000;
/** Samples kept: five minutes of polls. */
const KEPT = 150;
const SVG = "http://www.w3.org/2000/svg";
const CHARTS = [
  ["connections", "Connections", (n) => n.toLocaleString()],
  ["in", "Messages in per second", (n) => n.toFixed(1)],
  ["out", "Messages out per second", (n) => n.toFixed(1)],
];
/** {t (ms), connections, in, out} per poll, oldest first; rates from consecutive polls. */
const samples = [];
let previous = null;

function sample(stats) {
  const now = performance.now();
  if (previous) {
    const seconds = Math.max((now - previous.t) / 1000, 0.001);
    samples.push({
      t: now,
      connections: stats.total_connections,
      in: Math.max(0, stats.messages_in - previous.messagesIn) / seconds,
      out: Math.max(0, stats.messages_out - previous.messagesOut) / seconds,
    });
    if (samples.length > KEPT) samples.shift();
  }
  previous = { t: now, messagesIn: stats.messages_in, messagesOut: stats.messages_out };
}

/** One chart: a line over the kept samples, scaled to its own maximum, with its figures in
 * words for screen readers (role="img" and aria-label) and beside it for everyone. */
function chart(key, label, show) {
  const values = samples.map((s) => s[key]);
  const now = values.at(-1) ?? 0;
  const top = Math.max(1, ...values);
  const width = 240, height = 48;
  const step = width / Math.max(1, KEPT - 1);
  const x0 = width - (values.length - 1) * step;
  const points = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${label}, last ${Math.round(values.length * POLL_MS / 1000)} s: now ${show(now)}, highest ${show(Math.max(0, ...values))}`);
  svg.dataset.chart = key;
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("class", "chart-line");
  const [x, y] = (points.at(-1) || `${width},${height - 2}`).split(",");
  const dot = document.createElementNS(SVG, "circle");  // now: seen from the first poll on
  dot.setAttribute("cx", x);
  dot.setAttribute("cy", y);
  dot.setAttribute("r", "3");
  dot.setAttribute("class", "chart-dot");
  svg.append(line, dot);
  return el("figure", { class: "chart" }, svg,
    el("figcaption", {}, el("span", { text: label }), el("strong", { text: show(now) })));
}

function drawCharts() {
  const box = $("charts");
  if (!box || samples.length === 0) return;
  box.replaceChildren(...CHARTS.map(([key, label, show]) => chart(key, label, show)));
}

/** Show the panel to operators and start polling (once per page: after the first connection). */
export function setupOperator() {
  $("ops").hidden = !isAdmin();
  if ($("notify-form")) $("notify-form").hidden = !(F.notifications && mayNotify());
  if (!isAdmin()) return;
  loadStats();
  setInterval(() => {
    if (document.visibilityState === "visible") loadStats();
  }, POLL_MS);
}

function uptime(seconds) {
  const s = Math.floor(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

async function loadStats() {
  try {
    const stats = await authedJson("api/stats");
    $("stats").replaceChildren(...STATS.filter(([key]) => stats[key] != null).map(([key, label]) => el("div", {},
      el("dt", { text: label }),
      el("dd", { dataset: { stat: key }, text: key === "uptime_seconds" ? uptime(stats[key]) : Number(stats[key]).toLocaleString() }))));
    $("stats-error").hidden = true;
    sample(stats);
    drawCharts();
  } catch (err) {
    $("stats-error").textContent = err.status === 404 ? "The stats API is not available on this server." : `Stats unavailable: ${err.message}`;
    $("stats-error").hidden = false;
  }
}

/** The notification form; its handler is there from the start, the form shows to those who may send. */
export function setupNotifyForm() {
  $("notify-form")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = $("notify-result");
    const to = $("notify-to").value.trim();
    try {
      await app.sb.send("notification", { to, data: { notification_type: "demo", title: $("notify-title").value.trim(), message: $("notify-message").value.trim() } });
      result.textContent = `Sent to ${to}.`;
      $("notify-title").value = $("notify-message").value = "";
    } catch (err) {
      result.textContent = `Not sent: ${err.message}`;
    }
  });
}
