// Recovery with room history (`--history`): a client whose instance was
// killed reconnects, rejoins with its last {offset, epoch}, gets what it
// missed replayed before the join's ack, and reports the room recovered;
// a client that missed more than the history holds is told to reload.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { json } from "../dist/index.js";
import { msgpack } from "../dist/msgpack.js";
import { Redis, Server, client, closeAll, next, record, token, until } from "./harness.mjs";

let redis, a, b;
const args = ["--history", "hist:*=200/10m,tiny:*=3/10m"];
before(async () => {
  redis = await Redis.start();
  a = await Server.start({ redis, id: "inst-a", args });
  b = await Server.start({ redis, id: "inst-b", args });
});
after(async () => {
  closeAll();
  await a?.stop();
  await b?.stop();
  await redis?.stop();
});

for (const [name, codec] of [
  ["json", json],
  ["msgpack", msgpack],
]) {
  test(`killed instance: rejoin with the last position, missed messages replayed, recovered (${name})`, async () => {
    const room = `hist:${name}`;
    const c = client({ url: a.url, token: token(`reader-${name}`), codec, backoffMs: 300 });
    const peer = client({ url: b.url, token: token(`writer-${name}`), codec });
    await Promise.all([c.connect(), peer.connect()]);
    const j = await c.join(room);
    assert.equal(typeof j.epoch, "string");
    await peer.join(room);
    const got = record(c, "message");
    await peer.publish(room, 1);
    await peer.publish(room, 2);
    await until(() => got.length == 2, "two live messages");
    assert.deepEqual(c.position(room), { offset: got[1].offset, epoch: got[1].epoch });
    assert.equal(got[1].offset, got[0].offset + 1);

    await a.signal("SIGKILL");
    await peer.publish(room, 3);
    await peer.publish(room, 4);
    const rejoined = next(c, "rejoin", (r) => r.room == room, 20000);
    await a.restart();
    const r = await rejoined;
    assert.deepEqual([r.room, r.recovered, r.error], [room, true, undefined]);
    assert.deepEqual(
      got.map((m) => m.data),
      [1, 2, 3, 4],
      "each message once, in order",
    );
    await peer.publish(room, 5);
    await until(() => got.length == 5, "the live message after the rejoin");
    assert.deepEqual(
      got.map((m) => m.offset - got[0].offset),
      [0, 1, 2, 3, 4],
    );
  });
}

test("missed more than the history holds: the room is reported not recovered", async () => {
  const room = "tiny:1";
  const c = client({ url: a.url, token: token("late"), backoffMs: 300 });
  const peer = client({ url: b.url, token: token("chatty") });
  await Promise.all([c.connect(), peer.connect()]);
  await c.join(room);
  await peer.join(room);
  await peer.publish(room, 0);
  await until(() => c.position(room)?.offset != null && c.position(room).offset >= 0, "a first message");
  await a.signal("SIGKILL");
  for (let i = 1; i <= 6; i++) await peer.publish(room, i);
  const rejoined = next(c, "rejoin", (r) => r.room == room, 20000);
  await a.restart();
  assert.equal((await rejoined).recovered, false);
});
