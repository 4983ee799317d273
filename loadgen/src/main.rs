//! roomcast load generator: runs the workloads of `design/bench.md` against
//! running roomcast instances on loopback and prints one JSON line per run.
//!
//! All clients live in this one process and share one monotonic clock, so
//! latency is receive instant minus the send instant carried in `data`.
//! `scripts/bench` starts the servers and calls this; see scripts/BENCH.md.
//!
//! Modules in reading order:
//! - `wire`: frames the loadgen sends, the subset of events it decodes,
//!   and per-publisher order tracking (pure).
//! - `engine`: one task per client: connect, join, send on schedule, count.
//! - `workloads`: W1-W5 (W6 is W1 and W3 against one instance) and W8
//!   (the server API's batch endpoint).
//! - `procstat`: CPU seconds and RSS from `/proc`.
//! - `report`: the JSON line.

mod admin;
mod engine;
mod procstat;
mod report;
mod wire;
mod workloads;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use roomcast::protocol::Codec;

use engine::{Settings, Target};
use procstat::Proc;
use report::ServerId;
use workloads::Ctx;
use workloads::offline::OfflineShape;
use workloads::timed::Timing;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "roomcast load generator (W1-W7 of design/bench.md)"
)]
struct Cli {
    /// Server instances: ws://127.0.0.1:PORT[/ws] or 127.0.0.1:PORT,
    /// comma-separated or repeated. Loopback only.
    #[arg(long = "url", value_delimiter = ',', required = true)]
    urls: Vec<String>,
    /// PIDs of the server instances, in the order of --url, for CPU and RSS.
    #[arg(long = "server-pid", value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Other processes to report CPU for, as name=PID (e.g. redis=1234).
    #[arg(long = "watch", value_delimiter = ',')]
    watch: Vec<String>,
    /// HS256 secret the servers verify tokens with.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    #[arg(long, value_enum, default_value_t = CodecArg::Json)]
    codec: CodecArg,
    /// Ask for batch events (`&batch=1`).
    #[arg(long)]
    batch: bool,
    /// Clients connecting (TCP + upgrade + joins) at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Longest connect + welcome + joins of one client, seconds.
    #[arg(long, default_value_t = 30.0)]
    setup_timeout: f64,
    /// Padding in the `data` of every publish and send, bytes.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// tungstenite read buffer per client, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Tokio worker threads of the loadgen.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Append the JSON line to this file too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `workload` field (default: the subcommand, e.g. W1; scripts/bench
    /// passes W6/W1 and W6/W3 for the standalone runs).
    #[arg(long)]
    workload_id: Option<String>,
    #[arg(long, default_value = "roomcast")]
    server_name: String,
    /// Default: this package's version (the loadgen is built with the server).
    #[arg(long)]
    server_version: Option<String>,
    /// Prefix of user and room names (default: unique per run).
    #[arg(long)]
    prefix: Option<String>,
    /// Free text copied into `detail.label`.
    #[arg(long)]
    label: Option<String>,
    /// Keep one admin connection subscribed to the stats channel (on the
    /// first --url) during the run.
    #[arg(long)]
    admin: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum CodecArg {
    Json,
    Msgpack,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// Room fan-out: one publisher per room at --rate messages/s.
    W1(FanoutArgs),
    /// Idle connections: server bytes per connection, time to connect.
    W2(IdleArgs),
    /// Direct messages from senders on instance A to receivers on B.
    W3(DirectArgs),
    /// Offline queue: messages to offline users, then they connect.
    W4(OfflineArgs),
    /// Big room: one room, one publisher.
    W5(BigRoomArgs),
    /// Game tick: every client publishes its position with a latest-wins key.
    W7(GameArgs),
    /// Server API: batches of publishes POSTed to /api/batch.
    W8(ServerApiArgs),
}

#[derive(Args, Debug)]
struct ServerApiArgs {
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Listeners per room, split over the instances.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Publishes per POST /api/batch.
    #[arg(long = "batch-items", default_value_t = 100)]
    batch_items: usize,
    /// HTTP connections posting batches (each owns rooms / drivers rooms).
    #[arg(long, default_value_t = 10)]
    drivers: usize,
    /// Target publishes/s over all drivers; 0 = as fast as answers come.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// An API key the servers accept (`--api-keys`).
    #[arg(long, env = "ROOMCAST_API_KEY", hide_env_values = true)]
    api_key: String,
    #[command(flatten)]
    timing: TimingArgs,
}

#[derive(Args, Debug)]
struct GameArgs {
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Messages/s per client.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    #[command(flatten)]
    timing: TimingArgs,
}

#[derive(Args, Debug, Clone, Copy)]
struct TimingArgs {
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
}

impl From<TimingArgs> for Timing {
    fn from(t: TimingArgs) -> Timing {
        Timing {
            warmup_s: t.warmup,
            duration_s: t.duration,
            drain_s: t.drain,
        }
    }
}

#[derive(Args, Debug)]
struct FanoutArgs {
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Messages/s per room.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    #[command(flatten)]
    timing: TimingArgs,
}

#[derive(Args, Debug)]
struct BigRoomArgs {
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Messages/s published to the room.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    #[command(flatten)]
    timing: TimingArgs,
}

#[derive(Args, Debug)]
struct IdleArgs {
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Seconds between the last connect and the start of the hold.
    #[arg(long, default_value_t = 10.0)]
    settle: f64,
    /// Seconds the connections are held (longer than one 25 s ping).
    #[arg(long, default_value_t = 30.0)]
    hold: f64,
}

#[derive(Args, Debug)]
struct DirectArgs {
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 1000)]
    pairs: usize,
    /// Messages/s per sender.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    #[command(flatten)]
    timing: TimingArgs,
}

#[derive(Args, Debug)]
struct OfflineArgs {
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Messages queued for each user.
    #[arg(long, default_value_t = 10)]
    messages: u32,
    #[arg(long, default_value_t = 100)]
    senders: usize,
    /// Longest enqueue phase, and longest drain phase, seconds.
    #[arg(long, default_value_t = 120.0)]
    phase_timeout: f64,
}

/// `ws://127.0.0.1:PORT/ws` from a URL or a bare address; refuses
/// anything that is not loopback.
fn parse_target(s: &str) -> anyhow::Result<Target> {
    let rest = s.strip_prefix("ws://").unwrap_or(s);
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    let addr: SocketAddr = hostport
        .to_socket_addrs()
        .with_context(|| format!("bad server address {s:?}"))?
        .next()
        .with_context(|| format!("{s:?} resolves to nothing"))?;
    if !addr.ip().is_loopback() {
        bail!("{s}: the loadgen only targets loopback addresses");
    }
    let path = path.split('?').next().unwrap_or("/ws");
    Ok(Target {
        url: format!("ws://{addr}{path}"),
        addr,
    })
}

fn default_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("b{:x}", (nanos / 1000) as u64 & 0xff_ffff)
}

fn main() -> anyhow::Result<()> {
    engine::start_clock();
    let cli = Cli::parse();
    let targets = cli
        .urls
        .iter()
        .map(|u| parse_target(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !cli.server_pids.is_empty() && cli.server_pids.len() != targets.len() {
        bail!("give one --server-pid per --url");
    }
    let mut extra = Vec::new();
    for w in &cli.watch {
        let (name, pid) = w
            .split_once('=')
            .with_context(|| format!("--watch {w:?}: expected name=PID"))?;
        extra.push((name.to_owned(), Proc::Pid(pid.parse()?)));
    }
    let settings = Settings {
        codec: match cli.codec {
            CodecArg::Json => Codec::Json,
            CodecArg::Msgpack => Codec::MsgPack,
        },
        batch: cli.batch,
        jwt_secret: cli.jwt_secret.clone(),
        connect_concurrency: cli.connect_concurrency,
        setup_timeout: Duration::from_secs_f64(cli.setup_timeout),
        pad: "x".repeat(cli.payload_bytes),
        read_buffer: cli.read_buffer.max(256),
    };
    let ctx = Ctx {
        settings,
        servers: cli.server_pids.iter().map(|p| Proc::Pid(*p)).collect(),
        targets,
        extra,
        prefix: cli.prefix.clone().unwrap_or_else(default_prefix),
        workload_id: cli.workload_id.clone(),
        server: ServerId {
            name: cli.server_name.clone(),
            version: cli
                .server_version
                .clone()
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
        },
        label: cli.label.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let watcher = match cli.admin {
            true => {
                let first = ctx.targets.first().context("no --url")?;
                Some(admin::watch(first, &cli.jwt_secret).await?)
            }
            false => None,
        };
        let mut report = run(&ctx, &cli.workload).await?;
        if let Some(w) = watcher {
            report
                .detail
                .insert("admin_stats_events".into(), w.stop().into());
        }
        report.detail.insert("admin".into(), cli.admin.into());
        anyhow::Ok(report)
    })?;
    let dead = ctx.dead_servers();
    if !dead.is_empty() {
        eprintln!("loadgen: server instance(s) {dead:?} are gone");
    }
    report.emit(cli.out.as_deref())?;
    // Exit without waiting for stray tasks: everything is reported.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn run(ctx: &Ctx, w: &Workload) -> anyhow::Result<report::Report> {
    use workloads::{idle, offline, server_api, timed};
    match w {
        Workload::W1(a) => {
            timed::fanout(ctx, "W1", a.clients, a.rooms, a.rate, a.timing.into()).await
        }
        Workload::W5(a) => timed::fanout(ctx, "W5", a.clients, 1, a.rate, a.timing.into()).await,
        Workload::W7(a) => {
            timed::game(ctx, "W7", a.clients, a.rooms, a.rate, a.timing.into()).await
        }
        Workload::W3(a) => timed::direct(ctx, "W3", a.pairs, a.rate, a.timing.into()).await,
        Workload::W2(a) => idle::idle(ctx, "W2", a.clients, a.rooms, a.settle, a.hold).await,
        Workload::W8(a) => {
            let shape = server_api::ApiShape {
                rooms: a.rooms,
                members: a.members,
                batch: a.batch_items,
                drivers: a.drivers,
                rate: a.rate,
                api_key: a.api_key.clone(),
            };
            server_api::server_api(ctx, "W8", &shape, a.timing.into()).await
        }
        Workload::W4(a) => {
            let shape = OfflineShape {
                users: a.users,
                messages: a.messages,
                senders: a.senders,
                phase_timeout_s: a.phase_timeout,
            };
            offline::offline(ctx, "W4", &shape).await
        }
    }
}
