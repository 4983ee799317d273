// The client's side of the wire against a scripted server: the exact frames
// it sends, and its reconnect rules for each close code (PROTOCOL.md §7.2),
// refused upgrades, gaps and recovery.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { json } from "../dist/index.js";
import { msgpack } from "../dist/msgpack.js";
import { Fake, defaultAnswer } from "./fake.mjs";
import WebSocket from "ws";
import { client, closeAll, next, record, sleep, token, until } from "./harness.mjs";

const fakes = [];
async function fake(opts) {
  const f = await Fake.start(opts);
  fakes.push(f);
  return f;
}
afterEach(async () => {
  closeAll();
  await Promise.all(fakes.splice(0).map((f) => f.stop()));
});

for (const codec of [json, msgpack]) {
  test(`every op is sent as PROTOCOL.md writes it (${codec.subprotocol})`, async () => {
    const f = await fake({
      answer: (conn, fr) =>
        fr.op == "history"
          ? [{ ev: "history", id: fr.id, room: fr.room, messages: [], offset: 3, epoch: "e1", complete: true }]
          : defaultAnswer(conn, fr),
    });
    const c = client({ url: f.url, token: token("u"), codec, batch: false });
    await c.connect();
    assert.equal(f.last.ws.protocol, codec.subprotocol);
    assert.match(f.last.url, /^\/ws\?token=[\w-]+\.[\w-]+\.[\w-]+$/);
    await c.join("encounter:42");
    await c.join("r", { since: { offset: 41, epoch: "e1f3" } });
    await c.publish("encounter:42", { hp: 7 });
    await c.publish("r", { x: 1, y: 2 }, { key: "pos:7" });
    await c.publish("r", undefined);
    await c.send("bob", { text: "hi" });
    await c.presence("r");
    await c.history("r", { since: { offset: 1, epoch: "e1" } });
    await c.history("r", { limit: 50 });
    await c.ping();
    await c.leave("r");
    const want = [
      '{"op":"join","id":1,"room":"encounter:42"}',
      '{"op":"join","id":2,"room":"r","since":{"offset":41,"epoch":"e1f3"}}',
      '{"op":"publish","id":3,"room":"encounter:42","data":{"hp":7}}',
      '{"op":"publish","id":4,"room":"r","data":{"x":1,"y":2},"key":"pos:7"}',
      '{"op":"publish","id":5,"room":"r"}',
      '{"op":"send","id":6,"to":"bob","data":{"text":"hi"}}',
      '{"op":"presence","id":7,"room":"r"}',
      '{"op":"history","id":8,"room":"r","since":{"offset":1,"epoch":"e1"}}',
      '{"op":"history","id":9,"room":"r","limit":50}',
      '{"op":"ping","id":10}',
      '{"op":"leave","id":11,"room":"r"}',
    ];
    const got = f.last.raw.map((r) => (typeof r == "string" ? r : Buffer.from(r).toString("hex")));
    const expect = want.map((w) => (codec == json ? w : Buffer.from(msgpack.encode(JSON.parse(w))).toString("hex")));
    assert.deepEqual(got, expect);
    if (codec == msgpack) assert.ok(f.last.raw.every((r) => Buffer.isBuffer(r)), "binary frames");
  });
}

test("4000 and 4001 reconnect at once; other drops back off with full jitter", async () => {
  const f = await fake();
  const c = client({ url: f.url, token: token("u"), backoffMs: 200 });
  const states = record(c, "state");
  await c.connect();
  await sleep(1100); // the connection lived more than 1 s
  f.last.ws.close(4000, "slow consumer");
  const r = await next(c, "state", (s) => s.state == "reconnecting");
  assert.equal(r.delayMs, 0);
  await until(() => f.conns.length == 2 && c.status == "connected", "the reconnect");
  await sleep(1100);
  f.last.ws.close(1011, "oops");
  const r2 = await next(c, "state", (s) => s.state == "reconnecting");
  assert.ok(r2.delayMs >= 0 && r2.delayMs < 200, `first backoff in [0, 200): ${r2.delayMs}`);
  await until(() => f.conns.length == 3, "the second reconnect");
  assert.deepEqual(
    states.filter((s) => s.state == "disconnected").map((s) => [s.code, s.reason, s.willReconnect]),
    [
      [4000, "slow consumer", true],
      [1011, "oops", true],
    ],
  );
});

test("refused upgrades back off exponentially with full jitter and try the next URL", async () => {
  const f1 = await fake();
  const f2 = await fake();
  f1.refuse = f2.refuse = 503;
  const c = client({ url: [f1.url, f2.url], token: token("u"), backoffMs: 20, maxBackoffMs: 160 });
  const delays = [];
  c.on("state", (s) => s.state == "reconnecting" && delays.push(s.delayMs));
  c.connect();
  await until(() => delays.length >= 8, "eight attempts", 5000);
  delays.forEach((d, n) => assert.ok(d >= 0 && d < Math.min(160, 20 * 2 ** n), `attempt ${n}: ${d}`));
  assert.ok(f1.upgrades >= 4 && f2.upgrades >= 4, `both URLs tried: ${f1.upgrades}, ${f2.upgrades}`);
  f2.refuse = 0;
  await until(() => c.status == "connected", "connected once f2 accepts");
});

test("a kick (4002) is final: no reconnect", async () => {
  const f = await fake();
  const c = client({ url: f.url, token: () => token("u") });
  await c.connect();
  f.answer = () => [];
  const pending = c.presence("lobby").catch((e) => e);
  await until(() => f.frames.length == 1, "the presence request");
  f.last.ws.close(4002, "cheating");
  const d = await next(c, "state", (s) => s.state == "disconnected");
  assert.deepEqual([d.code, d.reason, d.willReconnect], [4002, "cheating", false]);
  assert.equal(c.status, "closed");
  assert.ok(["disconnected", "closed"].includes((await pending).code));
  await sleep(1500);
  assert.equal(f.upgrades, 1);
});

test("a drain hint: reconnect after after_ms, to the next URL", async () => {
  const f1 = await fake();
  const f2 = await fake();
  const c = client({ url: [f1.url, f2.url], token: token("u") });
  await c.connect();
  const t0 = Date.now();
  f1.send(f1.last, { ev: "reconnect", after_ms: 400, reason: "server draining" });
  f1.last.ws.close(1001, "draining");
  const r = await next(c, "state", (s) => s.state == "reconnecting");
  assert.equal(r.delayMs, 400);
  await until(() => f2.conns.length == 1, "a connection to the second URL");
  assert.ok(Date.now() - t0 >= 390, `waited ${Date.now() - t0} ms`);
  assert.equal(f1.conns.length, 1);
});

test("401 with a static token is final; with a callback a fresh token is asked once", async () => {
  const f = await fake();
  f.refuse = 401;
  const fixed = client({ url: f.url, token: token("u") });
  await assert.rejects(fixed.connect(), { code: "closed" });
  assert.equal(f.upgrades, 1);

  const asked = [];
  const fresh = client({
    url: f.url,
    token: (ctx) => {
      asked.push(ctx);
      if (ctx.refresh) f.refuse = 0;
      return token(`u${asked.length}`);
    },
  });
  await fresh.connect();
  assert.deepEqual(
    asked.map((a) => a.refresh),
    [false, true],
  );
  assert.match(f.last.url, /token=/);

  // A callback that keeps giving refused tokens: two 401s in a row end it.
  f.refuse = 401;
  const bad = client({ url: f.url, token: () => token("u") });
  await assert.rejects(bad.connect(), { code: "closed" });
});

test("an expired token is caught before connecting and refreshed through the callback", async () => {
  const f = await fake();
  const stale = token("u", { exp: Math.floor(Date.now() / 1000) - 3600 });
  const fixed = client({ url: f.url, token: stale });
  const d = next(fixed, "state", (s) => s.state == "disconnected");
  await assert.rejects(fixed.connect(), { code: "closed" });
  assert.deepEqual([(await d).code, (await d).willReconnect], [401, false]);
  assert.equal(f.upgrades, 0, "the server never saw the expired token");

  const calls = [];
  const cb = client({ url: f.url, token: (ctx) => (calls.push(ctx.refresh), ctx.refresh ? token("u") : stale) });
  await cb.connect();
  assert.deepEqual(calls, [false, true]);
  assert.equal(f.upgrades, 1);
});

test("a gap is filled from history; live messages wait behind it", async () => {
  const f = await fake({
    answer: (conn, fr) =>
      fr.op == "join"
        ? [{ ev: "ack", id: fr.id, offset: 5, epoch: "e" }]
        : fr.op == "history"
          ? [
              {
                ev: "history",
                id: fr.id,
                room: "r",
                messages: [6, 7, 8].map((o) => msg(o)),
                offset: 8,
                epoch: "e",
                complete: fr.since.offset == 5,
              },
            ]
          : defaultAnswer(conn, fr),
  });
  const c = client({ url: f.url, token: token("u") });
  await c.connect();
  assert.deepEqual(await c.join("r"), { room: "r", offset: 5, epoch: "e", recovered: undefined });
  const got = record(c, "message");
  const gap = next(c, "gap");
  f.send(f.last, { ev: "gap", room: "r", epoch: "e", offset: 8 });
  f.send(f.last, msg(9));
  f.send(f.last, msg(7)); // a duplicate
  assert.deepEqual(await gap, { room: "r", epoch: "e", offset: 8, recovered: true });
  await until(() => got.length == 4, "four messages");
  assert.deepEqual(
    got.map((m) => m.offset),
    [6, 7, 8, 9],
  );
  assert.deepEqual(f.frames.at(-1).since, { offset: 5, epoch: "e" });
  assert.deepEqual(c.position("r"), { offset: 9, epoch: "e" });
});

function msg(offset, room = "r") {
  return { ev: "message", room, from: "p", data: offset, ts: 1, mid: `m${offset}`, offset, epoch: "e" };
}

test("after a reconnect every room is joined again with its position, and each reports recovery", async () => {
  let recover = true;
  const f = await fake({
    answer: (conn, fr) => {
      if (fr.op != "join") return defaultAnswer(conn, fr);
      if (fr.room == "plain") return [{ ev: "ack", id: fr.id }];
      if (fr.room == "gone") return fr.since ? [{ ev: "error", id: fr.id, code: "forbidden", text: "no" }] : [{ ev: "ack", id: fr.id, offset: 0, epoch: "g" }];
      if (!fr.since) return [{ ev: "ack", id: fr.id, offset: 2, epoch: "e" }];
      // Replayed messages come before the ack; 2 is one the client already had.
      return [msg(2), msg(3), msg(4), { ev: "ack", id: fr.id, offset: 4, epoch: "e", recovered: recover }];
    },
  });
  const c = client({ url: f.url, token: token("u"), backoffMs: 50 });
  await c.connect();
  await c.join("r");
  await c.join("plain");
  await c.join("gone");
  const got = record(c, "message");
  const rejoins = record(c, "rejoin");
  f.last.ws.terminate();
  await until(() => rejoins.length == 3, "three rejoin reports");
  const byRoom = Object.fromEntries(rejoins.map((r) => [r.room, r]));
  assert.equal(byRoom.r.recovered, true);
  assert.equal(byRoom.plain.recovered, false, "a room without history cannot be recovered");
  assert.equal(byRoom.gone.error.code, "forbidden");
  assert.deepEqual(c.rooms.sort(), ["plain", "r"]);
  assert.deepEqual(
    got.map((m) => m.offset),
    [3, 4],
  );
  const rejoin = f.frames.filter((fr) => fr.op == "join" && fr.room == "r").at(-1);
  assert.deepEqual(rejoin.since, { offset: 2, epoch: "e" });

  recover = false;
  f.last.ws.terminate();
  const again = await next(c, "rejoin", (r) => r.room == "r");
  assert.equal(again.recovered, false);
});

test("a silent connection is noticed with a ping op and replaced", async () => {
  const f = await fake({ limits: { ping_interval_ms: 150 }, answer: () => [] });
  const c = client({ url: f.url, token: token("u"), timeoutMs: 200, backoffMs: 50 });
  await c.connect();
  const d = await next(c, "state", (s) => s.state == "disconnected");
  assert.deepEqual([d.code, d.willReconnect], [4001, true]);
  assert.equal(f.frames[0].op, "ping");
  await until(() => f.conns.length == 2, "a new connection");
});

test("batches are unpacked in order; repeated queued direct messages are dropped by mid", async () => {
  const f = await fake();
  const c = client({ url: f.url, token: token("u") });
  await c.connect();
  assert.match(f.last.url, /[?&]batch=1$/);
  const seen = [];
  for (const name of ["message", "joined", "left", "presence_diff", "direct", "broadcast"]) c.on(name, (e) => seen.push(`${name}:${e.mid ?? e.user ?? e.count}`));
  const queued = (mid) => ({ ev: "direct", from: "a", data: 1, ts: 1, mid, queued: true });
  f.send(f.last, {
    ev: "batch",
    events: [
      { ev: "message", room: "r", from: "a", data: 1, ts: 1, mid: "m1" },
      { ev: "joined", room: "r", user: "b", count: 2 },
      { ev: "presence_diff", room: "r", joins: ["c"], leaves: [], count: 3 },
      queued("q1"),
      queued("q1"),
      { ev: "direct", from: "a", data: 1, ts: 1, mid: "d1", queued: false },
    ],
  });
  f.send(f.last, queued("q1"));
  f.send(f.last, { ev: "broadcast", from: "$admin", data: { motd: "hi" }, ts: 1, mid: "b1" });
  f.send(f.last, { ev: "left", room: "r", user: "b", count: 2 });
  await until(() => seen.length >= 7, "seven events");
  await sleep(100);
  assert.deepEqual(seen, ["message:m1", "joined:b", "presence_diff:3", "direct:q1", "direct:d1", "broadcast:b1", "left:b"]);
});

test("giveUpAfter ends the attempts; connect() rejects", async () => {
  const f = await fake();
  f.refuse = 503;
  const c = client({ url: f.url, token: token("u"), backoffMs: 10, giveUpAfter: 3 });
  const states = record(c, "state");
  await assert.rejects(c.connect(), { code: "closed" });
  assert.equal(f.upgrades, 4, "the first attempt and three more");
  assert.deepEqual(states.at(-1), { state: "disconnected", code: 503, reason: "upgrade refused with HTTP 503", willReconnect: false });
  assert.equal(c.status, "closed");
});

/** `ws` made to behave like a browser's WebSocket: a refused upgrade shows no HTTP status. */
class BrowserLikeSocket extends WebSocket {
  set onerror(fn) {
    super.onerror = fn && (() => fn({ type: "error" }));
  }
  get onerror() {
    return super.onerror;
  }
}

test("where the status is hidden (browsers), a failed attempt asks the token callback for a fresh token", async () => {
  const f = await fake();
  const good = token("fresh");
  f.verify = (url) => (url.includes(good) ? 0 : 401);
  const asked = [];
  const c = client({
    url: f.url,
    WebSocket: BrowserLikeSocket,
    backoffMs: 50,
    token: ({ refresh }) => (asked.push(refresh), refresh ? good : token("revoked")),
  });
  const states = record(c, "state");
  await c.connect();
  assert.deepEqual(asked, [false, true]);
  const d = states.find((s) => s.state == "disconnected");
  assert.deepEqual([d.code, d.willReconnect], [1006, true], "seen as a plain failure, not a 401");
  assert.equal(f.upgrades, 2);
});
