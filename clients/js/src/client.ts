// The connection: one WebSocket at a time, requests matched to their
// answers by id, rooms remembered and joined again after every reconnect.
// The reconnect rules are PROTOCOL.md §7.2's table; `ended` holds them all.
import { json, type Codec } from "./codec.js";
import {
  RoomcastError,
  type Events,
  type History,
  type Joined,
  type Position,
  type Presence,
  type RoomMessage,
  type Welcome,
} from "./types.js";

/** What the client needs of a WebSocket: the browser's, or Node's `ws` package. */
export interface SocketLike {
  binaryType: string;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type SocketConstructor = new (url: string, protocols: string[]) => SocketLike;

/**
 * Passed to a token callback before every connection attempt. `refresh`:
 * the last attempt failed before the connection opened (a browser cannot
 * tell a refused token from a server that is down) or was refused with
 * 401, so a cached token should not be reused.
 */
export interface TokenContext {
  attempt: number;
  refresh: boolean;
}

export interface Options {
  /** `ws://host/ws` URL(s). A list is tried in turn: the next one after a drain or a failed attempt. */
  url: string | string[] | ((attempt: number) => string);
  /** A JWT, or a callback that returns one, called before every (re)connect. */
  token?: string | ((ctx: TokenContext) => string | Promise<string>);
  /** `json` (default) or `msgpack` from `roomcast-client/msgpack`. */
  codec?: Codec;
  /** The WebSocket constructor; default `globalThis.WebSocket`. In Node 20 pass `ws`'s. */
  WebSocket?: SocketConstructor;
  /** How long a request waits for its answer (default 10000 ms). */
  timeoutMs?: number;
  /** Backoff: attempt n waits a random time in [0, min(maxBackoffMs, backoffMs * 2^n)) (defaults 1000, 30000). */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Stop after this many retries in a row that did not connect (default: never). */
  giveUpAfter?: number;
  /** Accept `batch` events (default true; they are unpacked in order). */
  batch?: boolean;
}

export type Status = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

interface Request {
  frame: object;
  sent: boolean;
  ok: (ev: any) => void;
  fail: (err: RoomcastError) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Room {
  offset?: number;
  epoch?: string;
  /** Live messages held while a gap is being filled from history. */
  held?: RoomMessage[];
}

type Listener = (ev: any) => void;

const RELAYED = /^(joined|left|presence_diff|direct|broadcast)$/;

/** True when a JWT's `exp` has passed (with the server's 30 s of leeway); false when it cannot be read. */
function expired(token: string): boolean {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return claims.exp * 1000 + 30000 < Date.now();
  } catch {
    return false;
  }
}

export class Roomcast {
  /** The current connection's `welcome` (user, instance, limits). */
  welcome?: Welcome;
  private st: Status = "idle";
  private ws?: SocketLike;
  private codec: Codec;
  private listeners: { [name: string]: Set<Listener> } = {};
  private pending = new Map<number, Request>();
  private roomsIn = new Map<string, Room>();
  /** `mid`s of recent queued direct messages: the queue delivers at least once. */
  private queuedSeen = new Set<string>();
  private seq = 0;
  /** Attempts in a row that did not reach `welcome`. */
  private attempt = 0;
  private urlIndex = 0;
  private refresh = false;
  private last401 = false;
  private hint?: number;
  private openedAt = 0;
  private lastRx = 0;
  private pinging = false;
  private timer?: ReturnType<typeof setTimeout>;
  private beat?: ReturnType<typeof setInterval>;

  constructor(private o: Options) {
    this.codec = o.codec ?? json;
    if (!(o.WebSocket ?? (globalThis as { WebSocket?: unknown }).WebSocket))
      throw new Error("no WebSocket: pass the `WebSocket` option (in Node 20, the `ws` package's)");
  }

  get status(): Status {
    return this.st;
  }

  /** The rooms the client is in (and will join again after a reconnect). */
  get rooms(): string[] {
    return [...this.roomsIn.keys()];
  }

  /** The last history position seen in a room with history. */
  position(room: string): Position | undefined {
    const r = this.roomsIn.get(room);
    return r?.epoch != null ? { offset: r.offset!, epoch: r.epoch } : undefined;
  }

  on<K extends keyof Events>(name: K, fn: (ev: Events[K]) => void): () => void {
    (this.listeners[name] ??= new Set()).add(fn);
    return () => this.off(name, fn);
  }

  off<K extends keyof Events>(name: K, fn: (ev: Events[K]) => void): void {
    this.listeners[name]?.delete(fn);
  }

  /**
   * Starts connecting (and reconnecting, until `close`). Resolves with the
   * next `welcome`; rejects when the client gives up (kicked, token
   * refused, closed).
   */
  connect(): Promise<Welcome> {
    const done = new Promise<Welcome>((resolve, reject) => {
      if (this.st == "connected") return resolve(this.welcome!);
      const off = this.on("state", (s) => {
        if (s.state == "connected") resolve(s.welcome);
        else if (s.state == "disconnected" && !s.willReconnect) reject(new RoomcastError("closed", s.reason));
        else return;
        off();
      });
    });
    if (this.st == "idle" || this.st == "closed") {
      this.st = "connecting";
      this.attempt = 0;
      this.open();
    }
    // A caller that does not wait for it must not get an unhandled rejection.
    done.catch(() => {});
    return done;
  }

  /** Closes the connection for good: no reconnect; pending requests fail with `closed`. */
  close(): void {
    const ws = this.ws;
    this.ws = undefined;
    ws?.close(1000);
    if (this.st == "closed") return;
    this.stop();
    this.emit("state", { state: "disconnected", code: 1000, reason: "closed by the client", willReconnect: false });
  }

  /** Joins a room; with `since`, the server replays what was missed (rooms with history). */
  async join(room: string, opts: { since?: Position; timeoutMs?: number } = {}): Promise<Joined> {
    const a = await this.request("join", { room, since: opts.since }, opts.timeoutMs);
    this.track(room, a);
    return { room, offset: a.offset, epoch: a.epoch, recovered: a.recovered };
  }

  async leave(room: string, opts: { timeoutMs?: number } = {}): Promise<void> {
    this.roomsIn.delete(room);
    // Not connected: the room is already left on the server, and is not joined again.
    if (this.st == "connected") await this.request("leave", { room }, opts.timeoutMs);
  }

  /** Publishes to a room the client is in; `key` for latest-wins rooms. */
  async publish(room: string, data: unknown, opts: { key?: string; timeoutMs?: number } = {}): Promise<void> {
    await this.request("publish", { room, data, key: opts.key }, opts.timeoutMs);
  }

  /** Sends to every connection of a user (queued while the user has none). */
  async send(to: string, data: unknown, opts: { timeoutMs?: number } = {}): Promise<void> {
    await this.request("send", { to, data }, opts.timeoutMs);
  }

  async presence(room: string, opts: { timeoutMs?: number } = {}): Promise<Presence> {
    const { users, count } = await this.request("presence", { room }, opts.timeoutMs);
    return { room, users, count };
  }

  /** A room's stored messages since a position, or the last `limit` ones. */
  async history(
    room: string,
    opts: { since?: Position; limit?: number; timeoutMs?: number } = {},
  ): Promise<History> {
    const { messages, offset, epoch, complete } = await this.request(
      "history",
      { room, since: opts.since, limit: opts.limit },
      opts.timeoutMs,
    );
    return { room, messages, offset, epoch, complete };
  }

  /** An application-level round trip; resolves with its time in ms. */
  async ping(opts: { timeoutMs?: number } = {}): Promise<number> {
    const t = Date.now();
    await this.request("ping", {}, opts.timeoutMs);
    return Date.now() - t;
  }

  private emit<K extends keyof Events>(name: K, ev: Events[K]): void {
    this.listeners[name]?.forEach((fn) => {
      try {
        fn(ev);
      } catch (err) {
        // A listener's exception must not break the connection's state.
        setTimeout(() => {
          throw err;
        });
      }
    });
  }

  private request(op: string, fields: object, timeoutMs = this.o.timeoutMs ?? 10000): Promise<any> {
    return new Promise((ok, fail) => {
      if (this.st == "closed") return fail(new RoomcastError("closed", "the client is closed"));
      const id = ++this.seq;
      const req: Request = {
        frame: { op, id, ...fields },
        sent: false,
        ok,
        fail,
        timer: setTimeout(
          () => this.settle(id, 0, new RoomcastError("timeout", `no answer to ${op} within ${timeoutMs} ms`)),
          timeoutMs,
        ),
      };
      this.pending.set(id, req);
      // Requests made while not connected go out after the next welcome.
      if (this.st == "connected") this.put(req);
    });
  }

  private put(req: Request): void {
    req.sent = true;
    this.ws!.send(this.codec.encode(req.frame));
  }

  private settle(id: unknown, ev: unknown, err?: RoomcastError): boolean {
    const req = this.pending.get(id as number);
    if (!req) return false;
    this.pending.delete(id as number);
    clearTimeout(req.timer);
    if (err) req.fail(err);
    else req.ok(ev);
    return true;
  }

  private track(room: string, a: { offset?: number; epoch?: string }): void {
    const r = this.roomsIn.get(room) ?? {};
    if (a.epoch != null) {
      r.offset = a.offset;
      r.epoch = a.epoch;
    }
    this.roomsIn.set(room, r);
  }

  private async open(): Promise<void> {
    const o = this.o;
    const src = o.token;
    const url =
      typeof o.url == "function" ? o.url(this.attempt) : typeof o.url == "string" ? o.url : o.url[this.urlIndex % o.url.length];
    this.st = "connecting";
    this.emit("state", { state: "connecting", attempt: this.attempt, url });
    let token: string | undefined;
    try {
      token = typeof src == "function" ? await src({ attempt: this.attempt, refresh: this.refresh }) : src;
    } catch (err) {
      if (this.status != "closed") this.ended(1006, "the token callback failed: " + err);
      return;
    }
    if (this.status == "closed") return;
    // An expired token would be refused with 401, which a browser cannot see:
    // treat it as that 401 without asking the server.
    if (token && expired(token)) return this.ended(401, "the token has expired");
    const query = [token && "token=" + token, o.batch !== false && "batch=1"].filter(Boolean).join("&");
    const Socket = o.WebSocket ?? (globalThis as unknown as { WebSocket: SocketConstructor }).WebSocket;
    let ws: SocketLike;
    try {
      ws = new Socket(query ? url + (url.includes("?") ? "&" : "?") + query : url, [this.codec.subprotocol]);
    } catch (err) {
      return this.ended(1006, "cannot open a WebSocket: " + err);
    }
    let status = 0;
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    // Node's `ws` reports a refused upgrade's status in its error; browsers report nothing.
    ws.onerror = (e: any) => {
      const m = /response: (\d{3})/.exec(String(e?.message ?? e?.error?.message));
      if (m) status = +m[1];
    };
    ws.onclose = (e) => {
      if (this.ws == ws) this.ended(status || e.code || 1006, status ? "upgrade refused with HTTP " + status : e.reason);
    };
    ws.onmessage = (e) => {
      if (this.ws != ws) return;
      const d = e.data;
      let ev: any;
      try {
        ev = this.codec.decode(typeof d == "string" ? d : d instanceof ArrayBuffer ? new Uint8Array(d) : (d as Uint8Array));
      } catch (err) {
        return this.emit("error", new RoomcastError("bad_frame", "undecodable server frame: " + err));
      }
      this.lastRx = Date.now();
      this.handle(ev);
    };
  }

  private handle(ev: any): void {
    switch (ev.ev) {
      case "batch":
        for (const e of ev.events) this.handle(e);
        return;
      case "welcome":
        return this.welcomed(ev);
      case "error":
        if (!this.settle(ev.id, 0, new RoomcastError(ev.code, ev.text))) this.emit("error", new RoomcastError(ev.code, ev.text));
        return;
      case "message":
        return this.message(ev);
      case "reconnect":
        this.hint = ev.after_ms;
        return;
      case "gap":
        this.gap(ev);
        return;
      case "direct":
        if (ev.queued) {
          const seen = this.queuedSeen;
          if (seen.has(ev.mid)) return;
          seen.add(ev.mid);
          if (seen.size > 1000) seen.delete(seen.values().next().value!);
        }
      // falls through
      default:
        if (this.settle(ev.id, ev)) return;
        if (RELAYED.test(ev.ev)) this.emit(ev.ev, ev);
    }
  }

  private welcomed(w: Welcome): void {
    this.welcome = w;
    this.st = "connected";
    this.attempt = 0;
    this.refresh = this.last401 = false;
    this.openedAt = this.lastRx = Date.now();
    for (const [room, r] of this.roomsIn) {
      this.request("join", { room, since: this.position(room) }).then(
        (a) => {
          this.track(room, a);
          this.emit("rejoin", { room, recovered: a.recovered === true });
        },
        (err: RoomcastError) => {
          if (err.code == "disconnected" || err.code == "closed") return;
          // Refused (forbidden with a new token, too many rooms): no longer in it.
          if (err.code != "timeout" && this.roomsIn.get(room) == r) this.roomsIn.delete(room);
          this.emit("rejoin", { room, recovered: false, error: err });
        },
      );
    }
    for (const req of this.pending.values()) if (!req.sent) this.put(req);
    const every = w.limits.ping_interval_ms;
    if (every > 0) this.beat = setInterval(() => this.keepalive(every), every);
    this.emit("state", { state: "connected", welcome: w });
  }

  /** Browsers do not show the server's WebSocket pings: a silent link is checked with a `ping` op. */
  private keepalive(every: number): void {
    if (this.pinging || Date.now() - this.lastRx < every) return;
    this.pinging = true;
    this.ping().then(
      () => (this.pinging = false),
      (err: RoomcastError) => {
        this.pinging = false;
        if (err.code == "timeout" && this.ws) {
          this.ws.close();
          this.ended(4001, "no answer to ping");
        }
      },
    );
  }

  private message(m: RoomMessage, filling?: boolean): void {
    const r = this.roomsIn.get(m.room);
    if (r && m.offset != null) {
      if (r.held && !filling) {
        r.held.push(m);
        return;
      }
      // Replays and live delivery can overlap: each offset is delivered once.
      if (r.epoch == m.epoch && m.offset <= r.offset!) return;
      r.offset = m.offset;
      r.epoch = m.epoch;
    }
    this.emit("message", m);
  }

  private async gap(g: { room: string; epoch: string; offset: number }): Promise<void> {
    const r = this.roomsIn.get(g.room);
    if (r?.held) return; // a fill is running; its history reaches past this gap
    let recovered = false;
    if (r?.epoch != null) {
      r.held = [];
      try {
        const h = await this.history(g.room, { since: this.position(g.room) });
        for (const m of h.messages) this.message(m, true);
        recovered = h.complete;
      } catch {
        // Not recovered: the application reloads.
      }
      const held = r.held;
      r.held = undefined;
      for (const m of held) this.message(m);
    }
    this.emit("gap", { room: g.room, epoch: g.epoch, offset: g.offset, recovered });
  }

  /** A connection or an attempt ended: decide whether and when to try again. */
  private ended(code: number, reason: string): void {
    const was = this.st == "connected";
    const o = this.o;
    this.ws = undefined;
    clearInterval(this.beat);
    for (const [id, req] of this.pending)
      if (req.sent) this.settle(id, 0, new RoomcastError("disconnected", "the connection ended before the answer"));
    if (this.st == "closed") return;
    let delay: number | undefined;
    if (code == 401 && typeof o.token == "function" && !this.last401) delay = 0; // once, with a fresh token
    else if (code == 401 || code == 403 || code == 4002) delay = undefined; // refused or kicked: do not come back
    else if (code == 1001 && this.hint != null) delay = this.hint;
    else if (was && (code == 1001 || code == 4000 || code == 4001) && Date.now() - this.openedAt > 1000) delay = 0;
    else if (this.attempt < (o.giveUpAfter ?? Infinity))
      delay = Math.floor(Math.random() * Math.min(o.maxBackoffMs ?? 30000, (o.backoffMs ?? 1000) * 2 ** this.attempt++));
    this.last401 = code == 401;
    this.hint = undefined;
    // Another instance after a drain or a failed attempt; a fresh token after a failed attempt.
    if (!was || code == 1001) this.urlIndex++;
    if (!was) this.refresh = true;
    this.emit("state", { state: "disconnected", code, reason, willReconnect: delay != null });
    if (delay == null) return this.stop();
    this.st = "reconnecting";
    this.emit("state", { state: "reconnecting", delayMs: delay, attempt: this.attempt });
    this.timer = setTimeout(() => this.open(), delay);
  }

  private stop(): void {
    this.st = "closed";
    clearTimeout(this.timer);
    clearInterval(this.beat);
    for (const id of [...this.pending.keys()]) this.settle(id, 0, new RoomcastError("closed", "the client is closed"));
  }
}
