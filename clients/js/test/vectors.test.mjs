// The codecs against proto/vectors.json: the exact bytes of every client
// frame, and every server event decoded alike from both encodings.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { json } from "../dist/index.js";
import { msgpack } from "../dist/msgpack.js";
import { ROOT } from "./harness.mjs";

const vectors = JSON.parse(readFileSync(ROOT + "proto/vectors.json", "utf8"));
const hex = (bytes) => Buffer.from(bytes).toString("hex");
// JavaScript numbers hold integers exactly only below 2^53 (PROTOCOL.md §2
// asks JavaScript clients for ids below it); those vectors are left out.
const exact = (v) => !/\d{16,}/.test(v.json ?? "");

test("every client vector encodes to its exact bytes in both codecs", () => {
  const client = vectors.filter((v) => v.direction == "client" && exact(v));
  assert.ok(client.length >= 15);
  for (const v of client) {
    const frame = JSON.parse(v.json);
    assert.equal(json.encode(frame), v.json, v.name);
    assert.equal(hex(msgpack.encode(frame)), v.msgpack_hex, v.name);
  }
});

test("every server vector decodes to the same object from both encodings", () => {
  const server = vectors.filter((v) => v.direction == "server");
  assert.ok(server.length >= 25);
  for (const v of server) {
    const want = JSON.parse(v.json);
    assert.deepEqual(json.decode(v.json), want, v.name);
    assert.deepEqual(msgpack.decode(Buffer.from(v.msgpack_hex, "hex")), want, v.name);
  }
});
