//! `roomcast serve`: the server binary (and `roomcast token` for development tokens).

/// jemalloc instead of glibc's allocator: with many small, short-lived
/// allocations across worker threads, glibc spent about a quarter of the
/// server's CPU in malloc and free (direct messages in cluster mode).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use roomcast::auth::{Verifier, mint_hs256};
use roomcast::bus::Bus;
use roomcast::bus::memory::MemoryBus;
use roomcast::bus::redis::{RedisBus, RedisTuning};
use roomcast::config::{self, Command, Config, LogConfig, LogFormat, TokenArgs};
use roomcast::hub::Hub;
use roomcast::node::Node;
use roomcast::offline::MemoryOffline;
use roomcast::registry::Registry;
use roomcast::{conn, metrics, server, shutdown};

/// Why the process stops early. Either way it prints `error: <message>`
/// on stderr, with no backtrace (even under RUST_BACKTRACE): the message
/// is for the operator, not a crash report.
enum Fatal {
    /// A setting it cannot use: exit status 2, as for a usage error.
    Config(anyhow::Error),
    /// A failure while starting or running: exit status 1.
    Run(anyhow::Error),
}

impl From<anyhow::Error> for Fatal {
    fn from(e: anyhow::Error) -> Self {
        Fatal::Run(e)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal::Config(e)) => {
            // A malformed flag or config-file line: clap prints its own
            // message and usage, and exits with status 2.
            if let Some(e) = e.downcast_ref::<clap::Error>() {
                e.exit();
            }
            eprintln!("error: {}", message(&e));
            ExitCode::from(2)
        }
        Err(Fatal::Run(e)) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: several errors
/// already include their source in their own message.
fn message(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn run() -> Result<(), Fatal> {
    let cli = config::parse_cli().map_err(Fatal::Config)?;
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Token(args) => token(*args),
    };
    let config = Config::try_from(*args).map_err(|e| Fatal::Config(e.into()))?;
    let verifier = Verifier::from_config(&config.auth).map_err(|e| Fatal::Config(e.into()))?;
    init_tracing(&config.log);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = runtime.build().context("cannot start the runtime")?;
    runtime.block_on(serve(config, verifier))
}

/// `roomcast token`: the token alone on stdout, so that scripts can capture
/// it; a mistake is one line on stderr and exit code 2, like a usage error.
fn token(args: TokenArgs) -> ! {
    let minted = args
        .into_grant()
        .map_err(|e| e.to_string())
        .and_then(|(secret, grant)| {
            mint_hs256(&secret, &grant, SystemTime::now()).map_err(|e| e.to_string())
        });
    match minted {
        Ok(token) => {
            let mut out = std::io::stdout().lock();
            let written = writeln!(out, "{token}").and_then(|()| out.flush());
            std::process::exit(if written.is_ok() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    }
}

fn init_tracing(log: &LogConfig) {
    // The filter was checked with the rest of the configuration.
    let filter = tracing_subscriber::EnvFilter::try_new(&log.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: in files, journald and
    // container logs they are noise. NO_COLOR (no-color.org) turns them off.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Human => builder.with_ansi(ansi).init(),
        // Fields at the top level beside `message`, as log pipelines expect.
        LogFormat::Json => builder.with_ansi(false).json().flatten_event(true).init(),
    }
}

async fn serve(config: Config, verifier: Verifier) -> Result<(), Fatal> {
    let hub = Arc::new(
        Hub::with_delays(
            Arc::new(Registry::new()),
            config.delivery.write_delays.clone(),
        )
        .with_presence_interval(config.delivery.presence_interval),
    );
    let handle = metrics::install();
    let (bus, mode) = match &config.redis {
        None => (
            Bus::Memory(MemoryBus::new(
                hub.clone(),
                MemoryOffline::new(config.offline.clone()),
            )),
            "standalone",
        ),
        Some(redis) => {
            let bus = RedisBus::start(
                redis,
                &config.instance_id,
                config.offline.clone(),
                RedisTuning::from(redis),
                hub.clone(),
            )
            .map_err(|e| Fatal::Config(e.into()))?;
            // Listen ready if Redis answers soon; otherwise serve local
            // traffic, not ready, while the bus keeps reconnecting.
            if !bus.wait_ready().await {
                tracing::warn!(
                    "redis not reachable within the startup wait; listening, not ready, while retrying"
                );
            }
            (Bus::Redis(bus), "cluster")
        }
    };
    let listener = server::listen(&config.listen, config.listen_backlog)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let node = Arc::new(Node::new(config, hub, bus, verifier, handle));
    let _ = node.admin.address.set(addr.to_string());
    tokio::spawn(roomcast::admin::run(node.clone()));

    let sweeper = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            sweeper.bus.sweep();
        }
    });

    tracing::info!(%addr, instance = node.instance_id(), mode, "listening");
    // The one line on stdout: scripts and tests wait for it.
    println!("listening {addr}");

    tokio::spawn(conn::keepalive(node.clone()));
    tokio::spawn(node.hub.clone().presence_flusher());
    // The listener has its own token: it stops when the drain is over,
    // not when shutdown begins.
    let stop_listening = CancellationToken::new();
    let http = tokio::spawn(server::serve(
        listener,
        server::router(node.clone()),
        stop_listening.clone(),
    ));

    shutdown::signal().await;
    let deadline = tokio::time::Instant::now() + node.config.shutdown.deadline;
    tracing::info!("shutdown requested");
    // Not ready and no new upgrades from here on; the listener keeps
    // answering HTTP (`/ready` 503, upgrades 503) until the drain is over,
    // so load balancers see the instance leave instead of a refused port.
    node.stop_accepting();
    node.shutdown.cancel();
    if tokio::time::timeout_at(deadline, shutdown::drain(&node))
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline reached; exiting with connections open");
    }
    stop_listening.cancel();
    let _ = http.await;
    // Leave the cluster after the connections' own leaves went out; keep a
    // little time for it even when the drain used the whole deadline.
    let leave_by = deadline.max(tokio::time::Instant::now() + Duration::from_secs(2));
    if tokio::time::timeout_at(leave_by, node.bus.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("could not leave the cluster in time; the reaper will clean up");
    }
    tracing::info!("bye");
    Ok(())
}
