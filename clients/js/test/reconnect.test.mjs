// Faults with real processes: an instance killed and restarted under a
// connected client, an instance drained, tokens refused and refreshed.
import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";
import { Redis, SECRET, Server, client, closeAll, next, record, token, until } from "./harness.mjs";

let redis, a, b;
before(async () => {
  redis = await Redis.start();
  a = await Server.start({ redis, id: "inst-a", args: ["--drain-s", "2"] });
  b = await Server.start({ redis, id: "inst-b" });
});
afterEach(async () => {
  closeAll();
  // A test may have stopped instance a: bring it back for the next one.
  if (a.child.exitCode != null || a.child.signalCode != null) await a.restart();
});
after(async () => {
  await a?.stop();
  await b?.stop();
  await redis?.stop();
});

test("instance killed (SIGKILL) and restarted: the client reconnects, rejoins and reports per room", async () => {
  const c = client({ url: a.url, token: token("kim"), backoffMs: 300 });
  const peer = client({ url: b.url, token: token("pat") });
  await Promise.all([c.connect(), peer.connect()]);
  await c.join("tavern");
  await c.join("market");
  await peer.join("tavern");
  const states = record(c, "state");
  const rejoins = record(c, "rejoin");

  await a.signal("SIGKILL");
  await next(c, "state", (s) => s.state == "reconnecting");
  await a.restart();
  await until(() => rejoins.length == 2, "a rejoin report for each room");
  assert.deepEqual(rejoins.map((r) => r.room).sort(), ["market", "tavern"]);
  // Rooms without history cannot be recovered: the application reloads them.
  for (const r of rejoins) assert.equal(typeof r.recovered, "boolean");
  assert.equal(c.status, "connected");
  const kinds = states.map((s) => s.state);
  assert.deepEqual(kinds.slice(0, 3), ["disconnected", "reconnecting", "connecting"]);
  assert.equal(kinds.at(-1), "connected");
  assert.equal(states[0].code, 1006);
  assert.equal(states[0].willReconnect, true);

  // Back in the room: a message from the other instance arrives.
  const got = next(c, "message", (m) => m.room == "tavern");
  await peer.publish("tavern", { after: "restart" });
  assert.deepEqual((await got).data, { after: "restart" });
});

test("instance drained (SIGTERM): the client waits the hinted delay, then moves to the other instance", async () => {
  const c = client({ url: [a.url, b.url], token: token("dana") });
  const peer = client({ url: b.url, token: token("pete") });
  await Promise.all([c.connect(), peer.connect()]);
  assert.equal(c.welcome.instance, "inst-a");
  await c.join("hall");
  await peer.join("hall");
  const states = record(c, "state");
  const rejoined = next(c, "rejoin", (r) => r.room == "hall");

  const exit = a.signal("SIGTERM");
  const r = await next(c, "state", (s) => s.state == "reconnecting");
  const d = states.find((s) => s.state == "disconnected");
  assert.equal(d.code, 1001);
  assert.ok(r.delayMs >= 0 && r.delayMs <= 2000, `hinted delay within --drain-s: ${r.delayMs}`);
  const t0 = Date.now();
  await next(c, "state", (s) => s.state == "connected");
  assert.ok(Date.now() - t0 >= r.delayMs - 5, `reconnected after ${Date.now() - t0} ms, hint ${r.delayMs} ms`);
  assert.equal(c.welcome.instance, "inst-b");
  await rejoined;
  const got = next(c, "message", (m) => m.room == "hall");
  await peer.publish("hall", "still here");
  assert.equal((await got).data, "still here");
  await exit;
});

test("a token that expired while connected is refreshed through the callback before the reconnect", async () => {
  let cached = token("erin");
  let target = a.url;
  const asked = [];
  const c = client({
    url: () => target,
    backoffMs: 200,
    token: ({ refresh }) => {
      asked.push(refresh);
      if (refresh) cached = token("erin");
      return cached;
    },
  });
  await c.connect();
  const states = record(c, "state");
  // Time passes: the cached token is now past its exp (and the server's leeway).
  cached = token("erin", { exp: Math.floor(Date.now() / 1000) - 120 });
  // The connection ends while the next server is up, so the first attempt
  // does not fail for another reason (which alone would ask for a refresh).
  target = b.url;
  await a.signal("SIGKILL");
  await until(() => states.at(-1)?.state == "connected", "the reconnect");
  assert.equal(c.welcome.user, "erin");
  assert.deepEqual(asked, [false, false, true]);
  assert.ok(
    states.some((s) => s.state == "disconnected" && s.code == 401),
    "the expired token was reported as a 401",
  );
});

test("a token the server refuses (401) is replaced once through the callback", async () => {
  const wrong = token("finn", {}, SECRET + "-not");
  const asked = [];
  const c = client({ url: a.url, token: ({ refresh }) => (asked.push(refresh), refresh ? token("finn") : wrong) });
  const states = record(c, "state");
  const w = await c.connect();
  assert.equal(w.user, "finn");
  assert.deepEqual(asked, [false, true]);
  const d = states.find((s) => s.state == "disconnected");
  assert.deepEqual([d.code, d.willReconnect], [401, true]);
});

test("a static token the server refuses ends the client: no reconnect loop", async () => {
  const c = client({ url: a.url, token: token("gus", {}, "another-secret") });
  const states = record(c, "state");
  await assert.rejects(c.connect(), { code: "closed" });
  assert.deepEqual(
    states.map((s) => s.state),
    ["connecting", "disconnected"],
  );
  assert.equal(states[1].code, 401);
});
