//! The workloads of `design/bench.md`: who connects where, what each client
//! does, and the timeline of a run. Each returns one [`Report`].
//!
//! - [`timed`]: W1 room fan-out, W3 direct messages, W5 big room (and W6,
//!   which is W1 and W3 against one instance without Redis).
//! - [`idle`]: W2 idle connections.
//! - [`offline`]: W4 offline queue.
//! - [`server_api`]: W8, batches of publishes through the server API.

pub mod idle;
pub mod offline;
pub mod server_api;
pub mod timed;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::engine::{Settings, Shared, Target, Totals};
use crate::procstat::{CpuUsed, Proc};
use crate::report::{Report, ServerId};

/// Everything about a run that is not the workload's own shape.
pub struct Ctx {
    pub settings: Settings,
    pub targets: Vec<Target>,
    /// One per target, in the same order; CPU and RSS are read from them.
    pub servers: Vec<Proc>,
    /// Other processes to report CPU for (e.g. redis), by name.
    pub extra: Vec<(String, Proc)>,
    /// Prefix of every user and room name, unique per run, so runs against
    /// a long-lived server do not see each other's queues or rooms.
    pub prefix: String,
    pub workload_id: Option<String>,
    pub server: ServerId,
    pub label: Option<String>,
}

impl Ctx {
    pub fn user(&self, kind: &str, i: usize) -> Arc<str> {
        format!("{}{kind}{i}", self.prefix).into()
    }

    pub fn room(&self, i: usize) -> Arc<str> {
        format!("{}r{i}", self.prefix).into()
    }

    /// A counter's value summed over every target's `/metrics` (`None`
    /// when one cannot be read: a peer server has no such page).
    pub async fn server_counter(&self, name: &str) -> Option<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut total = 0.0;
        for t in &self.targets {
            let read = async {
                let mut tcp = tokio::net::TcpStream::connect(t.addr).await.ok()?;
                let req = format!(
                    "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    t.addr
                );
                tcp.write_all(req.as_bytes()).await.ok()?;
                let mut text = String::new();
                tcp.read_to_string(&mut text).await.ok()?;
                Some(text)
            };
            let text = tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .ok()??;
            let value = text.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })?;
            total += value;
        }
        Some(total)
    }

    /// Longest wait for all clients to connect: waves of
    /// `connect_concurrency`, each bounded by the setup timeout, capped.
    pub fn connect_deadline(&self, clients: usize) -> Duration {
        let waves = clients / self.settings.connect_concurrency.max(1) + 1;
        (self.settings.setup_timeout * waves as u32)
            .min(Duration::from_secs(300))
            .max(Duration::from_secs(10))
    }

    /// A report with the common fields filled and the measured ones empty.
    pub fn report(&self, default_id: &str, clients: usize, rooms: usize) -> Report {
        let mut detail = Map::new();
        detail.insert("batch".into(), json!(self.settings.batch));
        detail.insert("prefix".into(), json!(self.prefix));
        if let Some(label) = &self.label {
            detail.insert("label".into(), json!(label));
        }
        Report {
            workload: self
                .workload_id
                .clone()
                .unwrap_or_else(|| default_id.to_owned()),
            server: self.server.clone(),
            instances: self.targets.len(),
            clients,
            rooms,
            target_rate: None,
            duration_s: 0.0,
            published: 0,
            expected: 0,
            received: 0,
            loss_pct: None,
            deliveries_per_s: None,
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
            server_cpu_s: vec![None; self.servers.len()],
            server_cpu_us_per_delivery: None,
            loadgen_cpu_s: None,
            rss_bytes: vec![None; self.servers.len()],
            bytes_per_conn: None,
            out_of_order: 0,
            codec: match self.settings.codec {
                roomcast::protocol::Codec::Json => "json".into(),
                roomcast::protocol::Codec::MsgPack => "msgpack".into(),
            },
            loadgen_bottleneck: false,
            duplicates: 0,
            detail,
        }
    }

    pub fn server_rss(&self) -> Vec<Option<u64>> {
        self.servers.iter().map(|p| p.rss_bytes()).collect()
    }

    /// Fails early when a server process is gone.
    pub fn dead_servers(&self) -> Vec<usize> {
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.cpu_s().is_none())
            .map(|(i, _)| i)
            .collect()
    }
}

/// Fills the CPU fields and their detail (percent of one core over `wall_s`).
pub fn put_cpu(r: &mut Report, ctx: &Ctx, used: &CpuUsed, wall_s: f64) {
    r.server_cpu_s = used.servers.iter().map(|x| x.map(round3)).collect();
    r.loadgen_cpu_s = used.loadgen.map(round3);
    let pct = |x: Option<f64>| x.map(|s| round1(100.0 * s / wall_s.max(1e-9)));
    let mut cpu = Map::new();
    for (i, s) in used.servers.iter().enumerate() {
        cpu.insert(format!("inst{i}"), json!(pct(*s)));
    }
    for ((name, _), s) in ctx.extra.iter().zip(&used.extra) {
        cpu.insert(name.clone(), json!(pct(*s)));
    }
    cpu.insert("loadgen".into(), json!(pct(used.loadgen)));
    cpu.insert(
        "machine_busy_pct".into(),
        json!(used.machine_busy_pct.map(round1)),
    );
    r.detail.insert("cpu_pct".into(), Value::Object(cpu));
}

/// Fills the detail every workload shares from the client totals.
pub fn put_totals(r: &mut Report, sh: &Shared, t: &Totals, aborted: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let d = &mut r.detail;
    d.insert("clients_ready".into(), json!(sh.ready.load(Relaxed)));
    d.insert("clients_failed".into(), json!(sh.failed.load(Relaxed)));
    d.insert("first_error".into(), json!(sh.first_error()));
    d.insert("disconnects".into(), json!(t.disconnects));
    d.insert("malformed".into(), json!(t.malformed));
    d.insert("errors".into(), json!(t.errors));
    d.insert("published_total".into(), json!(t.published));
    d.insert("received_total".into(), json!(t.received_total));
    d.insert("late_sends".into(), json!(t.late_sends));
    d.insert("skipped_sends".into(), json!(t.skipped_sends));
    d.insert("send_errors".into(), json!(t.send_errors));
    d.insert("queued_deliveries".into(), json!(t.queued_deliveries));
    d.insert("live_deliveries".into(), json!(t.live_deliveries));
    d.insert("other_events".into(), json!(t.other_events));
    d.insert(
        "setup_ms".into(),
        crate::report::Latency::of(&sh.setup_times()).detail(),
    );
    d.insert("tasks_aborted".into(), json!(aborted));
    if let Ok(w) = sh.welcome.lock() {
        d.insert("welcome".into(), json!(*w));
    }
    r.out_of_order = t.out_of_order;
    r.duplicates = t.duplicates;
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Sleeps until a [`crate::engine::now_ns`] reading.
pub async fn sleep_until_ns(ns: u64) {
    tokio::time::sleep_until(crate::engine::at(ns)).await;
}
