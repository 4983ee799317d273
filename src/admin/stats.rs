//! The admin figures: one instance's, gathered from the Prometheus
//! counters it keeps anyway (rates are differences between two
//! gatherings), the registry and `/proc/self`; and the cluster aggregate
//! (totals, busiest rooms) built from every instance's.
//!
//! Nothing here runs unless an admin watches (see [`super::run`]).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bus::redis::ClusterSeries;
use crate::node::{Node, now_ms};

/// The counters a gathering reads, by their Prometheus series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub publishes: f64,
    pub sends: f64,
    pub deliveries: f64,
    pub room_events: f64,
    pub slow_closes: f64,
    pub slow_drops: f64,
    pub resyncs: f64,
    pub lagged: f64,
    pub offline_queued: f64,
    pub offline_delivered: f64,
    pub offline_dropped: f64,
}

impl Counters {
    /// Reads the counters from Prometheus text (what `/metrics` serves).
    pub fn parse(text: &str) -> Counters {
        let mut c = Counters::default();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let slot = match series {
                r#"roomcast_ops_total{op="publish"}"# => &mut c.publishes,
                r#"roomcast_ops_total{op="send"}"# => &mut c.sends,
                "roomcast_deliveries_total" => &mut c.deliveries,
                "roomcast_room_events_total" => &mut c.room_events,
                r#"roomcast_closes_total{code="4000"}"# => &mut c.slow_closes,
                "roomcast_slow_consumer_drops_total" => &mut c.slow_drops,
                "roomcast_offline_queued_total" => &mut c.offline_queued,
                "roomcast_offline_delivered_total" => &mut c.offline_delivered,
                s if s.starts_with("roomcast_offline_dropped_total") => {
                    c.offline_dropped += v;
                    continue;
                }
                other => {
                    // Cluster series are named by the Redis bus.
                    match crate::bus::redis::cluster_series(other) {
                        Some(ClusterSeries::Resyncs) => c.resyncs = v,
                        Some(ClusterSeries::Lagged) => c.lagged = v,
                        None => {}
                    }
                    continue;
                }
            };
            *slot = v;
        }
        c
    }
}

/// One gathering's readings, kept to compute the next one's rates.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    counters: Counters,
    cpu_ticks: Option<u64>,
}

/// The previous reading of this instance.
#[derive(Debug, Default)]
pub struct Sampler {
    prev: Option<Sample>,
}

impl Sampler {
    /// Forgets the previous reading (the admin side went idle).
    pub fn reset(&mut self) {
        self.prev = None;
    }
}

/// Clock ticks per second of `/proc/self/stat` (USER_HZ, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// CPU time of this process (user + system), in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: fields are counted after its `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Rounds a rate for display.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A room's scoped key as `{"tenant":..,"room":..}` fields.
fn room_fields(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// This instance's figures (JSON, shared through the bus in cluster mode).
pub fn gather(node: &Node, sampler: &mut Sampler, top: usize) -> Value {
    let now = Instant::now();
    let counters = node
        .metrics
        .as_ref()
        .map(|h| Counters::parse(&h.render()))
        .unwrap_or_default();
    let ticks = cpu_ticks();
    let prev = sampler.prev.replace(Sample {
        at: now,
        counters,
        cpu_ticks: ticks,
    });
    let dt = prev.map_or(0.0, |p| now.duration_since(p.at).as_secs_f64());
    let rate = |f: fn(&Counters) -> f64| match prev {
        Some(p) if dt > 0.0 => round2(((f(&counters) - f(&p.counters)).max(0.0)) / dt),
        _ => 0.0,
    };
    let cpu = match (prev.and_then(|p| p.cpu_ticks), ticks) {
        (Some(a), Some(b)) if dt > 0.0 => {
            round2(b.saturating_sub(a) as f64 / CLOCK_TICKS / dt * 100.0)
        }
        _ => 0.0,
    };

    // Busiest local rooms: members now, messages since the last gathering.
    let mut by_members = node.registry.room_user_counts();
    let by_members = top_n(&mut by_members, top);
    let mut counted: Vec<(Arc<str>, u64)> = Vec::new();
    node.admin.room_msgs.retain(|room, n| {
        counted.push((room.clone(), *n));
        false
    });
    let by_rate = top_n(&mut counted, top);
    let room_list = |rooms: Vec<(Arc<str>, u64)>, rate: bool| -> Vec<Value> {
        rooms
            .into_iter()
            .map(|(key, n)| {
                let (tenant, room) = room_fields(&key);
                if rate {
                    let per_s = if dt > 0.0 { round2(n as f64 / dt) } else { 0.0 };
                    json!({"tenant": tenant, "room": room, "msgs_per_s": per_s})
                } else {
                    json!({"tenant": tenant, "room": room, "members": n})
                }
            })
            .collect()
    };

    let offline = node.bus.offline_depth().unwrap_or_else(|| {
        // Cluster queues live in Redis: this instance's share of what was
        // queued and not yet delivered or dropped, summed over instances.
        (counters.offline_queued - counters.offline_delivered - counters.offline_dropped).max(0.0)
            as u64
    });
    let bus = match &node.bus {
        crate::bus::Bus::Memory(_) => json!({"mode": "standalone", "connected": true}),
        crate::bus::Bus::Redis(b) => json!({
            "mode": "cluster",
            "connected": b.connected(),
            "ready": b.is_ready(),
            "reconnects": (counters.resyncs - 1.0).max(0.0) as u64,
            "lagged": counters.lagged as u64,
            "outbox": b.outbox_len(),
        }),
    };
    json!({
        "id": node.instance_id(),
        "address": node.admin.address.get().cloned().unwrap_or_default(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": node.started.elapsed().as_secs(),
        "ts": now_ms(),
        "draining": !node.is_accepting(),
        "connections": node.registry.conn_count(),
        "users": node.registry.user_count(),
        "rooms": node.registry.room_count(),
        "msgs_in_per_s": rate(|c| c.publishes + c.sends),
        "msgs_out_per_s": rate(|c| c.room_events),
        "deliveries_per_s": rate(|c| c.deliveries),
        "direct_per_s": rate(|c| c.sends),
        "offline_depth": offline,
        "slow_consumer_closes": counters.slow_closes as u64,
        "slow_consumer_drops": counters.slow_drops as u64,
        "bus": bus,
        "outbox": match &node.bus {
            crate::bus::Bus::Redis(b) => b.outbox_len(),
            crate::bus::Bus::Memory(_) => 0,
        },
        "rss_bytes": rss_bytes(),
        "cpu_percent": cpu,
        "top_rooms": {
            "by_members": room_list(by_members, false),
            "by_rate": room_list(by_rate, true),
        },
    })
}

/// The `n` largest entries, largest first (ties by name).
fn top_n(items: &mut Vec<(Arc<str>, u64)>, n: usize) -> Vec<(Arc<str>, u64)> {
    if n == 0 {
        return Vec::new();
    }
    let key = |e: &(Arc<str>, u64)| (Reverse(e.1), e.0.clone());
    if items.len() > n {
        items.select_nth_unstable_by_key(n - 1, key);
        items.truncate(n);
    }
    items.sort_by_key(key);
    std::mem::take(items)
}

/// Numbers summed into the totals.
const SUMMED: [&str; 10] = [
    "connections",
    "users",
    "rooms",
    "msgs_in_per_s",
    "msgs_out_per_s",
    "deliveries_per_s",
    "direct_per_s",
    "offline_depth",
    "slow_consumer_closes",
    "slow_consumer_drops",
];

/// The cluster's figures from every live instance's: the instances (by
/// id, without their own room lists), totals, and the busiest rooms
/// cluster-wide (members and rates summed over instances).
pub fn aggregate(mut instances: Vec<Value>, top: usize, every: Duration) -> Value {
    instances.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let mut totals = serde_json::Map::new();
    for name in SUMMED {
        let sum: f64 = instances.iter().filter_map(|i| i[name].as_f64()).sum();
        totals.insert(name.into(), json!(round2(sum)));
    }
    let rss: u64 = instances
        .iter()
        .filter_map(|i| i["rss_bytes"].as_u64())
        .sum();
    totals.insert("rss_bytes".into(), json!(rss));
    totals.insert("instances".into(), json!(instances.len()));

    let mut members: HashMap<(String, String), u64> = HashMap::new();
    let mut rates: HashMap<(String, String), f64> = HashMap::new();
    for inst in &mut instances {
        let rooms = inst
            .as_object_mut()
            .and_then(|o| o.remove("top_rooms"))
            .unwrap_or(Value::Null);
        let key = |r: &Value| {
            (
                r["tenant"].as_str().unwrap_or("").to_owned(),
                r["room"].as_str().unwrap_or("").to_owned(),
            )
        };
        for r in rooms["by_members"].as_array().into_iter().flatten() {
            *members.entry(key(r)).or_default() += r["members"].as_u64().unwrap_or(0);
        }
        for r in rooms["by_rate"].as_array().into_iter().flatten() {
            *rates.entry(key(r)).or_default() += r["msgs_per_s"].as_f64().unwrap_or(0.0);
        }
    }
    let mut members: Vec<_> = members.into_iter().collect();
    members.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    members.truncate(top);
    let mut rates: Vec<_> = rates.into_iter().collect();
    rates.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rates.truncate(top);
    json!({
        "ts": now_ms(),
        "interval_ms": every.as_millis() as u64,
        "instances": instances,
        "totals": totals,
        "top_rooms": {
            "by_members": members.into_iter().map(|((t, r), n)| json!({"tenant": t, "room": r, "members": n})).collect::<Vec<_>>(),
            "by_rate": rates.into_iter().map(|((t, r), x)| json!({"tenant": t, "room": r, "msgs_per_s": round2(x)})).collect::<Vec<_>>(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_come_from_prometheus_text() {
        let text = "# HELP x\n\
            roomcast_ops_total{op=\"publish\"} 7\n\
            roomcast_ops_total{op=\"send\"} 2\n\
            roomcast_deliveries_total 100\n\
            roomcast_closes_total{code=\"4000\"} 3\n\
            roomcast_offline_dropped_total{reason=\"cap\"} 1\n\
            roomcast_offline_dropped_total{reason=\"ttl\"} 2\n";
        let c = Counters::parse(text);
        assert_eq!(c.publishes, 7.0);
        assert_eq!(c.sends, 2.0);
        assert_eq!(c.deliveries, 100.0);
        assert_eq!(c.slow_closes, 3.0);
        assert_eq!(c.offline_dropped, 3.0);
    }

    #[test]
    fn aggregate_sums_instances_and_merges_rooms() {
        let a = json!({"id": "b", "connections": 3, "rooms": 2, "deliveries_per_s": 1.5,
            "top_rooms": {"by_members": [{"tenant": "", "room": "lobby", "members": 2}],
                          "by_rate": [{"tenant": "", "room": "lobby", "msgs_per_s": 1.0}]}});
        let b = json!({"id": "a", "connections": 1, "rooms": 1, "deliveries_per_s": 2.0,
            "top_rooms": {"by_members": [{"tenant": "", "room": "lobby", "members": 1},
                                         {"tenant": "t", "room": "x", "members": 5}],
                          "by_rate": []}});
        let agg = aggregate(vec![a, b], 10, Duration::from_secs(2));
        assert_eq!(agg["totals"]["connections"], json!(4.0));
        assert_eq!(agg["totals"]["deliveries_per_s"], json!(3.5));
        assert_eq!(agg["totals"]["instances"], json!(2));
        assert_eq!(agg["instances"][0]["id"], "a");
        assert!(agg["instances"][0].get("top_rooms").is_none());
        let by_members = &agg["top_rooms"]["by_members"];
        assert_eq!(
            by_members[0],
            json!({"tenant": "t", "room": "x", "members": 5})
        );
        assert_eq!(
            by_members[1],
            json!({"tenant": "", "room": "lobby", "members": 3})
        );
        assert_eq!(agg["top_rooms"]["by_rate"][0]["msgs_per_s"], json!(1.0));
    }

    #[test]
    fn top_n_keeps_the_largest_in_order() {
        let mut v: Vec<(Arc<str>, u64)> = (0..100u64)
            .map(|i| (i.to_string().into(), i % 37))
            .collect();
        let top = top_n(&mut v, 3);
        let counts: Vec<u64> = top.iter().map(|e| e.1).collect();
        assert_eq!(counts, vec![36, 36, 35]);
        assert!(top_n(&mut Vec::new(), 3).is_empty());
    }

    #[test]
    fn proc_figures_are_readable_here() {
        assert!(rss_bytes().is_some_and(|b| b > 0));
        assert!(cpu_ticks().is_some());
    }
}
