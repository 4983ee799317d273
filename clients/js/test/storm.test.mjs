// 1,000 clients of one instance that is killed (SIGKILL) and restarted: with
// full jitter their reconnect attempts spread over the backoff window
// instead of arriving together. Prints the measured spread.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Server, client, closeAll, token, until } from "./harness.mjs";

const N = 1000;
const BASE = 1000; // backoffMs: the first attempt waits a random time in [0, BASE)
let server;
after(async () => {
  closeAll();
  await server?.stop();
});

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

test(`${N} clients reconnecting after a restart spread over the backoff window`, { timeout: 120000 }, async () => {
  server = await Server.start();
  const clients = [];
  for (let i = 0; i < N; i++) clients.push(client({ url: server.url, token: token(`p${i}`), backoffMs: BASE }));
  for (let i = 0; i < N; i += 100) await Promise.all(clients.slice(i, i + 100).map((c) => c.connect()));

  let t0 = 0;
  const planned = []; // the backoff each client drew for its first reconnect
  const first = []; // ms after the kill when each client's first attempt started
  const every = []; // ms after the kill of every attempt
  const back = []; // ms after the kill when each client was connected again
  for (const c of clients) {
    let attempts = 0;
    c.on("state", (s) => {
      if (!t0) return;
      const t = Date.now() - t0;
      if (s.state == "reconnecting" && attempts == 0) planned.push(s.delayMs);
      else if (s.state == "connecting") {
        if (attempts++ == 0) first.push(t);
        every.push(t);
      } else if (s.state == "connected") back.push(t);
    });
  }
  t0 = Date.now();
  await server.signal("SIGKILL");
  await server.restart();
  const upAt = Date.now() - t0;
  await until(() => back.length == N, `all ${N} clients connected again`, 60000);

  for (const xs of [planned, first, back]) xs.sort((x, y) => x - y);
  const per100 = (xs) => {
    const b = new Array(Math.floor(Math.max(...xs) / 100) + 1).fill(0);
    for (const t of xs) b[Math.floor(t / 100)]++;
    return b;
  };
  const row = (xs) => [0, 10, 50, 90, 100].map((p) => String(pct(xs, p)).padStart(6)).join(" |");
  console.log(`instance listening again ${upAt} ms after the kill; first backoff window [0, ${BASE}) ms`);
  console.log(`| ms                                |    min |    p10 |    p50 |    p90 |    max |`);
  console.log(`| first backoff drawn               |${row(planned)} |`);
  console.log(`| first attempt, after the kill     |${row(first)} |`);
  console.log(`| connected again, after the kill   |${row(back)} |`);
  console.log(`first backoffs per 100 ms: ${per100(planned).join(" ")}`);
  console.log(`attempts per 100 ms after the kill: ${per100(every).join(" ")}`);
  console.log(`attempts: ${every.length} for ${N} clients (the others failed while the instance was down)`);

  assert.equal(planned.length, N);
  // Full jitter: uniform over [0, BASE), about N/10 per 100 ms; without it all N would share one.
  assert.ok(planned.at(-1) < BASE, `every first backoff within the window: ${planned.at(-1)}`);
  assert.ok(pct(planned, 10) < 0.2 * BASE && pct(planned, 90) > 0.8 * BASE, "spread across the window");
  assert.ok(Math.max(...per100(planned)) < 0.15 * N, `no 100 ms holds 15% of them: ${per100(planned)}`);
  // What the server saw: the attempts themselves spread too (the test's own
  // event loop adds its lag to each of them).
  assert.ok(pct(first, 90) - pct(first, 10) > 0.5 * BASE, "attempts did not arrive together");
});
