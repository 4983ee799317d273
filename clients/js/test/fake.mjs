// A scripted WebSocket server in the test process, for what a real server
// cannot be made to do on demand (a given close code, a gap, a refused
// upgrade status at will). It records every frame the client sends.
import { WebSocketServer } from "ws";
import { json } from "../dist/index.js";
import { msgpack } from "../dist/msgpack.js";

const codecs = { [json.subprotocol]: json, [msgpack.subprotocol]: msgpack };

export class Fake {
  /** `answer(conn, frame)` returns the events to send back (default: ack, pong, presence). */
  static start(opts = {}) {
    const f = new Fake();
    f.frames = [];
    f.conns = [];
    f.refuse = 0;
    f.upgrades = 0;
    f.limits = { max_message_bytes: 65536, max_rooms: 100, rate_per_s: 100, burst: 200, ping_interval_ms: 25000, presence_events_max: 1000, ...opts.limits };
    f.answer = opts.answer ?? defaultAnswer;
    f.wss = new WebSocketServer({
      host: "127.0.0.1",
      port: 0,
      handleProtocols: (protocols) => [...protocols][0],
      verifyClient: (info, done) => {
        f.upgrades++;
        f.lastUrl = info.req.url;
        const status = f.verify ? f.verify(info.req.url) : f.refuse;
        if (status) done(false, status);
        else done(true);
      },
    });
    f.wss.on("connection", (ws, req) => {
      const conn = { ws, codec: codecs[ws.protocol] ?? json, url: req.url, raw: [], at: Date.now() };
      f.conns.push(conn);
      ws.on("message", (data, isBinary) => {
        const raw = isBinary ? Buffer.from(data) : data.toString();
        conn.raw.push(raw);
        const frame = conn.codec.decode(isBinary ? new Uint8Array(raw) : raw);
        f.frames.push(frame);
        for (const ev of f.answer(conn, frame) ?? []) f.send(conn, ev);
      });
      f.send(conn, {
        ev: "welcome",
        conn: `fake:${f.conns.length}`,
        user: "u",
        instance: "fake",
        limits: f.limits,
        batch: false,
      });
    });
    return new Promise((resolve) => f.wss.on("listening", () => resolve(f)));
  }

  get url() {
    return `ws://127.0.0.1:${this.wss.address().port}/ws`;
  }

  get last() {
    return this.conns[this.conns.length - 1];
  }

  send(conn, ev) {
    conn.ws.send(conn.codec.encode(ev));
  }

  stop() {
    for (const c of this.conns) c.ws.terminate();
    return new Promise((r) => this.wss.close(() => r()));
  }
}

export function defaultAnswer(conn, f) {
  if (f.op == "ping") return [{ ev: "pong", id: f.id }];
  if (f.op == "presence") return [{ ev: "presence", id: f.id, room: f.room, users: ["u"], count: 1 }];
  return [{ ev: "ack", id: f.id }];
}
