// A codec turns client frames into WebSocket messages and server messages
// into events. JSON is built in; MessagePack is `roomcast-client/msgpack`
// (a separate entry point, so the core bundle carries no MessagePack code).

export interface Codec {
  /** The `Sec-WebSocket-Protocol` this codec speaks. */
  readonly subprotocol: string;
  /** A string is sent as a text frame, bytes as a binary frame. */
  encode(frame: object): string | Uint8Array;
  decode(data: string | Uint8Array): unknown;
}

const utf8 = /* @__PURE__ */ new TextDecoder();

/** `roomcast.v1.json`: text frames of compact JSON. */
export const json: Codec = {
  subprotocol: "roomcast.v1.json",
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => JSON.parse(typeof data == "string" ? data : utf8.decode(data)),
};
