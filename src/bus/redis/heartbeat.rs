//! The heartbeat: every interval, `P:heartbeat:<id>` is set with this
//! instance's stats and a TTL, and `P:instances` scores the instance with
//! the Redis time, in one script. Other instances enumerate the sorted set
//! (never KEYS) and treat an old score without a heartbeat key as death.

use std::sync::Arc;

use super::{Shared, Ticker, metric};
use crate::node::now_ms;
use fred::prelude::Error as RedisError;
use serde_json::json;

pub async fn run(shared: Arc<Shared>) {
    let mut tick = Ticker::new(shared.tuning.heartbeat_interval);
    // Until the first resync the registration is the resync's job.
    while tick.next_ready(&shared).await {
        match shared.beat().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    "this instance's registration had expired or was reaped; re-registering"
                );
                shared.mark_dirty();
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                metric::error("heartbeat");
            }
        }
    }
}

impl Shared {
    /// Writes the heartbeat; true when the previous one was still there.
    pub(super) async fn beat(&self) -> Result<bool, RedisError> {
        let stats = json!({
            "instance": self.id(),
            "version": env!("CARGO_PKG_VERSION"),
            "started_at_ms": now_ms().saturating_sub(self.started.elapsed().as_millis() as u64),
            "uptime_s": self.started.elapsed().as_secs(),
            "connections": self.hub.conn_count(),
            "rooms": self.hub.room_count(),
            "offline_depth": self.outbox.len(),
        });
        let existed: i64 = self
            .scripts
            .heartbeat
            .run(
                &self.client,
                vec![self.keys.heartbeat(self.id()), self.keys.instances()],
                vec![
                    self.id().to_owned(),
                    stats.to_string(),
                    self.tuning.heartbeat_ttl.as_millis().to_string(),
                ],
            )
            .await?;
        Ok(existed == 1)
    }
}
