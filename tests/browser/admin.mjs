// Drives the /admin dashboard in Debian's chromium (headless) with
// playwright-core: signs in with an admin token, sees the connection
// count change when connections open, drains an instance with its button
// (accepting the confirmation), and saves a screenshot.
//
// Run by tests/admin_browser.rs, which starts the servers. Environment:
//   ROOMCAST_URL          base URL of the instance serving the dashboard
//   ROOMCAST_ADMIN_TOKEN  a token with role admin
//   ROOMCAST_USER_TOKEN   a token for the connections the test opens
//   ROOMCAST_DRAIN_ID     the instance to drain with the button
//   ROOMCAST_DRAIN_URL    that instance's base URL (its /ready must turn 503)
//   ROOMCAST_SCREENSHOT   where to save the screenshot
//   CHROMIUM              the browser (default /usr/bin/chromium)
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env("ROOMCAST_URL");
const adminToken = env("ROOMCAST_ADMIN_TOKEN");
const userToken = env("ROOMCAST_USER_TOKEN");
const drainId = env("ROOMCAST_DRAIN_ID");
const drainUrl = env("ROOMCAST_DRAIN_URL");
const screenshot = env("ROOMCAST_SCREENSHOT");
const WAIT = 15000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  const dialogs = [];
  page.on("dialog", async (d) => {
    dialogs.push(d.message());
    await d.accept();
  });

  await page.goto(`${base}/admin`);
  // A token without role admin is turned away with a message.
  await page.fill("#token", userToken);
  await page.click("#signin");
  await page.waitForSelector("#signin-error:not([hidden])", { timeout: WAIT });
  console.log(`non-admin: ${await page.textContent("#signin-error")}`);
  // So is one that is not a valid token at all.
  await page.fill("#token", "not-a-token");
  await page.click("#signin");
  await page.waitForFunction(
    () => /refused/.test(document.getElementById("signin-error").textContent),
    null,
    { timeout: WAIT },
  );
  await page.fill("#token", adminToken);
  await page.click("#signin");
  // The token stays in this tab's sessionStorage.
  const kept = await page.evaluate(() => sessionStorage.getItem("roomcast.admin.token"));
  if (kept !== adminToken) throw new Error("token not kept in sessionStorage");

  const total = async () => Number((await page.textContent("#total-connections")).replace(/\D/g, "") || NaN);
  await page.waitForFunction(
    () => /^\d/.test(document.getElementById("total-connections").textContent),
    null,
    { timeout: WAIT },
  );
  const before = await total();
  console.log(`connections before: ${before}`);

  // Five connections opened from another page of the same browser.
  const other = await browser.newPage();
  await other.goto(`${base}/admin/assets/admin.css`);
  await other.evaluate(
    async ({ url, n }) => {
      window.held = [];
      await Promise.all(
        Array.from({ length: n }, () => new Promise((ok, fail) => {
          const ws = new WebSocket(url);
          ws.onmessage = () => ok();
          ws.onerror = () => fail(new Error("websocket failed"));
          window.held.push(ws);
        })),
      );
    },
    { url: `${base.replace(/^http/, "ws")}/ws?token=${userToken}`, n: 5 },
  );
  await page.waitForFunction(
    (want) => Number(document.getElementById("total-connections").textContent.replace(/\D/g, "")) === want,
    before + 5,
    { timeout: WAIT },
  );
  console.log(`connections after opening 5: ${await total()}`);

  // Drain with the button; the confirmation is accepted.
  const button = `button[data-drain="${drainId}"]`;
  await page.waitForSelector(button, { timeout: WAIT });
  await page.click(button);
  await page.waitForSelector(`tr[data-instance="${drainId}"] td.state.draining`, { timeout: WAIT });
  if (!dialogs.some((m) => m.includes(drainId))) throw new Error(`no confirmation: ${dialogs}`);
  const ready = await fetch(`${drainUrl}/ready`);
  if (ready.status !== 503) throw new Error(`${drainId} /ready is ${ready.status} after the drain`);
  console.log(`drained ${drainId}: /ready ${ready.status}`);

  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
  console.log("ok");
} finally {
  await browser.close();
}
