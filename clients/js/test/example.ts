// The README's example, type-checked by `npm run build` (tsc, no output):
// the public types must let an application write it as shown.
import { Roomcast, RoomcastError, type State } from "../src/index.js";
import { msgpack } from "../src/msgpack.js";

declare const board: { apply(room: string, data: unknown, offset?: number): void; reload(room: string): void };
declare const inbox: { add(mid: string, from: string, data: unknown, queued: boolean): void };
declare const roster: { add(room: string, user: string, n: number): void; remove(room: string, user: string, n: number): void };

export async function example(): Promise<void> {
  const rc = new Roomcast({
    url: ["wss://rt.example.com/ws"],
    token: async ({ refresh }) => (await fetch("/rt-token", { cache: refresh ? "reload" : "default" })).text(),
    codec: msgpack,
  });
  rc.on("state", (s: State) => console.log(s.state, s.state == "reconnecting" ? s.delayMs : ""));
  rc.on("message", (m) => board.apply(m.room, m.data, m.offset));
  rc.on("direct", (d) => inbox.add(d.mid, d.from, d.data, d.queued));
  rc.on("joined", (p) => roster.add(p.room, p.user, p.count));
  rc.on("left", (p) => roster.remove(p.room, p.user, p.count));
  rc.on("rejoin", (r) => { if (!r.recovered) board.reload(r.room); });
  rc.on("gap", (g) => { if (!g.recovered) board.reload(g.room); });
  rc.on("error", (e: RoomcastError) => console.warn(e.code));

  await rc.connect();
  await rc.join("campaign:7:encounter:42");
  await rc.publish("campaign:7:encounter:42", { hp: 7 }, { key: "hp:goblin" });
  await rc.send("bob", { text: "psst" });
  const { users, count }: { users: string[]; count: number } = await rc.presence("campaign:7:encounter:42");
  console.log(users, count);
}
