// The operator panel, for the roles in api.admin_roles: the server's live stats (GET /api/stats,
// polled while the page is visible) and, for the roles in permissions.notify, a form that sends
// a notification to a user.
import { $, F, app, authedJson, el, isAdmin, mayNotify } from "./demo-core.js";

const STATS = [
  ["total_connections", "Connections"], ["unique_users", "Users online"], ["total_rooms", "Rooms"],
  ["messages_in", "Messages in"], ["messages_out", "Messages out"], ["uptime_seconds", "Uptime"],
];

/** Show the panel to operators and start polling (once per page: after the first connection). */
export function setupOperator() {
  $("ops").hidden = !isAdmin();
  if ($("notify-form")) $("notify-form").hidden = !(F.notifications && mayNotify());
  if (!isAdmin()) return;
  loadStats();
  setInterval(() => {
    if (document.visibilityState === "visible") loadStats();
  }, 2000);
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
