// The roomcast admin dashboard. Signs in with an admin token kept in
// sessionStorage (this tab only), connects to /ws with ?token=, joins the
// stats channel and renders every `stats` event; commands go out as
// `admin` ops. The WebSocket is reopened whenever it closes (an instance
// died or drained), except after a kick (4002) or a refused sign-in.
"use strict";

const STATS = "$admin:stats";
const TOKEN_KEY = "roomcast.admin.token";
const HISTORY_MS = 5 * 60 * 1000;

const $ = (id) => document.getElementById(id);
let ws = null;
let opened = false;
let nextId = 1;
let backoff = 500;
let reconnectTimer = null;
const pending = new Map();
const history = [];

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function log(text, bad) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (bad) li.className = "error";
  $("log").prepend(li);
  while ($("log").children.length > 200) $("log").lastChild.remove();
}

function setStatus(text, on) {
  const s = $("status");
  s.textContent = text;
  s.className = `status ${on ? "on" : "off"}`;
}

function showSignin(error) {
  $("signin-view").hidden = false;
  $("main-view").hidden = true;
  $("signout").hidden = true;
  setStatus("signed out", false);
  $("signin-error").hidden = !error;
  $("signin-error").textContent = error || "";
}

function showMain() {
  $("signin-view").hidden = true;
  $("main-view").hidden = false;
  $("signout").hidden = false;
}

function signOut(error) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(reconnectTimer);
  if (ws) {
    ws.onclose = null;
    ws.close();
    ws = null;
  }
  showSignin(error);
}

function scheduleReconnect(after) {
  clearTimeout(reconnectTimer);
  const wait = after ?? backoff;
  backoff = Math.min(backoff * 2, 5000);
  setStatus(`reconnecting in ${Math.round(wait / 100) / 10} s`, false);
  reconnectTimer = setTimeout(connect, wait);
}

function connect() {
  const t = token();
  if (!t) return showSignin();
  showMain();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${scheme}//${location.host}/ws?token=${encodeURIComponent(t)}`, "roomcast.v1.json");
  opened = false;
  let hinted = null;
  setStatus("connecting", false);
  ws.onopen = () => {
    opened = true;
    backoff = 500;
  };
  ws.onmessage = (m) => {
    let ev;
    try {
      ev = JSON.parse(m.data);
    } catch {
      return;
    }
    handle(ev, (after) => (hinted = after));
  };
  ws.onclose = (e) => {
    for (const [, p] of pending) p.reject(new Error("connection closed"));
    pending.clear();
    if (e.code === 4002) {
      log(`this dashboard was kicked: ${e.reason || "kicked"}`, true);
      setStatus("kicked", false);
      return;
    }
    if (opened) return scheduleReconnect(hinted);
    // The upgrade failed: tell a refused token from an instance that is
    // down or draining (only the latter is worth retrying).
    checkToken().then((refused) => {
      if (refused) return signOut(refused);
      log("cannot connect (instance down or draining); retrying", true);
      scheduleReconnect(hinted);
    });
  };
}

// Why the token cannot watch the cluster, or null when it can (or when
// the instance cannot say).
async function checkToken() {
  try {
    const r = await fetch("/admin/api/stats", { headers: { Authorization: `Bearer ${token()}` } });
    if (r.status === 401) return "the token was refused (invalid or expired)";
    if (r.status === 403) {
      const body = await r.json().catch(() => ({}));
      return `not allowed: ${body.error?.text || "needs role admin"}`;
    }
  } catch {
    // The instance is unreachable: retry.
  }
  return null;
}

function handle(ev, hint) {
  switch (ev.ev) {
    case "welcome":
      setStatus(`connected to ${ev.instance}`, true);
      send({ op: "join", room: STATS }).then(
        () => log(`watching the cluster from ${ev.instance}`),
        (e) => signOut(`not an admin: ${e.message}`),
      );
      break;
    case "stats":
      render(ev.data);
      break;
    case "reconnect":
      log(`instance draining; reconnecting in ${ev.after_ms} ms`);
      hint(ev.after_ms);
      break;
    default:
      if ("id" in ev && pending.has(ev.id)) {
        const p = pending.get(ev.id);
        pending.delete(ev.id);
        if (ev.ev === "error") p.reject(new Error(`${ev.code}: ${ev.text}`));
        else p.resolve(ev);
      }
  }
}

function send(frame) {
  return new Promise((resolve, reject) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return reject(new Error("not connected"));
    const id = nextId++;
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ ...frame, id }));
  });
}

async function command(cmd, data, what) {
  try {
    const ev = await send({ op: "admin", cmd, data });
    log(`${what}: ${JSON.stringify(ev.result)}`);
  } catch (e) {
    log(`${what} failed: ${e.message}`, true);
  }
}

// Rendering

function fmt(n, digits = 0) {
  if (n === null || n === undefined) return "-";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function bytes(n) {
  if (!n) return "-";
  return `${(n / 1048576).toFixed(1)} MB`;
}

function duration(s) {
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.append(td);
  return td;
}

function busText(b) {
  if (!b) return "-";
  if (b.mode === "standalone") return "standalone";
  const state = b.connected ? (b.ready === false ? "resyncing" : "up") : "DOWN";
  return `redis ${state}, ${b.reconnects} reconnects, ${b.lagged} lagged, outbox ${b.outbox}`;
}

function render(s) {
  const t = s.totals || {};
  $("total-instances").textContent = fmt(t.instances);
  $("total-connections").textContent = fmt(t.connections);
  $("total-users").textContent = fmt(t.users);
  $("total-rooms").textContent = fmt(t.rooms);
  $("total-in").textContent = fmt(t.msgs_in_per_s, 1);
  $("total-deliveries").textContent = fmt(t.deliveries_per_s, 1);
  $("total-offline").textContent = fmt(t.offline_depth);
  $("total-slow").textContent = `${fmt(t.slow_consumer_closes)} / ${fmt(t.slow_consumer_drops)}`;

  const body = $("instances").tBodies[0];
  body.replaceChildren();
  for (const i of s.instances || []) {
    const tr = document.createElement("tr");
    tr.dataset.instance = i.id;
    cell(tr, i.id);
    cell(tr, i.address || "-");
    cell(tr, i.version);
    cell(tr, duration(i.uptime_s || 0));
    cell(tr, fmt(i.connections), "connections");
    cell(tr, fmt(i.users));
    cell(tr, fmt(i.rooms));
    cell(tr, fmt(i.msgs_in_per_s, 1));
    cell(tr, fmt(i.msgs_out_per_s, 1));
    cell(tr, fmt(i.deliveries_per_s, 1));
    cell(tr, fmt(i.direct_per_s, 1));
    cell(tr, fmt(i.offline_depth));
    cell(tr, `${fmt(i.slow_consumer_closes)} / ${fmt(i.slow_consumer_drops)}`);
    cell(tr, busText(i.bus));
    cell(tr, bytes(i.rss_bytes));
    cell(tr, `${fmt(i.cpu_percent, 1)} %`);
    cell(tr, i.draining ? "draining" : "serving", `state ${i.draining ? "draining" : ""}`);
    const actions = cell(tr, "");
    const button = document.createElement("button");
    if (i.draining) {
      button.textContent = "Undrain";
      button.dataset.undrain = i.id;
      button.onclick = () => {
        if (confirm(`Undrain ${i.id}? It accepts connections again.`))
          command("undrain", { instance: i.id }, `undrain ${i.id}`);
      };
    } else {
      button.textContent = "Drain";
      button.className = "danger";
      button.dataset.drain = i.id;
      button.onclick = () => {
        if (confirm(`Drain ${i.id}? Its ${i.connections} connections are told to reconnect elsewhere, and it stops accepting.`))
          command("drain", { instance: i.id }, `drain ${i.id}`);
      };
    }
    actions.append(button);
    body.append(tr);
  }

  const rooms = (id, list, field, digits) => {
    const b = $(id).tBodies[0];
    b.replaceChildren();
    for (const r of list || []) {
      const tr = document.createElement("tr");
      cell(tr, r.tenant || "(default)");
      cell(tr, r.room);
      cell(tr, fmt(r[field], digits));
      b.append(tr);
    }
  };
  rooms("rooms-members", s.top_rooms?.by_members, "members", 0);
  rooms("rooms-rate", s.top_rooms?.by_rate, "msgs_per_s", 1);

  const now = Date.now();
  history.push({ t: now, a: t.msgs_in_per_s || 0, b: t.deliveries_per_s || 0 });
  while (history.length && history[0].t < now - HISTORY_MS) history.shift();
  drawChart();
}

// The chart: two lines on a hand-drawn canvas, scaled for the screen.
function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 960;
  const h = canvas.clientHeight || 240;
  if (canvas.width !== Math.round(w * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 56, right = 10, top = 10, bottom = 22;
  const pw = w - left - right, ph = h - top - bottom;
  const max = Math.max(1, ...history.map((p) => Math.max(p.a, p.b)));
  const scale = niceMax(max);
  const now = Date.now();
  const x = (t) => left + pw * (1 - (now - t) / HISTORY_MS);
  const y = (v) => top + ph * (1 - v / scale);
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#e3e6ec";
  g.fillStyle = "#667085";
  g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const v = (scale * k) / 4;
    const yy = Math.round(y(v)) + 0.5;
    g.beginPath();
    g.moveTo(left, yy);
    g.lineTo(left + pw, yy);
    g.stroke();
    g.textAlign = "right";
    g.fillText(fmt(v, v < 10 ? 1 : 0), left - 6, yy + 4);
  }
  g.textAlign = "center";
  for (let m = 0; m <= 5; m++) g.fillText(m === 0 ? "now" : `-${m} min`, x(now - m * 60000), h - 6);
  const line = (key, color) => {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    history.forEach((p, k) => (k ? g.lineTo(x(p.t), y(p[key])) : g.moveTo(x(p.t), y(p[key]))));
    g.stroke();
  };
  line("b", getComputedStyle(document.documentElement).getPropertyValue("--out").trim() || "#e0662b");
  line("a", getComputedStyle(document.documentElement).getPropertyValue("--in").trim() || "#2f6fde");
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// Wiring

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token").value.trim();
  if (!t) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  $("token").value = "";
  backoff = 500;
  connect();
});

$("signout").addEventListener("click", () => signOut());

$("kick-user-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const user = $("kick-user").value.trim();
  const tenant = $("kick-tenant").value.trim();
  const reason = $("kick-reason").value.trim();
  if (!user || !confirm(`Kick every connection of ${user}${tenant ? ` (tenant ${tenant})` : ""}?`)) return;
  const data = { user };
  if (tenant) data.tenant = tenant;
  if (reason) data.reason = reason;
  command("kick_user", data, `kick ${user}`);
});

$("kick-conn-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const conn = $("kick-conn").value.trim();
  const reason = $("kick-conn-reason").value.trim();
  if (!conn || !confirm(`Kick connection ${conn}?`)) return;
  const data = { conn };
  if (reason) data.reason = reason;
  command("kick_conn", data, `kick ${conn}`);
});

window.addEventListener("resize", drawChart);
if (token()) connect();
else showSignin();
