//! The supervisor: notices connection loss and reconnects (fred reconnects
//! with backoff forever; this task decides what to redo), and runs the
//! resync that makes Redis hold everything this instance is responsible
//! for. `/ready` is false from a loss until a resync finished.
//!
//! The resync is idempotent and runs beside normal traffic: every piece it
//! writes goes through the same convergent paths as live operations
//! (subscriptions and presence converge on the registry; routes carry
//! epochs), so a join or leave racing it cannot be undone by it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, Error as RedisError, KeysInterface, Server};
use futures_util::StreamExt;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::{Shared, metric};

/// Delay before retrying a failed resync while connected.
const RETRY: Duration = Duration::from_millis(500);

/// How long an outage goes between two reminders in the log.
const REMIND_EVERY: Duration = Duration::from_secs(30);

/// fred's connection events, subscribed before the first connect.
pub struct Events {
    pub client_reconnect: Receiver<Server>,
    pub sub_reconnect: Receiver<Server>,
    pub client_error: Receiver<(RedisError, Option<Server>)>,
    pub sub_error: Receiver<(RedisError, Option<Server>)>,
}

/// What one event means for the supervisor.
enum Seen {
    Event,
    Closed,
}

fn seen<T>(r: Result<T, RecvError>) -> Seen {
    match r {
        // A lagged event receiver missed events: it still saw one.
        Ok(_) | Err(RecvError::Lagged(_)) => Seen::Event,
        Err(RecvError::Closed) => Seen::Closed,
    }
}

/// The error an error event carries, for the log (`None`: the client is
/// gone, which is no connection failure).
fn error_text(r: &Result<(RedisError, Option<Server>), RecvError>) -> Option<String> {
    match r {
        Ok((e, _)) => Some(e.to_string()),
        Err(RecvError::Lagged(n)) => Some(format!("{n} connection errors not seen")),
        Err(RecvError::Closed) => None,
    }
}

/// What the log says about reaching Redis: the first failure at once, at
/// WARN with the URL and the error; a reminder every [`REMIND_EVERY`] while
/// it lasts (fred retries from every 100 ms, and each attempt of both
/// clients fails: a line each would bury everything else); the recovery.
#[derive(Default)]
struct Health {
    /// Both connections were up at least once.
    connected_once: bool,
    down: Option<Outage>,
}

struct Outage {
    since: Instant,
    reported: Instant,
    failures: u64,
}

impl Health {
    fn failed(&mut self, url: &str, error: &str) {
        let now = Instant::now();
        let Some(o) = &mut self.down else {
            self.down = Some(Outage {
                since: now,
                reported: now,
                failures: 1,
            });
            if self.connected_once {
                tracing::warn!(%url, %error, "lost the connection to redis; serving local traffic only (not ready) while reconnecting");
            } else {
                tracing::warn!(%url, %error, "cannot connect to redis; serving local traffic only (not ready) while retrying");
            }
            return;
        };
        o.failures += 1;
        if now.duration_since(o.reported) >= REMIND_EVERY {
            o.reported = now;
            tracing::warn!(
                %url,
                %error,
                down_s = now.duration_since(o.since).as_secs(),
                failures = o.failures,
                "redis still unreachable; retrying"
            );
        } else {
            tracing::debug!(%url, %error, "redis connection attempt failed");
        }
    }

    /// Both connections are up again.
    fn connected(&mut self, url: &str) {
        match self.down.take() {
            Some(o) => tracing::info!(
                %url,
                down_ms = o.since.elapsed().as_millis() as u64,
                "redis reachable again; resyncing"
            ),
            None if self.connected_once => tracing::info!(%url, "redis reconnected; resyncing"),
            None => tracing::info!(%url, "connected to redis"),
        }
        self.connected_once = true;
    }
}

/// Watches fred's connection events and runs resyncs. The resync runs in
/// its own task so that events are handled as they happen: an error while
/// a resync runs stops Redis use at once (the resync then fails and is
/// retried after the next reconnect).
pub async fn supervise(shared: Arc<Shared>, mut ev: Events) {
    // Each client's latest event was a (re)connect, not an error.
    let (mut client_ok, mut sub_ok) = (false, false);
    let mut health = Health::default();
    let mut need = true;
    let mut retry_at = tokio::time::Instant::now();
    let mut running: Option<JoinHandle<Result<(), RedisError>>> = None;
    loop {
        if need
            && running.is_none()
            && client_ok
            && sub_ok
            && tokio::time::Instant::now() >= retry_at
            && shared.client.is_connected()
            && shared.sub.is_connected()
            && !shared.cancel.is_cancelled()
        {
            need = false;
            shared.dirty.store(false, Ordering::SeqCst);
            if !shared.up.swap(true, Ordering::SeqCst) {
                // After a loss, not ready until this resync finished.
                shared.synced.store(false, Ordering::SeqCst);
            }
            let task = shared.clone();
            running = Some(shared.tasks.spawn(async move { task.resync().await }));
        }
        let seen = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = async {
                match running.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            }, if running.is_some() => {
                running = None;
                match r {
                    Ok(Ok(())) => {
                        metric::ready(shared.is_ready());
                        need |= shared.dirty.load(Ordering::SeqCst);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cluster resync failed; retrying");
                        metric::error("resync");
                        need = true;
                        retry_at = tokio::time::Instant::now() + RETRY;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cluster resync task failed");
                        need = true;
                        retry_at = tokio::time::Instant::now() + RETRY;
                    }
                }
                continue;
            }
            r = ev.client_reconnect.recv() => {
                client_ok = true;
                if sub_ok {
                    health.connected(&shared.url);
                }
                seen(r)
            }
            r = ev.sub_reconnect.recv() => {
                sub_ok = true;
                if client_ok {
                    health.connected(&shared.url);
                }
                seen(r)
            }
            r = ev.client_error.recv() => {
                client_ok = false;
                if let Some(error) = error_text(&r) {
                    health.failed(&shared.url, &error);
                }
                seen(r)
            }
            r = ev.sub_error.recv() => {
                sub_ok = false;
                if let Some(error) = error_text(&r) {
                    health.failed(&shared.url, &error);
                }
                seen(r)
            }
            _ = shared.wake.notified() => {
                need |= shared.dirty.load(Ordering::SeqCst);
                continue;
            }
            _ = tokio::time::sleep(Duration::from_millis(250)), if need => continue,
        };
        match seen {
            // Lost, or reconnected (possibly to a Redis that restarted
            // empty): either way, stop using it until a resync.
            Seen::Event => {
                shared.lost();
                need = true;
            }
            Seen::Closed => return,
        }
    }
}

impl Shared {
    /// A connection dropped or reconnected: stop using Redis until the
    /// next resync, and forget what it held (it may have restarted empty).
    /// The log lines are [`Health`]'s.
    fn lost(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.synced.store(false, Ordering::SeqCst);
        metric::ready(false);
        self.interest.mark_unknown();
        self.presence.mark_unknown();
        // Route announcements may be missed while disconnected.
        self.route_cache.clear();
    }

    /// Re-asserts everything: scripts, subscriptions, registration,
    /// routes (delivering backlogs), presence, then the outbox.
    async fn resync(&self) -> Result<(), RedisError> {
        metric::resync();
        self.scripts.load_all(&self.client).await?;
        self.resubscribe().await?;
        let existed = self.beat().await?;
        // Our registration was gone: either Redis lost its data (nobody saw
        // our users leave) or a survivor reaped us (everybody saw them
        // leave, and must now see them join again).
        let reaped: i64 = self.client.del(self.keys.reaped(self.id())).await?;
        self.reassert_routes().await?;
        self.reconcile_presence(!existed && reaped == 0).await?;
        loop {
            self.flush_outbox().await?;
            if self.outbox.set_if_empty(&self.synced) {
                break;
            }
        }
        tracing::info!(instance = self.id(), "cluster bus synced");
        Ok(())
    }
}

/// Runs futures with at most `limit` in flight; results in completion order.
pub async fn bounded<F: Future>(jobs: impl Iterator<Item = F>, limit: usize) -> Vec<F::Output> {
    futures_util::stream::iter(jobs)
        .buffer_unordered(limit)
        .collect()
        .await
}
