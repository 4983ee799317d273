//! The shutdown sequence: not ready and no new upgrades (the listener still
//! answers HTTP, with `503`s), tell every client to reconnect and close it
//! with 1001 (spread over the drain period so they do not all come back at
//! once), stop the listener, leave the cluster, exit before the deadline.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::handle::{ConnHandle, Outbound};
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

/// How often the next slice of connections is told to go: short enough
/// that the closes look even. The slice grows with the number of
/// connections, so any number fits in the drain period (a timer per
/// connection cannot go below a millisecond each).
pub const TICK: Duration = Duration::from_millis(20);

/// How often the registry is looked over for connections that registered
/// after the drain began. They are rare, and each look copies the list of
/// every connection still open.
const SWEEP: Duration = Duration::from_millis(250);

/// Drains every connection: a `reconnect` hint, then close 1001, a slice
/// every [`TICK`] so that the last slice goes before the drain period is
/// over, whatever the number of connections. Returns once every connection
/// task has ended. The listener stays up meanwhile, answering `503`.
pub async fn drain(node: &Arc<Node>) {
    node.stop_accepting();
    let mut told = HashSet::new();
    tell_slices(node, &mut told, &CancellationToken::new()).await;
    // Upgrades admitted just before `stop_accepting` register after the
    // snapshot above: tell them too, until every connection task has ended.
    node.tracker.close();
    let all_ended = node.tracker.wait();
    tokio::pin!(all_ended);
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            () = &mut all_ended => return,
            _ = sweep.tick() => tell_late(node, &mut told),
        }
    }
}

/// An admin drain: the same hints and closes as [`drain`], while the
/// process goes on (not ready, refusing upgrades) until an undrain
/// cancels `stop`. Late registrations are looked for during one drain
/// period after the last slice.
pub async fn tell_all(node: &Arc<Node>, stop: &CancellationToken) {
    let mut told = HashSet::new();
    tell_slices(node, &mut told, stop).await;
    let mut sweep = tokio::time::interval(SWEEP);
    let until = Instant::now() + node.config.shutdown.drain.max(SWEEP * 4);
    while Instant::now() < until {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = sweep.tick() => tell_late(node, &mut told),
        }
    }
}

/// Tells every registered connection to reconnect, a slice every [`TICK`],
/// so the last slice goes before the drain period is over. Stops early
/// when `stop` is cancelled.
async fn tell_slices(node: &Arc<Node>, told: &mut HashSet<u64>, stop: &CancellationToken) {
    let conns = node.registry.all_conns();
    let drain = node.config.shutdown.drain;
    let n = conns.len();
    tracing::info!(connections = n, ?drain, "draining");
    let start = Instant::now();
    told.reserve(n);
    let len = slice_len(n, drain, TICK);
    for (k, slice) in conns.chunks(len).enumerate() {
        // Sleeping until each slice's own time keeps a slow slice from
        // pushing the later ones past the drain period.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(start + TICK * k as u32) => {}
        }
        for (j, conn) in slice.iter().enumerate() {
            let i = k * len + j;
            told.insert(conn.id);
            tell(conn, reconnect_after_ms(i, n, drain));
        }
    }
}

/// Tells connections that registered after the drain began.
fn tell_late(node: &Node, told: &mut HashSet<u64>) {
    for conn in node.registry.all_conns() {
        if told.insert(conn.id) {
            tell(&conn, LATE_AFTER_MS + conn.id % 1000);
        }
    }
}

/// The reconnect delay of connections that registered after the drain
/// began, plus a jitter from their id.
const LATE_AFTER_MS: u64 = 100;

/// Queues the `reconnect` hint and then close 1001.
fn tell(conn: &ConnHandle, after_ms: u64) {
    let hint = ServerEvent::Reconnect {
        after_ms,
        reason: Cow::Borrowed("server draining"),
    };
    if let Some(frame) = fanout::encode(conn.codec, &hint) {
        let _ = conn.push(Outbound::Frame(frame));
    }
    conn.close_after_queue(CloseCode::GoingAway);
}

/// How many of `n` connections are told per tick so that every slice goes
/// within `drain`: the first at once, the last before `drain` is over.
fn slice_len(n: usize, drain: Duration, tick: Duration) -> usize {
    let ticks = (drain.as_nanos() / tick.as_nanos().max(1)).max(1) as usize;
    n.div_ceil(ticks).max(1)
}

/// The `after_ms` of the `i`-th of `n` connections. Clients come back after
/// a delay that moves through one second as the drain goes on, so a whole
/// instance's clients do not land on the others in one instant.
fn reconnect_after_ms(i: usize, n: usize, drain: Duration) -> u64 {
    let at = drain.as_millis() * i as u128 / n.max(1) as u128;
    (at % 1000) as u64 + 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_number_of_connections_fits_in_the_drain_period() {
        let drain = Duration::from_secs(15);
        for n in [0, 1, 7, 750, 751, 50_000, 1_000_000] {
            let len = slice_len(n, drain, TICK);
            let slices = n.div_ceil(len);
            // Slice k goes at k ticks: the last one before the drain ends.
            assert!(
                TICK * (slices.saturating_sub(1) as u32) < drain,
                "{n}: {slices} slices of {len}"
            );
        }
        assert_eq!(slice_len(50_000, drain, TICK), 67);
        assert_eq!(slice_len(10, drain, TICK), 1);
    }

    #[test]
    fn a_zero_drain_tells_everyone_at_once() {
        assert_eq!(slice_len(5000, Duration::ZERO, TICK), 5000);
        assert_eq!(slice_len(0, Duration::ZERO, TICK), 1);
    }

    #[test]
    fn reconnect_delays_are_spread_over_a_second() {
        let drain = Duration::from_secs(5);
        let n = 10_000;
        let delays: std::collections::BTreeSet<u64> =
            (0..n).map(|i| reconnect_after_ms(i, n, drain)).collect();
        assert_eq!(delays.first(), Some(&100));
        assert_eq!(delays.last(), Some(&1099));
        assert_eq!(delays.len(), 1000);
        assert_eq!(reconnect_after_ms(0, 1, drain), 100);
    }
}
