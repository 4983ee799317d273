//! Configuration: CLI flags, `ROOMCAST_*` environment variables and an
//! optional file, in that order of precedence, validated into one struct of
//! per-subsystem structs at start.
//!
//! The file (`--config` / `ROOMCAST_CONFIG`) holds `ROOMCAST_NAME=value`
//! lines, `#` comments and blank lines: the same names as the environment,
//! so one list documents both.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use thiserror::Error;

use crate::protocol::Limits;

/// Defaults of the cluster settings: clap's `default_value_t` and
/// `RedisTuning::default` both read these, so they cannot drift apart.
pub mod redis_defaults {
    pub const HEARTBEAT_MS: u64 = 5_000;
    pub const HEARTBEAT_TTL_MS: u64 = 15_000;
    pub const REAPER_MS: u64 = 2_000;
    pub const COMMAND_TIMEOUT_MS: u64 = 3_000;
    pub const OUTBOX_MAX: usize = 10_000;
    /// Each slot costs about 600 bytes of resident memory from start-up
    /// (fred sizes eight channels with it): 8,192 is about 5 MB. A busy
    /// two-instance bench (16,000 messages/s on two shared cores) lost
    /// messages at 256 and none at 1,024.
    pub const SUBSCRIBER_BUFFER: usize = 8_192;
    pub const ROUTE_CACHE: usize = 100_000;
    pub const RECONNECT_MIN_MS: u64 = 100;
    pub const RECONNECT_MAX_MS: u64 = 5_000;
    pub const STARTUP_WAIT_MS: u64 = 10_000;
}

#[derive(Debug, Parser)]
#[command(name = "roomcast", version, about = "Realtime WebSocket room server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (standalone without --redis, cluster with it).
    Serve(Box<ServeArgs>),
    /// Print an HS256 token signed with the server's secret, for development.
    Token(Box<TokenArgs>),
}

/// `roomcast token`: the secret comes from the same places as `serve`'s.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The server's file of `ROOMCAST_NAME=value` lines; its ROOMCAST_JWT_SECRET is used
    /// when neither the flag nor the environment gives one.
    #[arg(long, env = "ROOMCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// HS256 secret to sign with. Prefer the environment to the flag.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The user id (`sub` claim), 1 to 256 bytes.
    #[arg(long)]
    pub sub: String,
    /// Roles, comma-separated (`roles` claim; `admin` marks an administrator).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Room patterns the user may join, comma-separated; `*` matches any run of
    /// characters (`rooms` claim). Without it every room is allowed.
    #[arg(long, value_delimiter = ',')]
    pub rooms: Option<Vec<String>>,
    /// Tenant (`tenant` claim); without it the default tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Lifetime: seconds, or a number with s, m, h or d (`90s`, `15m`, `1h`, `7d`).
    #[arg(long, default_value = "1d", value_parser = parse_ttl)]
    pub ttl: Duration,
}

/// Reads a lifetime such as `3600`, `90s`, `15m`, `1h` or `7d`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err("expected seconds or a number with s, m, h or d (e.g. 1h)".into()),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| "expected seconds or a number with s, m, h or d (e.g. 1h)".to_owned())?;
    if n == 0 {
        return Err("must be greater than 0".into());
    }
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| "too long".into())
}

impl TokenArgs {
    /// The signing secret (flag, then environment, then the config file)
    /// and the claims to sign.
    pub fn into_grant(self) -> Result<(String, crate::auth::Grant), ConfigError> {
        let secret = match self.jwt_secret.filter(|s| !s.is_empty()) {
            Some(secret) => Some(secret),
            None => match &self.config {
                Some(path) => file_flags(path)?
                    .into_iter()
                    .rev()
                    .find_map(|f| f.strip_prefix("--jwt-secret=").map(str::to_owned))
                    .filter(|s| !s.is_empty()),
                None => None,
            },
        };
        let secret = secret.ok_or(ConfigError::NoSecret)?;
        let grant = crate::auth::Grant {
            sub: self.sub,
            roles: self
                .roles
                .into_iter()
                .map(|r| r.trim().to_owned())
                .collect(),
            rooms: self
                .rooms
                .map(|rooms| rooms.into_iter().map(|r| r.trim().to_owned()).collect()),
            tenant: self.tenant,
            ttl: self.ttl,
        };
        Ok((secret, grant))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event; coloured only when stderr is a terminal and
    /// NO_COLOR is unset.
    Human,
    /// One JSON object per line (timestamp, level, target, message and the
    /// event's fields), for log pipelines.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumerPolicy {
    /// Drop the frame for that connection and count it.
    Drop,
    /// Close the connection with code 4000 so the client resyncs.
    Close,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A file of `ROOMCAST_NAME=value` lines; flags and environment win over it.
    #[arg(long, env = "ROOMCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address (host:port) for HTTP and WebSocket; port 0 picks a free one.
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Pending TCP connections the kernel queues before accepting.
    #[arg(long, env = "ROOMCAST_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,
    /// Runtime worker threads; 0 uses one per CPU core. With one instance
    /// per core, 1 saves the cost of waking threads across cores.
    #[arg(long, env = "ROOMCAST_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// Redis URL for cluster mode; unset runs standalone.
    #[arg(long, env = "ROOMCAST_REDIS_URL")]
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel (several clusters can share a Redis).
    #[arg(long, env = "ROOMCAST_REDIS_PREFIX", default_value = "roomcast")]
    pub redis_prefix: String,
    /// HS256 secret for client tokens. Prefer the environment to the flag.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA (RS256) or Ed25519 (EdDSA) public key for client tokens.
    #[arg(long, env = "ROOMCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// This instance's id; default: a new UUID.
    #[arg(long, env = "ROOMCAST_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Dev only: accept connections without a token as user `anon-<process tag>-<n>`.
    #[arg(long, env = "ROOMCAST_ALLOW_ANONYMOUS", action = ArgAction::SetTrue)]
    pub allow_anonymous: bool,
    /// Log format on stderr.
    #[arg(long, env = "ROOMCAST_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Which log lines to write: a level (error, warn, info, debug, trace)
    /// and `target=level` directives, comma-separated, e.g. `warn,roomcast=debug`.
    #[arg(
        long = "log",
        env = "ROOMCAST_LOG",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_filter: String,
    /// Largest accepted frame in bytes; larger closes with 1009.
    #[arg(long, env = "ROOMCAST_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,
    /// Most rooms one connection may be in.
    #[arg(long, env = "ROOMCAST_MAX_ROOMS_PER_CONN", default_value_t = 100)]
    pub max_rooms_per_conn: usize,
    /// Sustained client operations per second per connection.
    #[arg(long, env = "ROOMCAST_RATE_PER_S", default_value_t = 100)]
    pub rate_per_s: u32,
    /// Operations allowed in a burst above the sustained rate.
    #[arg(long, env = "ROOMCAST_BURST", default_value_t = 200)]
    pub burst: u32,
    /// Consecutive rate-limited operations before the connection is closed with 1008.
    #[arg(long, env = "ROOMCAST_RATE_ABUSE_STRIKES", default_value_t = 100)]
    pub rate_abuse_strikes: u32,
    /// Most WebSocket connections on this instance (more get HTTP 503).
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// Most connections of one user on this instance (more get HTTP 429).
    #[arg(long, env = "ROOMCAST_MAX_CONNS_PER_USER", default_value_t = 16)]
    pub max_conns_per_user: usize,
    /// Allowed `Origin` values for browser clients, comma-separated; empty allows all.
    #[arg(long, env = "ROOMCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Frames a connection's outbound queue holds before the slow-consumer policy applies.
    #[arg(long, env = "ROOMCAST_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// What happens to a connection whose outbound queue is full.
    #[arg(
        long,
        env = "ROOMCAST_SLOW_CONSUMER",
        value_enum,
        default_value = "close"
    )]
    pub slow_consumer: SlowConsumerPolicy,
    /// Server ping interval in milliseconds; a peer silent for two intervals is closed.
    #[arg(long, env = "ROOMCAST_PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,
    /// Most queued direct messages per offline user (oldest dropped beyond it).
    #[arg(long, env = "ROOMCAST_OFFLINE_MAX", default_value_t = 100)]
    pub offline_max: usize,
    /// Seconds a queued direct message is kept for an offline user.
    #[arg(long, env = "ROOMCAST_OFFLINE_TTL_S", default_value_t = 86_400)]
    pub offline_ttl_s: u64,
    /// Seconds over which clients are told to reconnect and closed on shutdown.
    #[arg(long, env = "ROOMCAST_DRAIN_S", default_value_t = 5)]
    pub drain_s: u64,
    /// Seconds after SIGTERM/SIGINT by which the process exits whatever happens.
    #[arg(long, env = "ROOMCAST_SHUTDOWN_DEADLINE_S", default_value_t = 15)]
    pub shutdown_deadline_s: u64,
    /// Cluster: how often the heartbeat key and registry score are refreshed.
    #[arg(long, env = "ROOMCAST_REDIS_HEARTBEAT_MS", default_value_t = redis_defaults::HEARTBEAT_MS)]
    pub redis_heartbeat_ms: u64,
    /// Cluster: heartbeat TTL; an instance silent this long is reaped.
    #[arg(
        long,
        env = "ROOMCAST_REDIS_HEARTBEAT_TTL_MS",
        default_value_t = redis_defaults::HEARTBEAT_TTL_MS
    )]
    pub redis_heartbeat_ttl_ms: u64,
    /// Cluster: how often each instance looks for dead instances.
    #[arg(long, env = "ROOMCAST_REDIS_REAPER_MS", default_value_t = redis_defaults::REAPER_MS)]
    pub redis_reaper_ms: u64,
    /// Cluster: timeout of every Redis command.
    #[arg(
        long,
        env = "ROOMCAST_REDIS_COMMAND_TIMEOUT_MS",
        default_value_t = redis_defaults::COMMAND_TIMEOUT_MS
    )]
    pub redis_command_timeout_ms: u64,
    /// Cluster: direct messages held in memory while Redis is down (beyond: `unavailable`).
    #[arg(long, env = "ROOMCAST_REDIS_OUTBOX_MAX", default_value_t = redis_defaults::OUTBOX_MAX)]
    pub redis_outbox_max: usize,
    /// Cluster: pub/sub messages buffered between the Redis reader and the receive loop
    /// (allocated at start; beyond it messages are dropped and counted).
    #[arg(
        long,
        env = "ROOMCAST_REDIS_SUBSCRIBER_BUFFER",
        default_value_t = redis_defaults::SUBSCRIBER_BUFFER
    )]
    pub redis_subscriber_buffer: usize,
    /// Cluster: users whose instances a sender remembers, so a direct message
    /// to them is a plain PUBLISH instead of a script run (0 turns it off).
    #[arg(long, env = "ROOMCAST_REDIS_ROUTE_CACHE", default_value_t = redis_defaults::ROUTE_CACHE)]
    pub redis_route_cache: usize,
    /// Cluster: first reconnect delay (doubling, retried forever).
    #[arg(long, env = "ROOMCAST_REDIS_RECONNECT_MIN_MS", default_value_t = redis_defaults::RECONNECT_MIN_MS)]
    pub redis_reconnect_min_ms: u64,
    /// Cluster: longest reconnect delay.
    #[arg(long, env = "ROOMCAST_REDIS_RECONNECT_MAX_MS", default_value_t = redis_defaults::RECONNECT_MAX_MS)]
    pub redis_reconnect_max_ms: u64,
    /// Cluster: how long start-up waits for Redis before listening not-ready.
    #[arg(long, env = "ROOMCAST_REDIS_STARTUP_WAIT_MS", default_value_t = redis_defaults::STARTUP_WAIT_MS)]
    pub redis_startup_wait_ms: u64,
    /// Admin: interval of the stats channel's `stats` events, in milliseconds.
    #[arg(
        long,
        env = "ROOMCAST_ADMIN_STATS_INTERVAL_MS",
        default_value_t = 2_000
    )]
    pub admin_stats_interval_ms: u64,
    /// Admin: how many of the busiest rooms (by members and by message rate) the stats list.
    #[arg(long, env = "ROOMCAST_ADMIN_TOP_ROOMS", default_value_t = 10)]
    pub admin_top_rooms: usize,
    /// joined/left are broadcast only in rooms of at most this many users (0: never).
    #[arg(long, env = "ROOMCAST_PRESENCE_EVENTS_MAX", default_value_t = 1000)]
    pub presence_events_max: u64,
    /// Server API keys (`Authorization: Bearer <key>`), comma-separated, each at
    /// least 16 bytes; several at once so keys can rotate. Prefer the environment.
    #[arg(
        long,
        env = "ROOMCAST_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Server API: largest request body in bytes (larger: HTTP 413 `body_too_large`).
    #[arg(long, env = "ROOMCAST_API_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub api_max_body_bytes: usize,
    /// Server API: most items in one batch request (more: HTTP 413 `batch_too_large`).
    #[arg(long, env = "ROOMCAST_API_MAX_BATCH", default_value_t = 1000)]
    pub api_max_batch: usize,
    /// Server API: seconds a request's `Idempotency-Key` is remembered; a retry
    /// within it gets the first answer and delivers nothing again.
    #[arg(
        long,
        env = "ROOMCAST_API_IDEMPOTENCY_WINDOW_S",
        default_value_t = 86_400
    )]
    pub api_idempotency_window_s: u64,
    /// Room history by room-name pattern: PATTERN=SIZE/TTL (e.g. `game:*=200/10m`: the last
    /// 200 messages, each kept 10 minutes). Repeatable; comma-separated in the environment;
    /// the first matching pattern wins. None (the default): no room keeps history.
    #[arg(long = "history", env = "ROOMCAST_HISTORY", value_delimiter = ',')]
    pub history: Vec<String>,
    /// Most early messages an instance holds per history room while it fills a gap from the
    /// history; beyond it the room's members get a `gap` event.
    #[arg(long, env = "ROOMCAST_HISTORY_FILL_MAX", default_value_t = crate::history::defaults::FILL_MAX)]
    pub history_fill_max: usize,
    /// How long a history room's position (offset, epoch) outlives its last message, so
    /// clients rejoining after a quiet spell still recover: seconds, or with s, m, h, d.
    #[arg(long, env = "ROOMCAST_HISTORY_META_TTL", default_value = "1d", value_parser = parse_ttl)]
    pub history_meta_ttl: Duration,
    /// Milliseconds a connection may hold room messages to write them together, in one
    /// `batch` frame for clients that asked for batches (0: written at once; at most 1000).
    /// Direct messages, acks, errors and closes are never held.
    #[arg(long, env = "ROOMCAST_WRITE_DELAY_MS", default_value_t = 0)]
    pub write_delay_ms: u64,
    /// Write delay of the rooms matching a pattern, `PATTERN=MS` (`*` matches any run of
    /// characters), repeatable or comma-separated; the first match wins over
    /// --write-delay-ms, e.g. `game:*=16`.
    #[arg(
        long = "write-delay",
        env = "ROOMCAST_WRITE_DELAY",
        value_delimiter = ','
    )]
    pub write_delay: Vec<String>,
    /// Milliseconds over which a room's joins and leaves are gathered into one
    /// `presence_diff` event per member (0: `joined`/`left` at once; at most 60000).
    #[arg(long, env = "ROOMCAST_PRESENCE_INTERVAL_MS", default_value_t = 0)]
    pub presence_interval_ms: u64,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} line {line}: {text}")]
    FileLine {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error(
        "no HS256 secret to sign with: set ROOMCAST_JWT_SECRET, --jwt-secret, or ROOMCAST_JWT_SECRET in the --config file"
    )]
    NoSecret,
}

/// Parses the command line, filling in values from the config file where
/// neither a flag nor an environment variable gave one.
pub fn parse_cli() -> Result<Cli, anyhow::Error> {
    let argv: Vec<String> = std::env::args().collect();
    let first = Cli::command()
        .args_override_self(true)
        .get_matches_from(&argv);
    let cli = Cli::from_arg_matches(&first)?;
    // `token` reads only the secret from the file (TokenArgs::into_grant).
    let Command::Serve(args) = &cli.command else {
        return Ok(cli);
    };
    let Some(path) = args.config.clone() else {
        return Ok(cli);
    };
    let extra = file_flags(&path)?;
    if extra.is_empty() {
        return Ok(cli);
    }
    // File-derived flags go before the user's own; with args_override_self
    // the later (user) occurrence wins, and environment variables are
    // honoured because file_flags skips names that are set in the environment.
    let mut merged = vec![argv[0].clone(), "serve".to_owned()];
    merged.extend(extra);
    merged.extend(
        argv.iter()
            .skip(1)
            .skip_while(|a| *a != "serve")
            .skip(1)
            .cloned(),
    );
    let matches = Cli::command()
        .args_override_self(true)
        .try_get_matches_from(&merged)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

fn file_flags(path: &PathBuf) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        path: path.clone(),
        source,
    })?;
    let cmd = Cli::command();
    let serve = cmd
        .find_subcommand("serve")
        .ok_or_else(|| ConfigError::Invalid("no serve command".into()))?;
    let mut flags = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |text: &str| ConfigError::FileLine {
            path: path.clone(),
            line: i + 1,
            text: text.to_owned(),
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected ROOMCAST_NAME=value"))?;
        let (key, value) = (key.trim(), value.trim().trim_matches('"'));
        let arg = serve
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == key))
            .ok_or_else(|| bad(&format!("unknown setting {key}")))?;
        if std::env::var_os(key).is_some() || key == "ROOMCAST_CONFIG" {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            if matches!(value, "1" | "true" | "yes" | "on") {
                flags.push(format!("--{long}"));
            }
        } else {
            flags.push(format!("--{long}={value}"));
        }
    }
    Ok(flags)
}

/// Validated configuration, one struct per subsystem.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub listen_backlog: u32,
    /// 0: one per CPU core.
    pub worker_threads: usize,
    pub instance_id: String,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub offline: OfflineConfig,
    pub shutdown: ShutdownConfig,
    pub redis: Option<RedisConfig>,
    pub admin: AdminConfig,
    pub api: ApiConfig,
    pub history: crate::history::HistoryConfig,
    pub delivery: DeliveryConfig,
}

/// How room messages reach members' sockets (see [`crate::delivery`]).
#[derive(Debug, Clone, Default)]
pub struct DeliveryConfig {
    pub write_delays: crate::delivery::WriteDelays,
    /// Zero: `joined`/`left` at once; otherwise `presence_diff` per interval.
    pub presence_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Interval of `stats` events (and of gathering, while watched).
    pub stats_interval: Duration,
    /// Busiest rooms listed, per ranking.
    pub top_rooms: usize,
}

/// The server API's settings (`src/api/`).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub keys: ApiKeys,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    pub idempotency_window: Duration,
}

/// Server API keys. Their `Debug` shows only how many there are, so a
/// logged config never shows one.
#[derive(Clone, Default)]
pub struct ApiKeys(pub Vec<String>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

/// Shortest API key accepted at start.
pub const MIN_API_KEY_LEN: usize = 16;

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive list, checked at start.
    pub filter: String,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt_secret: Option<String>,
    pub jwt_public_key: Option<PathBuf>,
    pub allow_anonymous: bool,
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub max_rooms_per_conn: usize,
    pub rate_per_s: u32,
    pub burst: u32,
    pub rate_abuse_strikes: u32,
    pub max_connections: usize,
    pub max_conns_per_user: usize,
    pub outbound_queue: usize,
    pub slow_consumer: SlowConsumerPolicy,
    pub ping_interval: Duration,
    pub presence_events_max: u64,
}

#[derive(Debug, Clone)]
pub struct OfflineConfig {
    pub max_per_user: usize,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub drain: Duration,
    pub deadline: Duration,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    pub heartbeat: Duration,
    pub heartbeat_ttl: Duration,
    pub reaper: Duration,
    pub command_timeout: Duration,
    pub outbox_max: usize,
    pub subscriber_buffer: usize,
    pub route_cache: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub startup_wait: Duration,
}

impl LimitsConfig {
    /// The limits as announced to clients in `welcome`.
    pub fn announced(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes as u64,
            max_rooms: self.max_rooms_per_conn as u64,
            rate_per_s: u64::from(self.rate_per_s),
            burst: u64::from(self.burst),
            ping_interval_ms: self.ping_interval.as_millis() as u64,
            presence_events_max: self.presence_events_max,
        }
    }
}

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: ServeArgs) -> Result<Self, ConfigError> {
        let positive = |name: &str, v: u64| {
            if v == 0 {
                Err(ConfigError::Invalid(format!(
                    "{name} must be greater than 0"
                )))
            } else {
                Ok(())
            }
        };
        positive("max-message-bytes", a.max_message_bytes as u64)?;
        positive("rate-per-s", u64::from(a.rate_per_s))?;
        positive("burst", u64::from(a.burst))?;
        positive("max-connections", a.max_connections as u64)?;
        positive("max-conns-per-user", a.max_conns_per_user as u64)?;
        if a.outbound_queue < 2 {
            // `welcome` and the offline backlog are queued before the writer runs.
            return Err(ConfigError::Invalid(
                "outbound-queue must be at least 2".into(),
            ));
        }
        positive("ping-interval-ms", a.ping_interval_ms)?;
        if a.admin_stats_interval_ms < 100 {
            return Err(ConfigError::Invalid(
                "admin-stats-interval-ms must be at least 100".into(),
            ));
        }
        if a.jwt_secret.is_none() && a.jwt_public_key.is_none() && !a.allow_anonymous {
            return Err(ConfigError::Invalid(
                "no way to authenticate: set ROOMCAST_JWT_SECRET, --jwt-public-key, or --allow-anonymous for development".into(),
            ));
        }
        let instance_id = a
            .instance_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let id_ok = !instance_id.is_empty()
            && instance_id.len() <= 64
            && instance_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            // Instance ids are part of Redis key and channel names.
            return Err(ConfigError::Invalid(
                "instance-id must be 1 to 64 bytes of A-Z a-z 0-9 . _ -".into(),
            ));
        }
        if a.redis_heartbeat_ttl_ms <= a.redis_heartbeat_ms {
            return Err(ConfigError::Invalid(
                "redis-heartbeat-ttl-ms must be greater than redis-heartbeat-ms".into(),
            ));
        }
        positive("redis-heartbeat-ms", a.redis_heartbeat_ms)?;
        positive("redis-reaper-ms", a.redis_reaper_ms)?;
        positive("redis-command-timeout-ms", a.redis_command_timeout_ms)?;
        positive("redis-subscriber-buffer", a.redis_subscriber_buffer as u64)?;
        positive("redis-reconnect-min-ms", a.redis_reconnect_min_ms)?;
        if a.redis_reconnect_max_ms < a.redis_reconnect_min_ms {
            return Err(ConfigError::Invalid(
                "redis-reconnect-max-ms must be at least redis-reconnect-min-ms".into(),
            ));
        }
        let api_keys: Vec<String> = a
            .api_keys
            .into_iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        if api_keys.iter().any(|k| k.len() < MIN_API_KEY_LEN) {
            return Err(ConfigError::Invalid(format!(
                "every api key must be at least {MIN_API_KEY_LEN} bytes"
            )));
        }
        positive("api-max-body-bytes", a.api_max_body_bytes as u64)?;
        positive("api-max-batch", a.api_max_batch as u64)?;
        positive("api-idempotency-window-s", a.api_idempotency_window_s)?;
        let mut history_rules = Vec::new();
        for rule in a.history.iter().filter(|r| !r.trim().is_empty()) {
            let rule = crate::history::HistoryRule::parse(rule).map_err(ConfigError::Invalid)?;
            if rule.ttl > a.history_meta_ttl {
                return Err(ConfigError::Invalid(format!(
                    "history rule {}: TTL longer than history-meta-ttl",
                    rule.pattern
                )));
            }
            history_rules.push(std::sync::Arc::new(rule));
        }
        positive("history-fill-max", a.history_fill_max as u64)?;
        let write_delay = Duration::from_millis(a.write_delay_ms);
        if write_delay > crate::delivery::MAX_WRITE_DELAY {
            return Err(ConfigError::Invalid(
                "write-delay-ms must be at most 1000".into(),
            ));
        }
        if a.presence_interval_ms > 60_000 {
            return Err(ConfigError::Invalid(
                "presence-interval-ms must be at most 60000".into(),
            ));
        }
        let write_delay_rooms = a
            .write_delay
            .iter()
            .filter(|r| !r.trim().is_empty())
            .map(|r| crate::delivery::WriteDelays::parse_rule(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid(format!("write-delay {e}")))?;
        let log_filter = match a.log_filter.trim() {
            "" => "info".to_owned(),
            f => f.to_owned(),
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            return Err(ConfigError::Invalid(format!(
                "log filter {log_filter:?}: {e}"
            )));
        }
        Ok(Config {
            listen: a.listen,
            listen_backlog: a.listen_backlog,
            worker_threads: a.worker_threads,
            instance_id,
            log: LogConfig {
                format: a.log_format,
                filter: log_filter,
            },
            auth: AuthConfig {
                jwt_secret: a.jwt_secret.filter(|s| !s.is_empty()),
                jwt_public_key: a.jwt_public_key,
                allow_anonymous: a.allow_anonymous,
                allowed_origins: a
                    .allowed_origins
                    .into_iter()
                    .map(|o| o.trim().to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            },
            limits: LimitsConfig {
                max_message_bytes: a.max_message_bytes,
                max_rooms_per_conn: a.max_rooms_per_conn,
                rate_per_s: a.rate_per_s,
                burst: a.burst,
                rate_abuse_strikes: a.rate_abuse_strikes,
                max_connections: a.max_connections,
                max_conns_per_user: a.max_conns_per_user,
                outbound_queue: a.outbound_queue,
                slow_consumer: a.slow_consumer,
                ping_interval: Duration::from_millis(a.ping_interval_ms),
                presence_events_max: a.presence_events_max,
            },
            offline: OfflineConfig {
                max_per_user: a.offline_max,
                ttl: Duration::from_secs(a.offline_ttl_s),
            },
            shutdown: ShutdownConfig {
                drain: Duration::from_secs(a.drain_s),
                deadline: Duration::from_secs(a.shutdown_deadline_s),
            },
            admin: AdminConfig {
                stats_interval: Duration::from_millis(a.admin_stats_interval_ms),
                top_rooms: a.admin_top_rooms.min(1000),
            },
            delivery: DeliveryConfig {
                write_delays: crate::delivery::WriteDelays {
                    global: write_delay,
                    rooms: write_delay_rooms,
                },
                presence_interval: Duration::from_millis(a.presence_interval_ms),
            },
            redis: a.redis.filter(|u| !u.is_empty()).map(|url| RedisConfig {
                url,
                prefix: a.redis_prefix,
                heartbeat: Duration::from_millis(a.redis_heartbeat_ms),
                heartbeat_ttl: Duration::from_millis(a.redis_heartbeat_ttl_ms),
                reaper: Duration::from_millis(a.redis_reaper_ms),
                command_timeout: Duration::from_millis(a.redis_command_timeout_ms),
                outbox_max: a.redis_outbox_max,
                subscriber_buffer: a.redis_subscriber_buffer,
                route_cache: a.redis_route_cache,
                reconnect_min: Duration::from_millis(a.redis_reconnect_min_ms),
                reconnect_max: Duration::from_millis(a.redis_reconnect_max_ms),
                startup_wait: Duration::from_millis(a.redis_startup_wait_ms),
            }),
            api: ApiConfig {
                keys: ApiKeys(api_keys),
                max_body_bytes: a.api_max_body_bytes,
                max_batch: a.api_max_batch,
                idempotency_window: Duration::from_secs(a.api_idempotency_window_s),
            },
            history: crate::history::HistoryConfig {
                rules: history_rules,
                fill_max: a.history_fill_max,
                meta_ttl: a.history_meta_ttl,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::redis::RedisTuning;

    /// A cluster instance started without tuning flags runs with
    /// `RedisTuning::default()`: the two sets of defaults are one.
    #[test]
    fn redis_tuning_default_is_the_flag_defaults() {
        let cli = Cli::try_parse_from([
            "roomcast",
            "serve",
            "--redis",
            "redis://127.0.0.1:1",
            "--allow-anonymous",
        ])
        .expect("parse");
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let cfg = Config::try_from(*args).expect("valid");
        let redis = cfg.redis.expect("cluster mode");
        assert_eq!(RedisTuning::from(&redis), RedisTuning::default());
    }

    #[test]
    fn ttl_in_seconds_or_with_a_unit() {
        assert_eq!(parse_ttl("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in [
            "",
            "h",
            "0",
            "0h",
            "1w",
            "1.5h",
            "-1",
            "1 h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    /// The default of `--ttl` is one day.
    #[test]
    fn token_args_default_to_one_day() {
        let cli = Cli::try_parse_from(["roomcast", "token", "--sub", "bob", "--jwt-secret", "s"])
            .expect("parse");
        let Command::Token(args) = cli.command else {
            panic!("not token");
        };
        let (secret, grant) = args.into_grant().expect("grant");
        assert_eq!(secret, "s");
        assert_eq!(grant.ttl, Duration::from_secs(86_400));
        assert!(grant.roles.is_empty() && grant.rooms.is_none() && grant.tenant.is_none());
    }
}
