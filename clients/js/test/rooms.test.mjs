// Rooms, presence and direct messages in both codecs, against two real
// instances sharing a real Redis.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { json } from "../dist/index.js";
import { msgpack } from "../dist/msgpack.js";
import { Redis, Server, client, closeAll, next, token } from "./harness.mjs";

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

/** The next sign that `user` came into `room`: `joined`, or a `presence_diff` naming it. */
function arrival(c, room, user) {
  return Promise.race([
    next(c, "joined", (e) => e.room == room && e.user == user),
    next(c, "presence_diff", (e) => e.room == room && e.joins.includes(user)),
  ]);
}

function departure(c, room, user) {
  return Promise.race([
    next(c, "left", (e) => e.room == room && e.user == user),
    next(c, "presence_diff", (e) => e.room == room && e.leaves.includes(user)),
  ]);
}

for (const [name, codec] of [
  ["json", json],
  ["msgpack", msgpack],
]) {
  describe(`${name} codec`, () => {
    test("join, publish, presence, send and leave across two instances", async () => {
      const room = `encounter:${name}`;
      const [ua, ub] = [`alice-${name}`, `bob-${name}`];
      const alice = client({ url: a.url, token: token(ua), codec });
      const bob = client({ url: b.url, token: () => token(ub), codec });
      const w = await alice.connect();
      assert.equal(w.user, ua);
      assert.equal(w.instance, "inst-a");
      assert.equal((await bob.connect()).instance, "inst-b");

      assert.deepEqual(await alice.join(room), { room, offset: undefined, epoch: undefined, recovered: undefined });
      const seen = arrival(alice, room, ub);
      await bob.join(room);
      assert.equal((await seen).count, 2);
      assert.deepEqual(alice.rooms, [room]);

      const data = { hp: 7, name: "Grüße", list: [1, 2.5, -3, null, true, "x"], deep: { a: { b: [] } } };
      const got = next(bob, "message", (m) => m.room == room);
      const own = next(alice, "message", (m) => m.room == room);
      await alice.publish(room, data);
      const m = await got;
      assert.deepEqual(m.data, data);
      assert.equal(m.from, ua);
      assert.equal(typeof m.ts, "number");
      assert.equal(typeof m.mid, "string");
      assert.equal((await own).mid, m.mid, "the publisher gets its own message");

      const p = await bob.presence(room);
      assert.deepEqual([...p.users].sort(), [ua, ub]);
      assert.equal(p.count, 2);

      const dm = next(alice, "direct");
      await bob.send(ua, { text: "hi" });
      assert.deepEqual(await dm, {
        ev: "direct",
        from: ub,
        data: { text: "hi" },
        ts: (await dm).ts,
        mid: (await dm).mid,
        queued: false,
      });

      assert.ok((await bob.ping()) >= 0);
      await assert.rejects(bob.publish("elsewhere", 1), { name: "RoomcastError", code: "not_joined" });
      await assert.rejects(bob.join("no spaces"), { code: "invalid_room" });
      await assert.rejects(bob.send("", 1), { code: "bad_request" });

      const gone = departure(alice, room, ub);
      await bob.leave(room);
      assert.equal((await gone).count, 1);
      assert.deepEqual(bob.rooms, []);
    });

    test("a direct message to an offline user arrives flagged as queued", async () => {
      const uc = `carol-${name}`;
      const alice = client({ url: a.url, token: token(`sender-${name}`), codec });
      await alice.connect();
      await alice.send(uc, { n: 1 });
      await alice.send(uc, { n: 2 });
      const carol = client({ url: b.url, token: token(uc), codec });
      const got = [];
      carol.on("direct", (d) => got.push(d));
      await carol.connect();
      const end = Date.now() + 5000;
      while (got.length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(
        got.map((d) => [d.data, d.queued, d.from]),
        [
          [{ n: 1 }, true, `sender-${name}`],
          [{ n: 2 }, true, `sender-${name}`],
        ],
      );
    });
  });
}

test("a JSON publisher and a MessagePack subscriber see the same data", async () => {
  const room = "mixed";
  const pub = client({ url: a.url, token: token("pub-json"), codec: json });
  const sub = client({ url: b.url, token: token("sub-msgpack"), codec: msgpack });
  await Promise.all([pub.connect(), sub.connect()]);
  await pub.join(room);
  await sub.join(room);
  const got = next(sub, "message", (m) => m.room == room);
  const data = { big: 9007199254740991, neg: -42, f: 0.1, s: "€", arr: [[], {}] };
  await pub.publish(room, data);
  assert.deepEqual((await got).data, data);
});

test("requests made before the connection opens are sent after welcome, in order", async () => {
  const room = "early";
  const c = client({ url: a.url, token: token("early-bird") });
  const joined = c.join(room);
  const published = c.publish(room, "first");
  const got = next(c, "message", (m) => m.room == room);
  await c.connect();
  await joined;
  await published;
  assert.equal((await got).data, "first");
});

test("a request without an answer fails with timeout; close fails the rest with closed", async () => {
  const c = client({ url: a.url, token: token("timer") });
  // Never connected: the request waits for a connection, then times out.
  await assert.rejects(c.presence("lobby", { timeoutMs: 100 }), { code: "timeout" });
  const waiting = c.presence("lobby", { timeoutMs: 5000 });
  c.close();
  await assert.rejects(waiting, { code: "closed" });
  await assert.rejects(c.join("lobby"), { code: "closed" });
});
