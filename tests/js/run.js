// Runs the tests of switchboard.test.js in order, each within a time limit (a promise that
// never settles is a failure, not a hang), lists them on the page and leaves the outcome in
// window.__results for the Python driver.
import { tests } from "./switchboard.test.js";

const LIMIT_MS = 2000;
const results = [];
for (const [name, fn] of tests) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`did not finish within ${LIMIT_MS} ms`)), LIMIT_MS);
  });
  try {
    await Promise.race([fn(), limit]);
    results.push({ name, ok: true });
  } catch (err) {
    results.push({ name, ok: false, error: String(err?.stack || err) });
  } finally {
    clearTimeout(timer);
  }
  const item = document.createElement("li");
  item.textContent = `${results.at(-1).ok ? "ok" : "FAIL"}  ${name}${results.at(-1).error ? `\n${results.at(-1).error}` : ""}`;
  document.getElementById("results").append(item);
}
window.__results = results;
