//! The JSON line of one run: the fields of `design/bench.md` in that order,
//! then `codec`, `loadgen_bottleneck` and `duplicates`, and everything else
//! under `detail`. Printed to stdout, appended to `--out`, summarised on
//! stderr.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Serialize)]
pub struct ServerId {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    pub server: ServerId,
    pub instances: usize,
    pub clients: usize,
    pub rooms: usize,
    /// Messages/s per room (W1, W5) or per sender (W3); null otherwise.
    pub target_rate: Option<f64>,
    pub duration_s: f64,
    /// Messages stamped inside the measurement window.
    pub published: u64,
    pub expected: u64,
    /// Distinct deliveries of window messages that arrived before the stop.
    pub received: u64,
    pub loss_pct: Option<f64>,
    pub deliveries_per_s: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub server_cpu_s: Vec<Option<f64>>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub loadgen_cpu_s: Option<f64>,
    pub rss_bytes: Vec<Option<u64>>,
    pub bytes_per_conn: Option<f64>,
    pub out_of_order: u64,
    pub codec: String,
    pub loadgen_bottleneck: bool,
    pub duplicates: u64,
    pub detail: Map<String, Value>,
}

/// Latency figures in milliseconds; all `None` without samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| Some(round3(us as f64 / 1000.0));
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: Some(round3(h.mean() / 1000.0)),
        }
    }

    pub fn detail(&self) -> Value {
        json!({"p50": self.p50, "p90": self.p90, "p99": self.p99, "p999": self.p999,
               "max": self.max, "mean": self.mean})
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn loss_pct(expected: u64, received: u64) -> Option<f64> {
    (expected > 0).then(|| {
        let lost = expected.saturating_sub(received) as f64;
        (lost * 100.0 / expected as f64 * 10_000.0).round() / 10_000.0
    })
}

impl Report {
    /// Prints the line to stdout, appends it to `out`, and a one-line
    /// summary to stderr.
    pub fn emit(&self, out: Option<&Path>) -> anyhow::Result<()> {
        let line = serde_json::to_string(self)?;
        println!("{line}");
        if let Some(path) = out {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(f, "{line}")?;
        }
        let f = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |v| format!("{v}"));
        eprintln!(
            "loadgen: {} clients={} rate={} published={} expected={} received={} loss%={} \
             del/s={} p50={} p99={} max={} ms ooo={} dup={} srv_cpu_s={} lg_cpu_s={} \
             bytes/conn={} bottleneck={}",
            self.workload,
            self.clients,
            f(self.target_rate),
            self.published,
            self.expected,
            self.received,
            f(self.loss_pct),
            f(self.deliveries_per_s),
            f(self.p50_ms),
            f(self.p99_ms),
            f(self.max_ms),
            self.out_of_order,
            self.duplicates,
            self.server_cpu_s
                .iter()
                .map(|c| f(*c))
                .collect::<Vec<_>>()
                .join("/"),
            f(self.loadgen_cpu_s),
            f(self.bytes_per_conn),
            self.loadgen_bottleneck,
        );
        Ok(())
    }
}
