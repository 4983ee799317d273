//! `--admin`: one administrator watching the run. It connects to the first
//! instance with a role-`admin` token, joins the stats channel and reads
//! the `stats` events while the workload runs, so a run shows what an
//! admin watching costs the servers. The events read are reported as
//! `detail.admin_stats_events`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::engine::Target;

/// The admin connection's task and the `stats` events it read.
pub struct Watcher {
    pub events: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Stops watching; the number of `stats` events read.
    pub fn stop(self) -> u64 {
        self.task.abort();
        self.events.load(Ordering::Relaxed)
    }
}

fn admin_token(secret: &str) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        roles: [&'a str; 1],
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 24 * 3600;
    let claims = Claims {
        sub: "loadgen-admin",
        exp,
        roles: ["admin"],
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )?)
}

/// Connects, joins the stats channel (waiting for its ack) and keeps
/// reading in a task of its own.
pub async fn watch(target: &Target, secret: &str) -> anyhow::Result<Watcher> {
    let stream = TcpStream::connect(target.addr).await?;
    let request = format!("{}?token={}", target.url, admin_token(secret)?).into_client_request()?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .context("admin websocket upgrade")?;
    ws.send(Message::text(
        r#"{"op":"join","id":1,"room":"$admin:stats"}"#,
    ))
    .await?;
    let joined = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                if t.contains(r#""ev":"ack""#) {
                    return Ok(());
                }
                if t.contains(r#""ev":"error""#) {
                    bail!("the stats channel refused the admin: {t}");
                }
            }
        }
        bail!("the admin connection closed")
    })
    .await;
    joined.context("no answer to the admin's join")??;
    let events = Arc::new(AtomicU64::new(0));
    let counted = events.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg
                && t.starts_with(r#"{"ev":"stats""#)
            {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(Watcher { events, task })
}
