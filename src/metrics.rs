//! Prometheus metrics. Names are fixed here; no label carries a room, a user
//! or a token (cardinality and privacy).
//!
//! [`install`] registers every metric of the server at 0 with its `# HELP`
//! text, and every series of a labelled counter whose label values are
//! known in advance (ops, error codes, close codes, rejection and drop
//! reasons), so a fresh instance's `/metrics` is complete: dashboards and
//! alerts read 0 instead of "no data". The cluster-only metrics
//! (`roomcast_redis_*`, in `bus::redis`) are registered the same way when
//! the Redis bus starts, and a standalone instance exports none of them:
//! `roomcast_redis_ready 0` there would read as "Redis is down".

use std::sync::LazyLock;
use std::time::Duration;

use metrics::{Counter, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::protocol::{CloseCode, Codec, ErrorCode};

/// Installs the global recorder, registers every metric at 0, and returns
/// the handle `/metrics` renders.
pub fn install() -> Option<PrometheusHandle> {
    match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => {
            register();
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

/// A metric's type in the `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric: its name, type, help text, and the label whose known
/// values are each registered at 0 (`None`: no label).
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub label: Option<(&'static str, &'static [&'static str])>,
}

impl Metric {
    /// Describes the metric and registers each of its series at 0.
    pub fn register(&self) {
        match self.kind {
            Kind::Counter => describe_counter!(self.name, self.help),
            Kind::Gauge => describe_gauge!(self.name, self.help),
        }
        match self.label {
            None => self.register_series(&[]),
            Some((label, values)) => {
                for value in values {
                    self.register_series(&[(label, value)]);
                }
            }
        }
    }

    fn register_series(&self, labels: &[(&'static str, &'static str)]) {
        // Looking a series up creates it at 0; nothing is counted.
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|&(k, v)| metrics::Label::new(k, v))
            .collect();
        match self.kind {
            Kind::Counter => drop(counter!(self.name, labels)),
            Kind::Gauge => drop(gauge!(self.name, labels)),
        }
    }
}

/// Client operations, in the order of [`op_received`]'s index.
pub const OPS: [&str; 8] = [
    "join", "leave", "publish", "send", "presence", "ping", "admin", "history",
];

/// Every `reason` of `roomcast_upgrades_rejected_total` (the admission
/// steps of `server`).
pub const UPGRADE_REJECT_REASONS: [&str; 7] = [
    "draining",
    "not_websocket",
    "origin",
    "no_token",
    "bad_token",
    "user_limit",
    "instance_limit",
];

/// Every `reason` of `roomcast_offline_dropped_total`.
pub const OFFLINE_DROP_REASONS: [&str; 2] = ["cap", "ttl"];

/// The `code` labels of `roomcast_errors_total`: every [`ErrorCode`]
/// (a unit test holds the two together).
const ERROR_LABELS: [&str; 10] = [
    "bad_frame",
    "unknown_op",
    "bad_request",
    "invalid_room",
    "forbidden",
    "rate_limited",
    "too_many_rooms",
    "not_joined",
    "unavailable",
    "not_found",
];

/// The `code` labels of `roomcast_closes_total`: the close codes the server
/// sends ([`CloseCode::ALL`], in its order).
const CLOSE_LABELS: [&str; 9] = [
    "1001", "1002", "1007", "1008", "1009", "1011", "4000", "4001", "4002",
];

/// Every `result` of `roomcast_history_recoveries_total`.
pub const RECOVERY_RESULTS: [&str; 2] = ["recovered", "not_recovered"];

/// The `codec` labels of `roomcast_encodes_total`, in [`Codec::index`] order.
const CODEC_LABELS: [&str; 2] = ["json", "msgpack"];

/// Every metric of the server outside cluster mode.
pub const METRICS: [Metric; 23] = [
    Metric {
        name: "roomcast_connections",
        kind: Kind::Gauge,
        help: "Open WebSocket connections.",
        label: None,
    },
    Metric {
        name: "roomcast_connections_opened_total",
        kind: Kind::Counter,
        help: "WebSocket connections accepted.",
        label: None,
    },
    Metric {
        name: "roomcast_upgrades_rejected_total",
        kind: Kind::Counter,
        help: "Upgrade requests refused, by reason.",
        label: Some(("reason", &UPGRADE_REJECT_REASONS)),
    },
    Metric {
        name: "roomcast_closes_total",
        kind: Kind::Counter,
        help: "Connections the server closed, by WebSocket close code.",
        label: Some(("code", &CLOSE_LABELS)),
    },
    Metric {
        name: "roomcast_slow_consumer_drops_total",
        kind: Kind::Counter,
        help: "Frames dropped for connections whose outbound queue was full (slow-consumer policy drop).",
        label: None,
    },
    Metric {
        name: "roomcast_ops_total",
        kind: Kind::Counter,
        help: "Client operations received, by op.",
        label: Some(("op", &OPS)),
    },
    Metric {
        name: "roomcast_errors_total",
        kind: Kind::Counter,
        help: "Error events sent to clients, by error code.",
        label: Some(("code", &ERROR_LABELS)),
    },
    Metric {
        name: "roomcast_deliveries_total",
        kind: Kind::Counter,
        help: "Frames queued to local connections (room and direct messages).",
        label: None,
    },
    Metric {
        name: "roomcast_encodes_total",
        kind: Kind::Counter,
        help: "Events serialised, by codec (once per codec per event, shared by all recipients).",
        label: Some(("codec", &CODEC_LABELS)),
    },
    Metric {
        name: "roomcast_room_events_total",
        kind: Kind::Counter,
        help: "Room events fanned out to local members.",
        label: None,
    },
    Metric {
        name: "roomcast_room_encodes_total",
        kind: Kind::Counter,
        help: "Serialisations done for room fan-outs; at most the number of codecs per room event.",
        label: None,
    },
    Metric {
        name: "roomcast_rooms",
        kind: Kind::Gauge,
        help: "Rooms with at least one local member.",
        label: None,
    },
    Metric {
        name: "roomcast_offline_queued_total",
        kind: Kind::Counter,
        help: "Direct messages queued for offline users.",
        label: None,
    },
    Metric {
        name: "roomcast_offline_delivered_total",
        kind: Kind::Counter,
        help: "Queued direct messages delivered when their user came back.",
        label: None,
    },
    Metric {
        name: "roomcast_offline_dropped_total",
        kind: Kind::Counter,
        help: "Queued direct messages dropped, by reason (cap: queue full, ttl: expired).",
        label: Some(("reason", &OFFLINE_DROP_REASONS)),
    },
    Metric {
        name: "roomcast_api_requests_total",
        kind: Kind::Counter,
        help: "Server API requests, by endpoint.",
        label: Some(("endpoint", &API_ENDPOINTS)),
    },
    Metric {
        name: "roomcast_api_items_total",
        kind: Kind::Counter,
        help: "Server API messages run (single requests and batch items), by op.",
        label: Some(("op", &API_OPS)),
    },
    Metric {
        name: "roomcast_api_errors_total",
        kind: Kind::Counter,
        help: "Server API refusals and failed items, by error code.",
        label: Some(("code", &crate::api::error::CODES)),
    },
    Metric {
        name: "roomcast_api_idempotent_replays_total",
        kind: Kind::Counter,
        help: "Server API requests answered from an idempotency record (nothing delivered again).",
        label: None,
    },
    Metric {
        name: "roomcast_history_recoveries_total",
        kind: Kind::Counter,
        help: "Joins of history rooms with `since`, by result (recovered: every missed message replayed).",
        label: Some(("result", &RECOVERY_RESULTS)),
    },
    Metric {
        name: "roomcast_history_filled_total",
        kind: Kind::Counter,
        help: "History-room messages an instance read from the store to fill a gap in what it received.",
        label: None,
    },
    Metric {
        name: "roomcast_history_gaps_total",
        kind: Kind::Counter,
        help: "Gaps an instance could not fill: its members of the room were sent a `gap` event.",
        label: None,
    },
    Metric {
        name: "roomcast_keyed_replaced_total",
        kind: Kind::Counter,
        help: "Latest-wins room messages replaced, unsent, by a newer one with the same room and key.",
        label: None,
    },
];

/// The `endpoint` labels of `roomcast_api_requests_total`.
const API_ENDPOINTS: [&str; 5] = ["publish", "send", "broadcast", "batch", "members"];

/// The `op` labels of `roomcast_api_items_total`.
const API_OPS: [&str; 3] = ["publish", "send", "broadcast"];

/// Describes every metric and registers each known series at 0.
fn register() {
    for m in &METRICS {
        m.register();
    }
    LazyLock::force(&HOT);
}

pub fn connection_opened() {
    counter!("roomcast_connections_opened_total").increment(1);
    gauge!("roomcast_connections").increment(1.0);
}

pub fn connection_closed() {
    gauge!("roomcast_connections").decrement(1.0);
}

/// Counts a refused upgrade; `reason` is one of [`UPGRADE_REJECT_REASONS`].
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
    ops: [Counter; 8],
    keyed_replaced: Counter,
}

static HOT: LazyLock<Hot> = LazyLock::new(|| Hot {
    deliveries: counter!("roomcast_deliveries_total"),
    room_events: counter!("roomcast_room_events_total"),
    room_encodes: counter!("roomcast_room_encodes_total"),
    encodes: CODEC_LABELS.map(|codec| counter!("roomcast_encodes_total", "codec" => codec)),
    ops: OPS.map(|op| counter!("roomcast_ops_total", "op" => op)),
    keyed_replaced: counter!("roomcast_keyed_replaced_total"),
});

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

/// A queued latest-wins message was replaced by a newer one.
pub fn keyed_replaced() {
    HOT.keyed_replaced.increment(1);
}

pub fn slow_consumer_drop() {
    counter!("roomcast_slow_consumer_drops_total").increment(1);
}

pub fn closed_with(code: u16) {
    match CloseCode::ALL.iter().position(|c| c.code() == code) {
        Some(i) => counter!("roomcast_closes_total", "code" => CLOSE_LABELS[i]).increment(1),
        None => counter!("roomcast_closes_total", "code" => code.to_string()).increment(1),
    }
}

pub fn offline_queued() {
    counter!("roomcast_offline_queued_total").increment(1);
}

pub fn offline_delivered(n: usize) {
    counter!("roomcast_offline_delivered_total").increment(n as u64);
}

/// Counts a dropped queued message; `reason` is one of [`OFFLINE_DROP_REASONS`].
pub fn offline_dropped(reason: &'static str) {
    counter!("roomcast_offline_dropped_total", "reason" => reason).increment(1);
}

/// A join with `since` finished (`None`: it had no `since`).
pub fn history_recovery(recovered: Option<bool>) {
    if let Some(ok) = recovered {
        let result = RECOVERY_RESULTS[usize::from(!ok)];
        counter!("roomcast_history_recoveries_total", "result" => result).increment(1);
    }
}

pub fn history_filled(n: usize) {
    counter!("roomcast_history_filled_total").increment(n as u64);
}

pub fn history_gap() {
    counter!("roomcast_history_gaps_total").increment(1);
}

pub fn rooms(n: usize) {
    gauge!("roomcast_rooms").set(n as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A code's place in [`ERROR_LABELS`]. The match has no catch-all: a
    /// new error code does not compile until it has a place, and with it a
    /// series registered at 0.
    fn error_index(code: ErrorCode) -> usize {
        match code {
            ErrorCode::BadFrame => 0,
            ErrorCode::UnknownOp => 1,
            ErrorCode::BadRequest => 2,
            ErrorCode::InvalidRoom => 3,
            ErrorCode::Forbidden => 4,
            ErrorCode::RateLimited => 5,
            ErrorCode::TooManyRooms => 6,
            ErrorCode::NotJoined => 7,
            ErrorCode::Unavailable => 8,
            ErrorCode::NotFound => 9,
        }
    }

    /// The label lists are the protocol's own codes and codecs, in order.
    #[test]
    fn label_lists_match_the_protocol() {
        let codes = [
            ErrorCode::BadFrame,
            ErrorCode::UnknownOp,
            ErrorCode::BadRequest,
            ErrorCode::InvalidRoom,
            ErrorCode::Forbidden,
            ErrorCode::RateLimited,
            ErrorCode::TooManyRooms,
            ErrorCode::NotJoined,
            ErrorCode::Unavailable,
            ErrorCode::NotFound,
        ];
        assert_eq!(codes.len(), ERROR_LABELS.len());
        for code in codes {
            assert_eq!(ERROR_LABELS[error_index(code)], code.as_str());
        }
        let closes: Vec<String> = CloseCode::ALL
            .iter()
            .map(|c| c.code().to_string())
            .collect();
        assert_eq!(closes, CLOSE_LABELS);
        for codec in Codec::ALL {
            let name = CODEC_LABELS[codec.index()];
            assert!(codec.subprotocol().ends_with(name), "{name}");
        }
    }
}
