//! The shutdown sequence: not ready, stop accepting, tell every client to
//! reconnect and close it with 1001 (spread over the drain period so they
//! do not all come back at once), leave the cluster, exit before the deadline.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::handle::Outbound;
use crate::fanout;
use crate::node::Node;
use crate::protocol::{CloseCode, ServerEvent};

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Drains every connection: a `reconnect` hint, then close 1001, with the
/// closes spread evenly over `drain`.
pub async fn drain(node: &Arc<Node>) {
    node.stop_accepting();
    let conns = node.registry.all_conns();
    let drain = node.config.shutdown.drain;
    tracing::info!(connections = conns.len(), ?drain, "draining");
    if conns.is_empty() {
        return;
    }
    let step = drain / (conns.len() as u32).max(1);
    for (i, conn) in conns.iter().enumerate() {
        // Clients reconnect after a spread-out delay too, so a whole
        // instance's clients do not land on the others in one instant.
        let after_ms = (step * i as u32).as_millis() as u64 % 1000 + 100;
        let hint = ServerEvent::Reconnect {
            after_ms,
            reason: Cow::Borrowed("server draining"),
        };
        if let Some(frame) = fanout::encode(conn.codec, &hint) {
            let _ = conn.push(Outbound::Frame(frame));
        }
        conn.close_after_queue(CloseCode::GoingAway);
        if !step.is_zero() {
            tokio::time::sleep(step.min(Duration::from_millis(100))).await;
        }
    }
}
