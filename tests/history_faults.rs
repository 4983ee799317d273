//! W9 in small: W1-shaped traffic in rooms with history on two instances
//! while the test kills the instances' pub/sub connections
//! (`CLIENT KILL TYPE pubsub`, three times) and restarts redis-server
//! empty. Every member checks each message's offset against the last one
//! it holds; on `gap` it reads `history` since its position (a complete
//! answer fills the gap, an incomplete one is "told: reload"). Afterwards
//! every member's sequence must be contiguous up to its room's last offset
//! or have been told: nothing lost silently, nothing duplicated.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ReqId, ServerEvent};
use serde_json::json;

const ROOMS: usize = 8;
const MEMBERS_PER_ROOM: usize = 4;
/// Milliseconds between two publishes of one room's publisher.
const PUBLISH_EVERY_MS: u64 = 10;

#[derive(Debug, Default, Clone)]
struct Tally {
    received: u64,
    /// Offsets skipped without a `gap` before them.
    lost_silently: u64,
    duplicates: u64,
    gaps: u64,
    filled_by_history: u64,
    told_reload: u64,
    /// Offsets a reload made the member skip (it was told).
    skipped_after_told: u64,
}

struct Member {
    c: Client,
    room: String,
    epoch: String,
    last: u64,
    /// Offsets up to here may come again live after a `history` fill.
    filled_to: u64,
    tally: Tally,
}

static IDS: AtomicU64 = AtomicU64::new(1);

impl Member {
    async fn join(server: &Server, user: &str, room: &str) -> Member {
        let mut c = server.connect_with(user, Codec::Json).await;
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        c.send(&ClientFrame::new("join").room(room).id(id)).await;
        let ack = c
            .recv_matching(|e| matches!(e, ServerEvent::Ack { id: i, .. } if **i == ReqId::Num(id)))
            .await;
        let ServerEvent::Ack {
            offset: Some(last),
            epoch: Some(epoch),
            ..
        } = ack
        else {
            panic!("join ack without position: {ack:?}");
        };
        Member {
            c,
            room: room.to_owned(),
            epoch: epoch.to_string(),
            last,
            filled_to: 0,
            tally: Tally::default(),
        }
    }

    fn take(&mut self, offset: u64, epoch: &str) {
        if epoch != self.epoch {
            // A new epoch without a `gap` first: everything after the old
            // position is unaccounted for.
            self.tally.lost_silently += 1;
            self.epoch = epoch.to_owned();
            self.last = offset;
            self.tally.received += 1;
            return;
        }
        if offset <= self.last {
            if offset > self.filled_to {
                self.tally.duplicates += 1;
            }
            return;
        }
        if offset > self.last + 1 {
            self.tally.lost_silently += offset - self.last - 1;
        }
        self.last = offset;
        self.tally.received += 1;
    }

    /// A `gap`: read what is missing since the member's position.
    async fn on_gap(&mut self, epoch: &str, offset: u64) {
        self.tally.gaps += 1;
        let answer = self
            .c
            .request(
                ClientFrame::new("history")
                    .room(&self.room)
                    .since(self.last, &self.epoch),
            )
            .await;
        match answer {
            ServerEvent::History {
                messages, complete, ..
            } if complete => {
                for m in &messages {
                    if let ServerEvent::Message {
                        offset: Some(o),
                        epoch: Some(e),
                        ..
                    } = m
                    {
                        if *o > self.last {
                            self.tally.filled_by_history += 1;
                        }
                        self.take(*o, e);
                    }
                }
                self.filled_to = self.last;
            }
            _ => {
                // Told: reload the state, go on from the gap's position.
                self.tally.told_reload += 1;
                if epoch == self.epoch {
                    self.tally.skipped_after_told += offset.saturating_sub(self.last);
                    self.last = self.last.max(offset);
                } else {
                    self.epoch = epoch.to_owned();
                    self.last = offset;
                }
                self.filled_to = self.last;
            }
        }
    }

    async fn run(mut self, stop: Arc<AtomicBool>) -> Member {
        loop {
            let quiet_for = if stop.load(Ordering::Relaxed) {
                Duration::from_millis(1500)
            } else {
                Duration::from_millis(200)
            };
            let Some(ev) = self.c.try_recv(quiet_for).await else {
                if stop.load(Ordering::Relaxed) {
                    return self;
                }
                continue;
            };
            match ev {
                ServerEvent::Message {
                    offset: Some(o),
                    epoch: Some(e),
                    ..
                } => self.take(o, &e),
                ServerEvent::Gap { epoch, offset, .. } => self.on_gap(&epoch, offset).await,
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn pubsub_kills_and_a_redis_restart_lose_nothing_silently() {
    let port = free_port();
    let mut redis = Redis::start_on(port).await;
    let args = [
        "--redis",
        &redis.url(),
        "--history",
        "fault:*=5000/10m",
        "--redis-reconnect-max-ms",
        "200",
        "--rate-per-s",
        "10000",
        "--burst",
        "10000",
    ];
    let a = Server::start(&args).await;
    let b = Server::start(&args).await;
    let servers = [&a, &b];

    let stop = Arc::new(AtomicBool::new(false));
    let mut members = Vec::new();
    for r in 0..ROOMS {
        for m in 0..MEMBERS_PER_ROOM {
            let member =
                Member::join(servers[m % 2], &format!("m{r}-{m}"), &format!("fault:{r}")).await;
            members.push(tokio::spawn(member.run(stop.clone())));
        }
    }
    let mut publishers = Vec::new();
    for r in 0..ROOMS {
        let mut p = servers[r % 2].connect(&format!("p{r}")).await;
        let room = format!("fault:{r}");
        p.join(&room).await;
        let stop = stop.clone();
        publishers.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(PUBLISH_EVERY_MS));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let ev = p
                    .request(
                        ClientFrame::new("publish")
                            .room(&room)
                            .data(json!({ "n": ok })),
                    )
                    .await;
                match ev {
                    ServerEvent::Ack { .. } => ok += 1,
                    ServerEvent::Error { .. } => refused += 1,
                    other => panic!("publish: {other:?}"),
                }
            }
            (ok, refused)
        }));
    }

    // The faults.
    let mut kills = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let out = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        kills += out.trim().parse::<u64>().unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _redis = Redis::start_on(port).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut published, mut refused) = (0, 0);
    for p in publishers {
        let (ok, no) = p.await.expect("publisher");
        published += ok;
        refused += no;
    }
    // Every room's final position, read after the traffic stopped.
    let mut reader = a.connect("reader").await;
    let mut tops = Vec::new();
    for r in 0..ROOMS {
        let ev = reader
            .request(
                ClientFrame::new("history")
                    .room(&format!("fault:{r}"))
                    .limit(1),
            )
            .await;
        let ServerEvent::History { offset, epoch, .. } = ev else {
            panic!("history: {ev:?}");
        };
        tops.push((offset, epoch.to_string()));
    }
    let mut total = Tally::default();
    for m in members {
        let mut m = m.await.expect("member");
        let r: usize = m.room["fault:".len()..].parse().expect("room number");
        let (top, epoch) = &tops[r];
        if *epoch == m.epoch && m.last < *top {
            // The tail never arrived and nobody said so.
            m.tally.lost_silently += top - m.last;
        } else if *epoch != m.epoch {
            m.tally.lost_silently += 1;
        }
        let t = &m.tally;
        total.received += t.received;
        total.lost_silently += t.lost_silently;
        total.duplicates += t.duplicates;
        total.gaps += t.gaps;
        total.filled_by_history += t.filled_by_history;
        total.told_reload += t.told_reload;
        total.skipped_after_told += t.skipped_after_told;
    }
    let filled_a = server_metric(&a, "roomcast_history_filled_total").await;
    let filled_b = server_metric(&b, "roomcast_history_filled_total").await;
    let gaps_a = server_metric(&a, "roomcast_history_gaps_total").await;
    let gaps_b = server_metric(&b, "roomcast_history_gaps_total").await;
    eprintln!(
        "W9: {ROOMS} rooms x {MEMBERS_PER_ROOM} members on 2 instances; {kills} pub/sub connections killed \
         in 3 rounds, redis restarted empty once; published {published} (refused while Redis was down: {refused}); \
         {total:?}; instance fills: {filled_a}+{filled_b} messages; gap announcements: {gaps_a}+{gaps_b}"
    );
    assert!(
        kills >= 6,
        "the kills reached both instances' subscribers: {kills}"
    );
    assert!(published > 1000, "{published}");
    assert_eq!(total.lost_silently, 0, "{total:?}");
    assert_eq!(total.duplicates, 0, "{total:?}");
    assert!(total.received > published, "{total:?}");
}
