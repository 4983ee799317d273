// The admin HTTP API of the other instance (role admin): a kick (close 4002,
// PROTOCOL.md §7.2) ends the client for good; a broadcast arrives as a
// `broadcast` event from `$admin`.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Redis, Server, client, closeAll, next, record, sleep, token } from "./harness.mjs";

let redis, a, b;
before(async () => {
  redis = await Redis.start();
  a = await Server.start({ redis, id: "inst-a" });
  b = await Server.start({ redis, id: "inst-b" });
});
after(async () => {
  closeAll();
  await a?.stop();
  await b?.stop();
  await redis?.stop();
});

const admin = (path, body) =>
  fetch(`${b.http}/admin/api/${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token("root", { roles: ["admin"] })}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });

test("a kicked client does not reconnect", async () => {
  const c = client({ url: [a.url, b.url], token: () => token("mallory"), backoffMs: 50 });
  await c.connect();
  await c.join("arena");
  const states = record(c, "state");
  const down = next(c, "state", (s) => s.state == "disconnected");
  const res = await admin("users/mallory/kick", { reason: "cheating" });
  assert.equal(res.status, 200, await res.text());
  const d = await down;
  assert.deepEqual([d.code, d.reason, d.willReconnect], [4002, "cheating", false]);
  await sleep(1500); // many backoff windows of 50 ms
  assert.equal(c.status, "closed");
  assert.deepEqual(
    states.map((s) => s.state),
    ["disconnected"],
  );
  const watcher = client({ url: b.url, token: token("warden") });
  await watcher.connect();
  assert.deepEqual((await watcher.presence("arena")).users, []);
});

test("an admin broadcast reaches clients on every instance as a broadcast event", async () => {
  const [x, y] = [client({ url: a.url, token: token("xena") }), client({ url: b.url, token: token("yuri") })];
  await Promise.all([x.connect(), y.connect()]);
  const got = Promise.all([x, y].map((c) => next(c, "broadcast")));
  const res = await admin("broadcast", { data: { motd: "maintenance at noon" } });
  assert.equal(res.status, 200, await res.text());
  for (const ev of await got) {
    assert.equal(ev.from, "$admin");
    assert.deepEqual(ev.data, { motd: "maintenance at noon" });
    assert.equal(typeof ev.mid, "string");
  }
});
