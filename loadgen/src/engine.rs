//! The client machinery: one tokio task per simulated client.
//!
//! A client connects (TCP, WebSocket upgrade with the codec's subprotocol,
//! `welcome`), joins its rooms and waits for every `ack`, reports ready,
//! then loops until the plan's stop instant: it reads and accounts every
//! delivery, and, if its role says so, sends on a fixed schedule. All
//! clients share one monotonic clock ([`now_ns`]), so latency is receive
//! instant minus the send instant stamped in `data`.
//!
//! Counters are kept per client and added to the shared [`Stats`] once,
//! when the client ends, so the hot path touches no shared cache line
//! except the sharded latency histogram, which is fed in chunks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use roomcast::protocol::Codec;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::wire::{self, Inbound, Kind, Op, OrderTracker, Seen, Stamp};

pub type Ws = WebSocketStream<TcpStream>;

static START: OnceLock<Instant> = OnceLock::new();

/// Starts the loadgen-wide clock; call first thing in `main`.
pub fn start_clock() {
    START.get_or_init(Instant::now);
}

/// Nanoseconds since the loadgen started, on the monotonic clock.
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The tokio instant of a clock reading. Readings beyond ten days (the
/// "never" of a plan) are clamped, so that no instant arithmetic overflows.
pub fn at(ns: u64) -> tokio::time::Instant {
    const CAP: u64 = 10 * 24 * 3600 * 1_000_000_000;
    let start = *START.get_or_init(Instant::now);
    tokio::time::Instant::from_std(start + Duration::from_nanos(ns.min(CAP)))
}

/// "Never" in a plan.
pub const NEVER: u64 = u64::MAX;

/// The request id of the `ping` a burst sender sends after its last send:
/// the server answers in order, so its `pong` means every send before it
/// was taken.
const BURST_DONE_PING: u64 = 1 << 40;

/// The measurement timeline, published to every client at once. Times are
/// [`now_ns`] readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Senders start here (warm-up begins).
    pub send_start_ns: u64,
    /// Deliveries of messages stamped in [window_start, window_end) count.
    pub window_start_ns: u64,
    pub window_end_ns: u64,
    /// Scheduled senders stop here.
    pub send_end_ns: u64,
    /// Every client stops reading, closes and reports here.
    pub stop_ns: u64,
}

impl Plan {
    /// Connected and listening, nothing scheduled yet.
    pub const IDLE: Plan = Plan {
        send_start_ns: NEVER,
        window_start_ns: NEVER,
        window_end_ns: NEVER,
        send_end_ns: NEVER,
        stop_ns: NEVER,
    };

    fn in_window(&self, t: u64) -> bool {
        t >= self.window_start_ns && t < self.window_end_ns
    }
}

/// What a client does besides listening.
#[derive(Debug, Clone)]
pub enum Role {
    Listen,
    /// Publishes to `room` every `period_ns`, starting `phase_ns` after the
    /// plan's send start.
    Publish {
        room: Arc<str>,
        publisher: u32,
        period_ns: u64,
        phase_ns: u64,
        /// Latest-wins key of every message (W7).
        key: Option<Arc<str>>,
    },
    /// Sends a direct message to `to` on the same kind of schedule.
    Direct {
        to: Arc<str>,
        publisher: u32,
        period_ns: u64,
        phase_ns: u64,
    },
    /// Sends `rounds` messages to each of `to` as fast as the socket takes
    /// them, round by round, then pings to learn when all were taken.
    Burst {
        to: Vec<Arc<str>>,
        publisher: u32,
        rounds: u32,
    },
}

#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub user: Arc<str>,
    /// Index into the targets (server instances).
    pub target: usize,
    pub rooms: Vec<Arc<str>>,
    /// Delivery groups this client counts in once ready (its rooms, or its
    /// own inbox for direct messages): expected deliveries are computed
    /// from them.
    pub groups: Vec<u32>,
    pub role: Role,
    /// Deliveries after which this client counts as done (0: never).
    pub expect: u64,
}

/// One server instance to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ws://127.0.0.1:PORT/ws`, without a query.
    pub url: String,
    pub addr: SocketAddr,
}

/// How clients connect; fixed for a run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub codec: Codec,
    pub batch: bool,
    pub jwt_secret: String,
    pub connect_concurrency: usize,
    pub setup_timeout: Duration,
    pub pad: String,
    pub read_buffer: usize,
}

pub const HIST_SHARDS: usize = 32;
const LAT_CHUNK: usize = 256;

/// Latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere never leaves these counters inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Totals over all clients, filled as clients end.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Totals {
    pub published: u64,
    pub published_window: u64,
    /// Sends more than 10 ms behind their schedule.
    pub late_sends: u64,
    /// Sends skipped because the schedule fell more than 1 s behind.
    pub skipped_sends: u64,
    pub send_errors: u64,
    pub received_total: u64,
    pub received_window: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    pub malformed: u64,
    pub queued_deliveries: u64,
    pub live_deliveries: u64,
    pub other_events: u64,
    /// Frames that carried at least one room or direct message.
    pub delivery_frames: u64,
    /// Connections lost before the plan's stop.
    pub disconnects: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.published += o.published;
        self.published_window += o.published_window;
        self.late_sends += o.late_sends;
        self.skipped_sends += o.skipped_sends;
        self.send_errors += o.send_errors;
        self.received_total += o.received_total;
        self.received_window += o.received_window;
        self.out_of_order += o.out_of_order;
        self.duplicates += o.duplicates;
        self.malformed += o.malformed;
        self.queued_deliveries += o.queued_deliveries;
        self.live_deliveries += o.live_deliveries;
        self.other_events += o.other_events;
        self.delivery_frames += o.delivery_frames;
        self.disconnects += o.disconnects;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }
}

/// State shared by all clients of a run.
pub struct Shared {
    pub settings: Settings,
    pub targets: Vec<Target>,
    ws_config: WebSocketConfig,
    connect_sem: Semaphore,
    plan: watch::Receiver<Plan>,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    /// Clients that got their `expect` deliveries.
    pub done: AtomicUsize,
    /// When the last client reached its `expect`.
    pub last_done_ns: AtomicU64,
    /// Burst senders whose final ping was answered, and when the last was.
    pub bursts_done: AtomicUsize,
    pub last_burst_done_ns: AtomicU64,
    /// Ready clients per delivery group.
    pub group_ready: Vec<AtomicU32>,
    /// Messages stamped inside the window, per publisher.
    pub published_window: Vec<AtomicU64>,
    /// Instant the last client became ready (or failed).
    pub last_ready_ns: AtomicU64,
    totals: Mutex<Totals>,
    hist: Vec<Mutex<Histogram<u64>>>,
    /// Time from a client's connect permit to ready, µs.
    setup_hist: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
    pub welcome: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(
        settings: Settings,
        targets: Vec<Target>,
        groups: usize,
        publishers: usize,
    ) -> (Arc<Shared>, watch::Sender<Plan>) {
        let (tx, rx) = watch::channel(Plan::IDLE);
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(settings.read_buffer)
            .write_buffer_size(0)
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let shared = Shared {
            connect_sem: Semaphore::new(settings.connect_concurrency.max(1)),
            settings,
            targets,
            ws_config,
            plan: rx,
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            last_done_ns: AtomicU64::new(0),
            bursts_done: AtomicUsize::new(0),
            last_burst_done_ns: AtomicU64::new(0),
            group_ready: (0..groups).map(|_| AtomicU32::new(0)).collect(),
            published_window: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            last_ready_ns: AtomicU64::new(0),
            totals: Mutex::new(Totals::default()),
            hist: (0..HIST_SHARDS).map(|_| Mutex::new(new_hist())).collect(),
            setup_hist: Mutex::new(new_hist()),
            first_error: Mutex::new(None),
            welcome: Mutex::new(None),
        };
        (Arc::new(shared), tx)
    }

    pub fn totals(&self) -> Totals {
        lock(&self.totals).clone()
    }

    pub fn latency(&self) -> Histogram<u64> {
        let mut h = new_hist();
        for shard in &self.hist {
            // Same bounds on every shard, so adding cannot fail.
            let _ = h.add(&*lock(shard));
        }
        h
    }

    pub fn setup_times(&self) -> Histogram<u64> {
        lock(&self.setup_hist).clone()
    }

    pub fn first_error(&self) -> Option<String> {
        lock(&self.first_error).clone()
    }

    fn note_error(&self, e: String) {
        let mut g = lock(&self.first_error);
        if g.is_none() {
            *g = Some(e);
        }
    }

    /// Deliveries expected from per-publisher window counts: each message
    /// of publisher `p` is expected once per ready member of `group_of[p]`.
    pub fn expected(&self, group_of: &[u32]) -> u64 {
        self.published_window
            .iter()
            .zip(group_of)
            .map(|(n, g)| {
                let members = self
                    .group_ready
                    .get(*g as usize)
                    .map_or(0, |m| m.load(Relaxed));
                n.load(Relaxed) * u64::from(members)
            })
            .sum()
    }
}

/// Spawns one task per client; clients connect at most
/// `connect_concurrency` at a time.
pub fn spawn_all(set: &mut JoinSet<()>, specs: Vec<ClientSpec>, sh: &Arc<Shared>) {
    for spec in specs {
        let sh = Arc::clone(sh);
        set.spawn(client(spec, sh));
    }
}

/// Waits until `n` clients are ready or failed, or until `deadline`,
/// printing progress to stderr. Returns the number ready.
pub async fn wait_ready(sh: &Shared, n: usize, deadline: Duration, what: &str) -> usize {
    let t0 = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let ready = sh.ready.load(Relaxed);
        let failed = sh.failed.load(Relaxed);
        if ready + failed >= n || t0.elapsed() > deadline {
            eprintln!(
                "loadgen: {what}: {ready}/{n} ready, {failed} failed in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            if let Some(e) = sh.first_error() {
                eprintln!("loadgen: first error: {e}");
            }
            return ready;
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!("loadgen: {what}: {ready}/{n} ready, {failed} failed");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for every client task to end, at most `limit`; tasks still
/// running then are aborted (their counters are lost and the count of
/// aborted tasks is returned).
pub async fn join_all(set: &mut JoinSet<()>, limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(_)) => continue,
            Ok(None) => return 0,
            Err(_) => {
                let left = set.len();
                set.abort_all();
                while set.join_next().await.is_some() {}
                return left;
            }
        }
    }
}

fn token(secret: &str, user: &str) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 24 * 3600;
    let claims = Claims { sub: user, exp };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

/// One client from connect to close.
async fn client(spec: ClientSpec, sh: Arc<Shared>) {
    let mut local = Local::new(spec.expect);
    let setup = {
        let permit = sh.connect_sem.acquire().await;
        let t0 = Instant::now();
        // The setup future is boxed so that its (large) handshake state is
        // freed once connected instead of living in every idle task.
        let r = tokio::time::timeout(
            sh.settings.setup_timeout,
            Box::pin(setup(&spec, &sh, &mut local)),
        )
        .await;
        drop(permit);
        let us = t0.elapsed().as_micros() as u64;
        lock(&sh.setup_hist).saturating_record(us.max(1));
        r
    };
    sh.last_ready_ns.fetch_max(now_ns(), Relaxed);
    let ws = match setup {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            sh.note_error(format!("{}: {e:#}", spec.user));
            sh.failed.fetch_add(1, Relaxed);
            local.finish(&sh);
            return;
        }
        Err(_) => {
            sh.note_error(format!("{}: setup timed out", spec.user));
            sh.failed.fetch_add(1, Relaxed);
            local.finish(&sh);
            return;
        }
    };
    for g in &spec.groups {
        if let Some(n) = sh.group_ready.get(*g as usize) {
            n.fetch_add(1, Relaxed);
        }
    }
    sh.ready.fetch_add(1, Relaxed);
    Box::pin(run(ws, &spec, &sh, &mut local)).await;
    local.finish(&sh);
}

async fn setup(spec: &ClientSpec, sh: &Shared, local: &mut Local) -> anyhow::Result<Ws> {
    let target = sh
        .targets
        .get(spec.target)
        .ok_or_else(|| anyhow!("no target {}", spec.target))?;
    let stream = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("tcp connect {}", target.addr))?;
    stream.set_nodelay(true)?;
    let jwt = token(&sh.settings.jwt_secret, &spec.user)?;
    let batch = if sh.settings.batch { "&batch=1" } else { "" };
    let mut request = format!("{}?token={jwt}{batch}", target.url).into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(sh.settings.codec.subprotocol()),
    );
    let (mut ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(sh.ws_config))
            .await
            .context("websocket upgrade")?;
    let plan = *sh.plan.borrow();
    while !local.welcomed {
        read_setup_frame(&mut ws, local, &plan, sh).await?;
    }
    for (i, room) in spec.rooms.iter().enumerate() {
        let msg = wire::encode(
            sh.settings.codec,
            &Op::Join {
                id: i as u64 + 1,
                room,
            },
            "",
        )?;
        ws.send(msg).await.context("send join")?;
    }
    while local.acked < spec.rooms.len() {
        read_setup_frame(&mut ws, local, &plan, sh).await?;
        if let Some(e) = local.op_error.take() {
            bail!("join refused: {e}");
        }
    }
    Ok(ws)
}

async fn read_setup_frame(
    ws: &mut Ws,
    local: &mut Local,
    plan: &Plan,
    sh: &Shared,
) -> anyhow::Result<()> {
    match ws.next().await {
        Some(Ok(msg)) => match local.on_message(msg, plan, sh) {
            Flow::Continue => Ok(()),
            Flow::Closed(why) => bail!("closed during setup: {why}"),
        },
        Some(Err(e)) => Err(anyhow!(e).context("read during setup")),
        None => bail!("connection ended during setup"),
    }
}

/// The fixed-rate schedule of a publisher or direct sender: message `k`
/// is due at `origin + k * period`.
struct Schedule {
    origin_ns: u64,
    period_ns: u64,
    k: u64,
}

impl Schedule {
    fn for_plan(role: &Role, plan: &Plan) -> Option<Schedule> {
        let (period_ns, phase_ns) = match role {
            Role::Publish {
                period_ns,
                phase_ns,
                ..
            }
            | Role::Direct {
                period_ns,
                phase_ns,
                ..
            } => (*period_ns, *phase_ns),
            _ => return None,
        };
        (plan.send_start_ns != NEVER).then(|| Schedule {
            origin_ns: plan.send_start_ns.saturating_add(phase_ns),
            period_ns: period_ns.max(1),
            k: 0,
        })
    }

    fn due_ns(&self) -> u64 {
        self.origin_ns
            .saturating_add(self.k.saturating_mul(self.period_ns))
    }

    /// Moves to the next message after one is sent at `now`, counting a
    /// late send, or skipping ahead when more than 1 s behind (a loadgen
    /// that cannot keep up must not then burst to catch up).
    fn advance(&mut self, now: u64, t: &mut Totals) {
        let lag = now.saturating_sub(self.due_ns());
        if lag > 1_000_000_000 {
            let k_now = now.saturating_sub(self.origin_ns) / self.period_ns;
            t.skipped_sends += k_now.saturating_sub(self.k);
            self.k = k_now;
        } else if lag > 10_000_000 {
            t.late_sends += 1;
        }
        self.k += 1;
    }
}

/// Where a burst sender is: round, and index into its recipients.
#[derive(Debug, Clone, Copy)]
struct BurstPos {
    round: u32,
    idx: usize,
}

/// What the sending side of a client keeps between sends.
struct Sender {
    seq: u64,
    schedule: Option<Schedule>,
    burst: Option<BurstPos>,
    burst_started: bool,
}

async fn run(mut ws: Ws, spec: &ClientSpec, sh: &Shared, local: &mut Local) {
    let mut rx = sh.plan.clone();
    let mut plan = *rx.borrow_and_update();
    let mut tx = Sender {
        seq: 0,
        schedule: Schedule::for_plan(&spec.role, &plan),
        burst: None,
        burst_started: false,
    };
    let stop = tokio::time::sleep_until(at(plan.stop_ns));
    tokio::pin!(stop);
    let next_due = |tx: &Sender| at(tx.schedule.as_ref().map_or(NEVER, Schedule::due_ns));
    let send_timer = tokio::time::sleep_until(next_due(&tx));
    tokio::pin!(send_timer);
    let stopped_by_plan = loop {
        if !tx.burst_started
            && plan.send_start_ns != NEVER
            && matches!(spec.role, Role::Burst { .. })
        {
            tx.burst = Some(BurstPos { round: 0, idx: 0 });
            tx.burst_started = true;
        }
        let scheduled = tx.schedule.is_some();
        let bursting = tx.burst.is_some();
        // Once a plan has a stop, only the stop timer matters: watching the
        // channel on every wake-up would take its lock once per delivery.
        let plan_open = plan.stop_ns == NEVER;
        // A server that stops reading must not keep a sender past its stop.
        let stop_at = at(plan.stop_ns);
        tokio::select! {
            biased;
            _ = &mut stop => break true,
            changed = rx.changed(), if plan_open => {
                if changed.is_err() {
                    break true;
                }
                let new_plan = *rx.borrow_and_update();
                if new_plan.stop_ns != plan.stop_ns {
                    stop.as_mut().reset(at(new_plan.stop_ns));
                }
                if new_plan.send_start_ns != plan.send_start_ns {
                    tx.schedule = Schedule::for_plan(&spec.role, &new_plan);
                    send_timer.as_mut().reset(next_due(&tx));
                }
                plan = new_plan;
            }
            _ = &mut send_timer, if scheduled => {
                let now = now_ns();
                let Some(s) = tx.schedule.as_mut().filter(|_| now < plan.send_end_ns) else {
                    tx.schedule = None;
                    continue;
                };
                s.advance(now, &mut local.t);
                send_timer.as_mut().reset(next_due(&tx));
                let sent = send_scheduled(&mut ws, spec, sh, local, &plan, &mut tx.seq);
                match tokio::time::timeout_at(stop_at, sent).await {
                    Ok(true) => {}
                    Ok(false) => break false,
                    Err(_) => break true,
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(msg)) => {
                    if let Flow::Closed(why) = local.on_message(msg, &plan, sh) {
                        local.t.error(format!("closed: {why}"));
                        break false;
                    }
                }
                Some(Err(e)) => {
                    local.t.error(format!("read: {}", short(&e.to_string())));
                    break false;
                }
                None => {
                    local.t.error("read: eof".to_owned());
                    break false;
                }
            },
            _ = std::future::ready(()), if bursting => {
                let chunk = burst_chunk(&mut ws, spec, sh, local, &plan, &mut tx);
                match tokio::time::timeout_at(stop_at, chunk).await {
                    Ok(true) => {}
                    Ok(false) => break false,
                    Err(_) => break true,
                }
            }
        }
    };
    if !stopped_by_plan {
        local.t.disconnects += 1;
    }
    // Best effort: the server sees a clean close instead of a reset.
    let _ = tokio::time::timeout(Duration::from_millis(300), ws.close(None)).await;
}

/// Sends the next frames of a burst (a chunk, to let reads in between);
/// after the last one, the ping whose pong marks the burst as taken.
/// Returns false when the connection failed.
async fn burst_chunk(
    ws: &mut Ws,
    spec: &ClientSpec,
    sh: &Shared,
    local: &mut Local,
    plan: &Plan,
    tx: &mut Sender,
) -> bool {
    const CHUNK: usize = 32;
    let (
        Role::Burst {
            to,
            publisher,
            rounds,
        },
        Some(mut pos),
    ) = (&spec.role, tx.burst)
    else {
        tx.burst = None;
        return true;
    };
    for _ in 0..CHUNK {
        if pos.idx >= to.len() {
            pos = BurstPos {
                round: pos.round + 1,
                idx: 0,
            };
        }
        if pos.round >= *rounds || to.is_empty() {
            tx.burst = None;
            let Ok(ping) = wire::encode(
                sh.settings.codec,
                &Op::Ping {
                    id: BURST_DONE_PING,
                },
                "",
            ) else {
                return false;
            };
            return ws.send(ping).await.is_ok();
        }
        let stamp = Stamp {
            t: now_ns(),
            p: *publisher,
            s: tx.seq,
        };
        let op = Op::Send {
            to: &to[pos.idx],
            stamp,
        };
        if !feed(ws, sh, local, plan, &op, stamp).await {
            return false;
        }
        tx.seq += 1;
        pos.idx += 1;
    }
    tx.burst = Some(pos);
    if ws.flush().await.is_err() {
        local.t.send_errors += 1;
        return false;
    }
    true
}

/// Encodes and queues one stamped frame, counting it as published.
async fn feed(
    ws: &mut Ws,
    sh: &Shared,
    local: &mut Local,
    plan: &Plan,
    op: &Op<'_>,
    stamp: Stamp,
) -> bool {
    let msg = match wire::encode(sh.settings.codec, op, &sh.settings.pad) {
        Ok(m) => m,
        Err(_) => {
            local.t.send_errors += 1;
            return true;
        }
    };
    if ws.feed(msg).await.is_err() {
        local.t.send_errors += 1;
        return false;
    }
    local.t.published += 1;
    if plan.in_window(stamp.t) {
        local.t.published_window += 1;
        if let Some(n) = sh.published_window.get(stamp.p as usize) {
            n.fetch_add(1, Relaxed);
        }
    }
    true
}

/// Sends one message of a publisher or direct sender, stamped now.
async fn send_scheduled(
    ws: &mut Ws,
    spec: &ClientSpec,
    sh: &Shared,
    local: &mut Local,
    plan: &Plan,
    seq: &mut u64,
) -> bool {
    let stamp = |p: u32| Stamp {
        t: now_ns(),
        p,
        s: *seq,
    };
    let (op, stamp) = match &spec.role {
        Role::Publish {
            room,
            publisher,
            key,
            ..
        } => {
            let stamp = stamp(*publisher);
            let key = key.as_deref();
            (Op::Publish { room, stamp, key }, stamp)
        }
        Role::Direct { to, publisher, .. } => {
            let stamp = stamp(*publisher);
            (Op::Send { to, stamp }, stamp)
        }
        _ => return true,
    };
    *seq += 1;
    if !feed(ws, sh, local, plan, &op, stamp).await {
        return false;
    }
    if ws.flush().await.is_err() {
        local.t.send_errors += 1;
        return false;
    }
    true
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

enum Flow {
    Continue,
    Closed(String),
}

/// Per-client counters and order state; added to [`Shared`] at the end.
struct Local {
    t: Totals,
    order: OrderTracker,
    lat: Vec<u64>,
    /// Which latency histogram shard this client feeds.
    shard: usize,
    expect: u64,
    got: u64,
    welcomed: bool,
    acked: usize,
    op_error: Option<String>,
}

impl Local {
    fn new(expect: u64) -> Local {
        static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
        Local {
            t: Totals::default(),
            order: OrderTracker::default(),
            lat: Vec::new(),
            shard: NEXT_SHARD.fetch_add(1, Relaxed),
            expect,
            got: 0,
            welcomed: false,
            acked: 0,
            op_error: None,
        }
    }

    fn on_message(&mut self, msg: Message, plan: &Plan, sh: &Shared) -> Flow {
        let (bytes, codec) = match &msg {
            Message::Text(t) => (t.as_bytes(), Codec::Json),
            Message::Binary(b) => (&b[..], Codec::MsgPack),
            Message::Close(frame) => {
                let why = frame.as_ref().map_or_else(
                    || "no close frame".to_owned(),
                    |f| format!("{} {}", u16::from(f.code), short(&f.reason)),
                );
                return Flow::Closed(why);
            }
            // Pings are answered by tungstenite on the next read.
            _ => return Flow::Continue,
        };
        match wire::decode(bytes, codec) {
            Some(ev) => {
                if matches!(ev.ev, Kind::Message | Kind::Direct | Kind::Batch) {
                    self.t.delivery_frames += 1;
                }
                let now = now_ns();
                self.on_event(ev, now, plan, sh);
            }
            None => self.t.malformed += 1,
        }
        Flow::Continue
    }

    fn on_event(&mut self, ev: Inbound, now: u64, plan: &Plan, sh: &Shared) {
        match ev.ev {
            Kind::Message | Kind::Direct => match ev.data {
                Some(stamp) => self.on_delivery(stamp, ev.queued, now, plan, sh),
                None => self.t.malformed += 1,
            },
            Kind::Batch => {
                for inner in ev.events.unwrap_or_default() {
                    self.on_event(inner, now, plan, sh);
                }
            }
            Kind::Welcome => {
                self.welcomed = true;
                let mut w = lock(&sh.welcome);
                if w.is_none() {
                    *w = Some(format!(
                        "instance {:?}, limits {:?}",
                        ev.instance.unwrap_or_default(),
                        ev.limits
                    ));
                }
            }
            Kind::Ack => {
                if ev.num_id().is_some_and(|id| id < BURST_DONE_PING) {
                    self.acked += 1;
                }
                self.t.other_events += 1;
            }
            Kind::Pong => {
                if ev.num_id() == Some(BURST_DONE_PING) {
                    sh.bursts_done.fetch_add(1, Relaxed);
                    sh.last_burst_done_ns.fetch_max(now, Relaxed);
                }
                self.t.other_events += 1;
            }
            Kind::Error => {
                let id = ev.num_id();
                let code = ev.code.unwrap_or_else(|| "?".to_owned());
                if let Some(id) = id {
                    self.op_error = Some(format!(
                        "id {id}: {code}: {}",
                        short(&ev.text.unwrap_or_default())
                    ));
                }
                self.t.error(format!("error: {code}"));
            }
            Kind::Reconnect => self.t.error("reconnect event".to_owned()),
            _ => self.t.other_events += 1,
        }
    }

    fn on_delivery(
        &mut self,
        stamp: Stamp,
        queued: Option<bool>,
        now: u64,
        plan: &Plan,
        sh: &Shared,
    ) {
        self.t.received_total += 1;
        match self.order.observe(stamp.p, stamp.s) {
            Seen::InOrder => {}
            Seen::OutOfOrder => self.t.out_of_order += 1,
            Seen::Duplicate => {
                self.t.out_of_order += 1;
                self.t.duplicates += 1;
                return;
            }
        }
        match queued {
            Some(true) => self.t.queued_deliveries += 1,
            Some(false) => self.t.live_deliveries += 1,
            None => {}
        }
        if plan.in_window(stamp.t) {
            self.t.received_window += 1;
            self.lat.push(now.saturating_sub(stamp.t) / 1000);
            if self.lat.len() >= LAT_CHUNK {
                self.flush_latency(sh);
            }
        }
        self.got += 1;
        if self.expect > 0 && self.got == self.expect {
            sh.done.fetch_add(1, Relaxed);
            sh.last_done_ns.fetch_max(now, Relaxed);
        }
    }

    fn flush_latency(&mut self, sh: &Shared) {
        if self.lat.is_empty() {
            return;
        }
        if let Some(h) = sh.hist.get(self.shard % HIST_SHARDS) {
            let mut h = lock(h);
            for us in self.lat.drain(..) {
                h.saturating_record(us.max(1));
            }
        }
    }

    fn finish(&mut self, sh: &Shared) {
        self.flush_latency(sh);
        lock(&sh.totals).add(&self.t);
    }
}
