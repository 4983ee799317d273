// Test harness: real roomcast processes and a real redis-server on free
// ports, HS256 tokens, and helpers to wait for a client's events.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import net from "node:net";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { Roomcast } from "../dist/index.js";

export const SECRET = "test-secret-0123456789";
export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const BIN = process.env.ROOMCAST_BIN ?? ROOT + "target/debug/roomcast";
/** How long a test waits for any one expected event. */
export const WAIT = 10000;

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const b64url = (s) => Buffer.from(s).toString("base64url");

/** An HS256 JWT for `sub` (valid for an hour unless `exp` is given). */
export function token(sub, claims = {}, secret = SECRET) {
  const body = { sub, exp: Math.floor(Date.now() / 1000) + 3600, ...claims };
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" })) + "." + b64url(JSON.stringify(body));
  return head + "." + createHmac("sha256", secret).update(head).digest("base64url");
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits for `cond()` to be true, polling; fails after `ms`. */
export async function until(cond, what, ms = WAIT) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function exited(child) {
  return child.exitCode != null || child.signalCode != null
    ? Promise.resolve()
    : new Promise((r) => child.once("exit", () => r()));
}

/** A redis-server on a free port, no persistence. */
export class Redis {
  static async start() {
    const r = new Redis();
    r.port = await freePort();
    r.child = spawn("redis-server", ["--port", String(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: "ignore",
    });
    await until(() => ping(r.port), "redis-server to answer PING");
    return r;
  }
  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }
  async stop() {
    this.child.kill("SIGKILL");
    await exited(this.child);
  }
}

function ping(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      s.destroy();
      resolve(d.toString().startsWith("+PONG"));
    });
    s.on("error", () => resolve(false));
  });
}

/** A `roomcast serve` process; `args` are extra flags. */
export class Server {
  static async start({ redis, id, args = [], env = {}, addr = "127.0.0.1:0" } = {}) {
    const s = new Server();
    s.opts = { redis, id, args, env };
    s.log = "";
    await s.spawn(addr);
    return s;
  }

  async spawn(addr) {
    const { redis, id, args, env } = this.opts;
    if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`cargo build\` at the repository root first`);
    const argv = ["serve", "--listen", addr, ...args];
    if (redis) argv.push("--redis", redis.url);
    if (id) argv.push("--instance-id", id);
    this.child = spawn(BIN, argv, {
      env: { ...process.env, ROOMCAST_JWT_SECRET: SECRET, ROOMCAST_LOG: "warn", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child.stderr.on("data", (d) => (this.log += d));
    this.addr = await new Promise((resolve, reject) => {
      let out = "";
      const timer = setTimeout(() => reject(new Error("roomcast did not start:\n" + this.log)), WAIT);
      this.child.stdout.on("data", (d) => {
        out += d;
        const m = /listening (\S+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      this.child.once("exit", () => reject(new Error("roomcast exited before listening:\n" + this.log)));
    });
  }

  get url() {
    return `ws://${this.addr}/ws`;
  }
  get http() {
    return `http://${this.addr}`;
  }
  get pid() {
    return this.child.pid;
  }

  /** Sends a signal to this process (by its PID) and, for KILL and TERM, waits for it to exit. */
  async signal(sig) {
    const child = this.child;
    child.kill(sig);
    await exited(child);
  }

  /** Starts the same server again on the same address. */
  async restart() {
    await this.spawn(this.addr);
  }

  async stop() {
    if (this.child.exitCode == null && this.child.signalCode == null) await this.signal("SIGKILL");
  }
}

const clients = new Set();

/** A client using Node's `ws` package; closed by `closeAll`. */
export function client(opts) {
  const c = new Roomcast({ WebSocket, ...opts });
  clients.add(c);
  return c;
}

export function closeAll() {
  for (const c of clients) c.close();
  clients.clear();
}

/** Every event `name` the client emits from now on. */
export function record(c, name) {
  const list = [];
  c.on(name, (e) => list.push(e));
  return list;
}

/** The next event `name` for which `pred` holds. */
export function next(c, name, pred = () => true, ms = WAIT) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${name} event in ${ms} ms`));
    }, ms);
    const off = c.on(name, (e) => {
      if (!pred(e)) return;
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}
