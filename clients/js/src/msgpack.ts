// `roomcast.v1.msgpack`: binary frames, one MessagePack map per frame.
// @msgpack/msgpack writes integers in their smallest form, other numbers as
// float 64 and strings as str, as PROTOCOL.md §6 asks; undefined fields
// are left out, like JSON.stringify does.
import { Decoder, Encoder } from "@msgpack/msgpack";
import type { Codec } from "./codec.js";

const encoder = new Encoder({ ignoreUndefined: true });
const decoder = new Decoder();

export const msgpack: Codec = {
  subprotocol: "roomcast.v1.msgpack",
  // `encode` returns a copy: the socket may still hold the bytes after the call.
  encode: (frame) => encoder.encode(frame),
  decode: (data) => decoder.decode(typeof data == "string" ? new TextEncoder().encode(data) : data),
};
