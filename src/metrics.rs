//! Prometheus metrics. Names are fixed here; no label carries a room, a user
//! or a token (cardinality and privacy).

use std::sync::LazyLock;
use std::time::Duration;

use metrics::{Counter, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::protocol::{Codec, ErrorCode};

/// Installs the global recorder; `/metrics` renders the returned handle.
pub fn install() -> Option<PrometheusHandle> {
    match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => {
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed");
            None
        }
    }
}

pub fn connection_opened() {
    counter!("roomcast_connections_opened_total").increment(1);
    gauge!("roomcast_connections").increment(1.0);
}

pub fn connection_closed() {
    gauge!("roomcast_connections").decrement(1.0);
}

pub fn upgrade_rejected(reason: &'static str) {
    counter!("roomcast_upgrades_rejected_total", "reason" => reason).increment(1);
}

/// Handles of the counters bumped on every message, looked up once: the
/// `counter!` macro hashes its name and labels on every call. Created after
/// [`install`], which `main` calls before serving.
struct Hot {
    deliveries: Counter,
    room_events: Counter,
    room_encodes: Counter,
    encodes: [Counter; 2],
    ops: [Counter; 6],
}

static HOT: LazyLock<Hot> = LazyLock::new(|| Hot {
    deliveries: counter!("roomcast_deliveries_total"),
    room_events: counter!("roomcast_room_events_total"),
    room_encodes: counter!("roomcast_room_encodes_total"),
    encodes: [
        counter!("roomcast_encodes_total", "codec" => "json"),
        counter!("roomcast_encodes_total", "codec" => "msgpack"),
    ],
    ops: OPS.map(|op| counter!("roomcast_ops_total", "op" => op)),
});

/// Client operations, in the order of [`op_received`]'s index.
pub const OPS: [&str; 6] = ["join", "leave", "publish", "send", "presence", "ping"];

/// Counts a client operation; `op` indexes [`OPS`].
pub fn op_received(op: usize) {
    if let Some(c) = HOT.ops.get(op) {
        c.increment(1);
    }
}

pub fn error_sent(code: ErrorCode) {
    counter!("roomcast_errors_total", "code" => code.as_str()).increment(1);
}

pub fn delivered(n: usize) {
    if n > 0 {
        HOT.deliveries.increment(n as u64);
    }
}

/// One room event fanned out on this instance, with the encodings it took.
/// `roomcast_room_encodes_total / roomcast_room_events_total` is at most the
/// number of codecs: events are serialised once per codec, not per member.
pub fn room_fanout(encodes: usize) {
    HOT.room_events.increment(1);
    HOT.room_encodes.increment(encodes as u64);
}

pub fn encoded(codec: Codec) {
    HOT.encodes[codec.index()].increment(1);
}

pub fn slow_consumer_drop() {
    counter!("roomcast_slow_consumer_drops_total").increment(1);
}

pub fn closed_with(code: u16) {
    counter!("roomcast_closes_total", "code" => code.to_string()).increment(1);
}

pub fn offline_queued() {
    counter!("roomcast_offline_queued_total").increment(1);
}

pub fn offline_delivered(n: usize) {
    counter!("roomcast_offline_delivered_total").increment(n as u64);
}

pub fn offline_dropped(reason: &'static str) {
    counter!("roomcast_offline_dropped_total", "reason" => reason).increment(1);
}

pub fn rooms(n: usize) {
    gauge!("roomcast_rooms").set(n as f64);
}
