// The browser bundle in Debian's Chromium (driven by playwright-core, no
// downloaded browser): a page loads dist/roomcast.min.js, connects to a real
// instance with the browser's WebSocket, joins, and receives a message
// published from Node, in both codecs.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import http from "node:http";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { Server, client, closeAll, token } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const files = {
  "/index.html": ["test/browser/index.html", "text/html"],
  "/roomcast.min.js": ["dist/roomcast.min.js", "text/javascript"],
  "/roomcast-msgpack.min.js": ["dist/roomcast-msgpack.min.js", "text/javascript"],
};

let server, web, browser;
before(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (scripts/test does)`);
  server = await Server.start();
  web = http.createServer((req, res) => {
    const f = files[req.url];
    if (!f) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": f[1] }).end(readFileSync(new URL("../" + f[0], import.meta.url)));
  });
  await new Promise((r) => web.listen(0, "127.0.0.1", r));
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--disable-dev-shm-usage"] });
});
after(async () => {
  closeAll();
  await browser?.close();
  web?.close();
  await server?.stop();
});

for (const codec of ["json", "msgpack"]) {
  test(`a page with the bundle joins and receives a published message (${codec})`, async () => {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e));
    await page.goto(`http://127.0.0.1:${web.address().port}/index.html`);
    await page.waitForFunction(() => window.ready);
    const room = `browser-${codec}`;
    const user = await page.evaluate(([url, t, r, c]) => window.start(url, t, r, c), [
      server.url,
      token(`tab-${codec}`),
      room,
      codec,
    ]);
    assert.equal(user, `tab-${codec}`);

    const pub = client({ url: server.url, token: token(`node-${codec}`) });
    await pub.connect();
    await pub.join(room);
    await pub.publish(room, { roll: 17, who: "node" });
    await page.waitForFunction((r) => window.got.some((m) => m.room == r), room, { timeout: 10000 });
    const got = await page.evaluate(() => window.got);
    assert.deepEqual(
      got.map((m) => [m.room, m.from, m.data]),
      [[room, `node-${codec}`, { roll: 17, who: "node" }]],
    );
    assert.deepEqual(await page.evaluate(() => window.states), ["connecting", "connected"]);
    assert.deepEqual(errors, []);
    await page.close();
  });
}
