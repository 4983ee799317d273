//! A fresh instance's `/metrics` is complete: every metric the source
//! names is there at 0, with `# HELP` and `# TYPE`, before any connection;
//! and the Grafana dashboard charts every one of them.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use roomcast::bus::redis::metric as cluster;
use roomcast::metrics::Metric;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The metric names the source spells out: (outside cluster mode, cluster
/// mode only). Read from the source rather than from the tables the server
/// registers, so a name used anywhere without a table entry is caught.
fn source_names() -> (BTreeSet<String>, BTreeSet<String>) {
    let name = regex_lite::Regex::new(r#""(roomcast_[a-z0-9_]+)""#).expect("regex");
    let cluster_dir = src().join("bus").join("redis");
    let (mut base, mut cluster) = (BTreeSet::new(), BTreeSet::new());
    for file in rust_files(&src()) {
        let text = std::fs::read_to_string(&file).expect("read");
        for cap in name.captures_iter(&text) {
            let set = if file.starts_with(&cluster_dir) {
                &mut cluster
            } else {
                &mut base
            };
            set.insert(cap[1].to_owned());
        }
    }
    assert!(
        base.len() >= 10 && cluster.len() >= 5,
        "{base:?} {cluster:?}"
    );
    (base, cluster)
}

/// The string literals `pattern`'s first group captures in the files
/// under `dir` (e.g. the `op` of every `metric::error("op")` call).
fn source_literals(dir: &Path, pattern: &str) -> BTreeSet<String> {
    let re = regex_lite::Regex::new(pattern).expect("regex");
    let mut found = BTreeSet::new();
    for file in rust_files(dir) {
        let text = std::fs::read_to_string(&file).expect("read");
        found.extend(re.captures_iter(&text).map(|c| c[1].to_owned()));
    }
    found
}

/// The label values every call site uses are the ones registered at 0.
#[test]
fn every_label_value_in_use_is_registered() {
    let listed =
        |values: &[&str]| -> BTreeSet<String> { values.iter().map(|v| v.to_string()).collect() };
    let redis = src().join("bus").join("redis");
    let used = source_literals(&redis, r#"metric::error\("([a-z_]+)"\)"#);
    assert!(used.is_subset(&listed(&cluster::ERROR_OPS)), "{used:?}");
    let used = source_literals(&redis, r#"metric::skipped\("([a-z_]+)"\)"#);
    assert!(used.is_subset(&listed(&cluster::SKIPPED_OPS)), "{used:?}");
    let used = source_literals(&src(), r#"offline_dropped\("([a-z_]+)"\)"#);
    assert!(!used.is_empty());
    assert!(
        used.is_subset(&listed(&roomcast::metrics::OFFLINE_DROP_REASONS)),
        "{used:?}"
    );
    // Upgrade refusals: `reject(StatusCode::X, "reason", ..)`,
    // `Rejected::new(StatusCode::X, "reason", ..)` and the handshake's own.
    let mut used = source_literals(
        &src(),
        r#"(?:reject|Rejected::new)\(\s*StatusCode::[A-Z_]+,\s*"([a-z_]+)""#,
    );
    used.extend(source_literals(
        &src().join("server"),
        r#"fn reason\(self\) -> &'static str \{\s*"([a-z_]+)""#,
    ));
    assert!(used.len() >= 5, "{used:?}");
    assert!(
        used.is_subset(&listed(&roomcast::metrics::UPGRADE_REJECT_REASONS)),
        "{used:?}"
    );
}

/// Checks that `name` has HELP, TYPE and at least one sample in `text`,
/// every sample 0 unless `name` is in `may_move`.
fn assert_complete(text: &str, name: &str, may_move: &[&str]) {
    assert!(
        text.lines().any(|l| l
            .strip_prefix("# HELP ")
            .and_then(|l| l.strip_prefix(name))
            .is_some_and(|rest| rest.starts_with(' ') && rest.len() > 1)),
        "no # HELP for {name}:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == format!("# TYPE {name} counter") || l == format!("# TYPE {name} gauge")),
        "no # TYPE for {name}:\n{text}"
    );
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .collect();
    assert!(!samples.is_empty(), "no sample of {name}:\n{text}");
    if !may_move.contains(&name) {
        for s in samples {
            let value: f64 = s.rsplit(' ').next().and_then(|v| v.parse().ok()).expect(s);
            assert_eq!(value, 0.0, "{s}");
        }
    }
}

/// Checks that each known label value of `m` has its own series.
fn assert_series(text: &str, m: &Metric) {
    let Some((label, values)) = m.label else {
        return;
    };
    for value in values {
        let series = format!("{}{{{label}=\"{value}\"}} ", m.name);
        assert!(
            text.lines().any(|l| l.starts_with(&series)),
            "no series {series}:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_fresh_standalone_instance_exports_every_metric_at_zero() {
    let (base, cluster) = source_names();
    let server = Server::start(&[]).await;
    let (status, text) = http_get(&server.http("/metrics")).await;
    assert_eq!(status, 200);
    for name in &base {
        assert_complete(&text, name, &[]);
    }
    for m in &roomcast::metrics::METRICS {
        assert!(base.contains(m.name), "{} is not in the source", m.name);
        assert_series(&text, m);
    }
    // Cluster metrics belong to cluster mode: `roomcast_redis_ready 0`
    // here would read as "Redis is down".
    for name in &cluster {
        assert!(
            !text.contains(name.as_str()),
            "{name} in standalone:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_fresh_cluster_instance_exports_every_metric_at_zero() {
    let (base, cluster_names) = source_names();
    let redis = Redis::start().await;
    let server = Server::start(&["--redis", &redis.url()]).await;
    let (status, text) = http_get(&server.http("/metrics")).await;
    assert_eq!(status, 200);
    // Listening means the first resync finished: ready, and one resync.
    let moved = ["roomcast_redis_ready", "roomcast_redis_resyncs_total"];
    for name in base.iter().chain(&cluster_names) {
        assert_complete(&text, name, &moved);
    }
    assert_eq!(metric(&text, "roomcast_redis_ready"), 1.0, "{text}");
    for m in roomcast::metrics::METRICS.iter().chain(&cluster::METRICS) {
        assert_series(&text, m);
    }
    for m in &cluster::METRICS {
        assert!(
            cluster_names.contains(m.name),
            "{} is not in the source",
            m.name
        );
    }
}

/// deploy/README.md says the dashboard charts every metric: hold it to that.
#[test]
fn the_dashboard_charts_every_metric() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/roomcast-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push_str(target["expr"].as_str().unwrap_or_default());
            exprs.push('\n');
        }
    }
    let (base, cluster) = source_names();
    let missing: Vec<&String> = base
        .iter()
        .chain(&cluster)
        .filter(|name| {
            !regex_lite::Regex::new(&format!(r"\b{name}\b"))
                .expect("regex")
                .is_match(&exprs)
        })
        .collect();
    assert!(missing.is_empty(), "not charted: {missing:?}");
}
