//! Room history and recovery, standalone and with two instances on a real
//! redis-server: offsets and epochs on messages, recovery on rejoin (the
//! missed messages, in order, before the ack), `recovered: false` beyond
//! the history's size or TTL and after Redis restarted empty, the
//! `history` op, and a race of rejoins against continuous publishing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ReqId, ServerEvent};
use serde_json::json;

/// `race:*` keeps enough that a rejoin never falls outside it: the race
/// test checks the seam between replay and live messages, not overflow
/// (publishers run as fast as their acks come back).
const RULES: &str = "game:*=100/10m,small:*=10/10m,brief:*=100/1s,race:*=100000/10m";

/// Offset and epoch of a `message` event.
fn pos(ev: &Event) -> Option<(u64, String)> {
    match ev {
        ServerEvent::Message {
            offset: Some(o),
            epoch: Some(e),
            ..
        } => Some((*o, e.to_string())),
        _ => None,
    }
}

/// What a join answered: the messages replayed before the ack, and the ack's
/// offset, epoch and `recovered`.
#[derive(Debug)]
struct Joined {
    replayed: Vec<(u64, String)>,
    offset: u64,
    epoch: String,
    recovered: Option<bool>,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000_000);

/// Joins `room` (with `since` when given) and reads, in order, every event
/// up to the join's ack; messages of the room before it are the replay.
async fn join(c: &mut Client, room: &str, since: Option<(u64, &str)>) -> Joined {
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut frame = ClientFrame::new("join").room(room).id(id);
    if let Some((o, e)) = since {
        frame = frame.since(o, e);
    }
    c.send(&frame).await;
    let mut replayed = Vec::new();
    loop {
        let ev = c.recv().await;
        match &ev {
            ServerEvent::Ack {
                id: got,
                offset,
                epoch,
                recovered,
            } if **got == ReqId::Num(id) => {
                return Joined {
                    replayed,
                    offset: offset.expect("history join ack has offset"),
                    epoch: epoch
                        .as_ref()
                        .expect("history join ack has epoch")
                        .to_string(),
                    recovered: *recovered,
                };
            }
            ServerEvent::Error { .. } => panic!("join {room}: {ev:?}"),
            ServerEvent::Message { room: r, .. } if r == room => {
                replayed.push(pos(&ev).expect("history message has offset and epoch"));
            }
            _ => {}
        }
    }
}

/// Publishes `n` numbered messages and waits for each ack.
async fn publish_n(c: &mut Client, room: &str, from: u64, n: u64) {
    for i in from..from + n {
        c.publish(room, json!({ "n": i })).await;
    }
}

/// Reads `n` messages of `room`, in order, and returns their positions.
async fn recv_n(c: &mut Client, room: &str, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = c
            .recv_matching(|e| matches!(e, ServerEvent::Message { room: r, .. } if r == room))
            .await;
        out.push(pos(&ev).expect("history message has offset and epoch"));
    }
    out
}

fn offsets(v: &[(u64, String)]) -> Vec<u64> {
    v.iter().map(|(o, _)| *o).collect()
}

async fn history(c: &mut Client, frame: ClientFrame) -> (Vec<u64>, u64, String, bool) {
    match c.request(frame).await {
        ServerEvent::History {
            messages,
            offset,
            epoch,
            complete,
            ..
        } => (
            messages.iter().map(|m| pos(m).expect("offset").0).collect(),
            offset,
            epoch.to_string(),
            complete,
        ),
        other => panic!("history: {other:?}"),
    }
}

/// The drop-publish-rejoin scenario on any pair of servers: `a` for the
/// member, `b` for the publisher, `c` where the member comes back.
async fn drop_and_recover(a: &Server, b: &Server, back: &Server, codec: Codec) {
    let room = "game:1";
    let mut bob = b.connect("bob").await;
    let first = join(&mut bob, room, None).await;
    let mut alice = a.connect_with("alice", codec).await;
    let j = join(&mut alice, room, None).await;
    assert_eq!(j.recovered, None);
    assert!(j.replayed.is_empty());
    assert_eq!(j.epoch, first.epoch);
    let start = j.offset;
    publish_n(&mut bob, room, 0, 5).await;
    let got = recv_n(&mut alice, room, 5).await;
    assert_eq!(offsets(&got), (start + 1..=start + 5).collect::<Vec<_>>());
    let (last, epoch) = got.last().cloned().expect("five");
    drop(alice);
    publish_n(&mut bob, room, 5, 50).await;
    let mut alice = back.connect_with("alice", codec).await;
    let j = join(&mut alice, room, Some((last, &epoch))).await;
    assert_eq!(j.recovered, Some(true), "{j:?}");
    assert_eq!(
        offsets(&j.replayed),
        (last + 1..=last + 50).collect::<Vec<_>>()
    );
    assert!(j.replayed.iter().all(|(_, e)| *e == epoch));
    assert_eq!(j.offset, last + 50);
    assert_eq!(j.epoch, epoch);
    // Live messages follow, without a duplicate.
    publish_n(&mut bob, room, 55, 1).await;
    let next = recv_n(&mut alice, room, 1).await;
    assert_eq!(offsets(&next), vec![last + 51]);
    alice
        .expect_none(Duration::from_millis(200), |e| {
            matches!(e, ServerEvent::Message { .. })
        })
        .await;
}

#[tokio::test]
async fn standalone_rejoin_gets_the_50_missed_messages_in_order() {
    let s = Server::start(&["--history", RULES]).await;
    drop_and_recover(&s, &s, &s, Codec::MsgPack).await;
}

#[tokio::test]
async fn cluster_rejoin_on_the_other_instance_gets_the_50_missed_messages() {
    let redis = Redis::start().await;
    let a = Server::start(&["--redis", &redis.url(), "--history", RULES]).await;
    let b = Server::start(&["--redis", &redis.url(), "--history", RULES]).await;
    // The member was on A, the publisher is on B, the member comes back on B.
    drop_and_recover(&a, &b, &b, Codec::Json).await;
}

/// Beyond the size or the TTL the client is told, with the current position.
async fn not_recovered_beyond_size_and_ttl(s: &Server) {
    let mut bob = s.connect("bob").await;
    join(&mut bob, "small:1", None).await;
    let mut alice = s.connect("alice").await;
    let j = join(&mut alice, "small:1", None).await;
    drop(alice);
    publish_n(&mut bob, "small:1", 0, 20).await;
    let mut alice = s.connect("alice").await;
    let back = join(&mut alice, "small:1", Some((j.offset, &j.epoch))).await;
    assert_eq!(back.recovered, Some(false), "{back:?}");
    assert!(back.replayed.is_empty(), "{back:?}");
    assert_eq!(back.offset, j.offset + 20);
    // Within the size it still recovers.
    let inside = join(
        &mut s.connect("carol").await,
        "small:1",
        Some((j.offset + 12, &j.epoch)),
    )
    .await;
    assert_eq!(inside.recovered, Some(true));
    assert_eq!(
        offsets(&inside.replayed),
        (j.offset + 13..=j.offset + 20).collect::<Vec<_>>()
    );

    // TTL: 1 s.
    join(&mut bob, "brief:1", None).await;
    let mut dave = s.connect("dave").await;
    let j = join(&mut dave, "brief:1", None).await;
    drop(dave);
    publish_n(&mut bob, "brief:1", 0, 3).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let back = join(
        &mut s.connect("dave").await,
        "brief:1",
        Some((j.offset, &j.epoch)),
    )
    .await;
    assert_eq!(back.recovered, Some(false), "{back:?}");
    assert_eq!(back.offset, j.offset + 3);
    // Nothing missed since: recovered, with nothing to replay.
    let same = join(
        &mut s.connect("erin").await,
        "brief:1",
        Some((back.offset, &back.epoch)),
    )
    .await;
    assert_eq!(same.recovered, Some(true));
    assert!(same.replayed.is_empty());
    // Another epoch: not recovered.
    let other = join(
        &mut s.connect("fred").await,
        "game:9",
        Some((0, "not-an-epoch")),
    )
    .await;
    assert_eq!(other.recovered, Some(false));
}

#[tokio::test]
async fn standalone_beyond_size_or_ttl_is_not_recovered() {
    let s = Server::start(&["--history", RULES]).await;
    not_recovered_beyond_size_and_ttl(&s).await;
}

#[tokio::test]
async fn cluster_beyond_size_or_ttl_is_not_recovered() {
    let redis = Redis::start().await;
    let s = Server::start(&["--redis", &redis.url(), "--history", RULES]).await;
    not_recovered_beyond_size_and_ttl(&s).await;
}

/// The `history` op: latest N, after an offset, completeness, errors, and
/// rooms without history carry no offsets.
async fn history_op(s: &Server) {
    let mut bob = s.connect("bob").await;
    let j = join(&mut bob, "small:2", None).await;
    publish_n(&mut bob, "small:2", 0, 15).await;
    let mut reader = s.connect("reader").await;
    let (offs, top, epoch, complete) = history(
        &mut reader,
        ClientFrame::new("history").room("small:2").limit(5),
    )
    .await;
    assert_eq!(offs, (11..=15).map(|o| o + j.offset).collect::<Vec<_>>());
    assert_eq!((top, complete), (j.offset + 15, true));
    let (offs, _, _, complete) = history(
        &mut reader,
        ClientFrame::new("history")
            .room("small:2")
            .since(j.offset + 12, &epoch),
    )
    .await;
    assert_eq!(offs, vec![j.offset + 13, j.offset + 14, j.offset + 15]);
    assert!(complete);
    // Offset 1 fell out of the 10 kept: incomplete.
    let (offs, _, _, complete) = history(
        &mut reader,
        ClientFrame::new("history")
            .room("small:2")
            .since(j.offset, &epoch),
    )
    .await;
    assert_eq!(offs.len(), 10);
    assert!(!complete);
    let (offs, _, _, complete) = history(
        &mut reader,
        ClientFrame::new("history")
            .room("small:2")
            .since(3, "other"),
    )
    .await;
    assert!(offs.is_empty() && !complete);
    for bad in [
        ClientFrame::new("history").room("small:2"),
        ClientFrame::new("history").room("small:2").limit(0),
        ClientFrame::new("history").room("lobby").limit(3),
        ClientFrame::new("history")
            .room("small:2")
            .limit(3)
            .since(1, "x"),
    ] {
        let ev = reader.request(bad).await;
        assert!(
            matches!(
                ev,
                ServerEvent::Error {
                    code: roomcast::protocol::ErrorCode::BadRequest,
                    ..
                }
            ),
            "{ev:?}"
        );
    }
    // A room without history: no offset, no epoch, a plain ack.
    reader.join("lobby").await;
    bob.join("lobby").await;
    bob.publish("lobby", json!(1)).await;
    let ev = reader
        .recv_matching(|e| matches!(e, ServerEvent::Message { room, .. } if room == "lobby"))
        .await;
    assert!(
        matches!(
            ev,
            ServerEvent::Message {
                offset: None,
                epoch: None,
                ..
            }
        ),
        "{ev:?}"
    );
}

#[tokio::test]
async fn standalone_history_op() {
    let s = Server::start(&["--history", RULES]).await;
    history_op(&s).await;
}

#[tokio::test]
async fn cluster_history_op() {
    let redis = Redis::start().await;
    let s = Server::start(&["--redis", &redis.url(), "--history", RULES]).await;
    history_op(&s).await;
}

/// Waits until the server reports ready again.
async fn wait_ready(s: &Server) {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let (status, _) = http_get(&s.http("/ready")).await;
        if status == 200 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_restarted_empty_changes_the_epoch() {
    let port = free_port();
    let mut redis = Redis::start_on(port).await;
    let args = [
        "--redis",
        &redis.url(),
        "--history",
        RULES,
        "--redis-reconnect-max-ms",
        "200",
    ];
    let a = Server::start(&args).await;
    let b = Server::start(&args).await;
    let mut bob = b.connect("bob").await;
    join(&mut bob, "game:2", None).await;
    let mut stay = a.connect("stay").await;
    join(&mut stay, "game:2", None).await;
    let mut alice = a.connect("alice").await;
    join(&mut alice, "game:2", None).await;
    publish_n(&mut bob, "game:2", 0, 3).await;
    let seen = recv_n(&mut alice, "game:2", 3).await;
    recv_n(&mut stay, "game:2", 3).await;
    let (last, old_epoch) = seen.last().cloned().expect("three");
    drop(alice);

    redis.kill().await;
    let _redis = Redis::start_on(port).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    publish_n(&mut bob, "game:2", 3, 2).await;

    // The member that stayed is told, then gets the new epoch's messages.
    let gap = stay
        .recv_matching(|e| matches!(e, ServerEvent::Gap { .. }))
        .await;
    let ServerEvent::Gap {
        epoch: new_epoch, ..
    } = &gap
    else {
        unreachable!()
    };
    assert_ne!(**new_epoch, *old_epoch);
    let after = recv_n(&mut stay, "game:2", 2).await;
    assert!(after.iter().all(|(_, e)| *e == **new_epoch), "{after:?}");
    assert_eq!(offsets(&after), vec![1, 2]);

    let mut alice = b.connect("alice").await;
    let back = join(&mut alice, "game:2", Some((last, &old_epoch))).await;
    assert_eq!(back.recovered, Some(false), "{back:?}");
    assert!(back.replayed.is_empty());
    assert_ne!(back.epoch, old_epoch);
    assert_eq!(back.offset, 2);
}

/// Two publishers (one per instance) publish without pause while four
/// members drop and rejoin with their position, alternating instances.
/// Every member's offsets, across its rejoins, are 1, 2, 3, ... with no
/// duplicate and no hole, and each ends at the room's last offset.
async fn race(a: &Server, b: &Server) {
    let room = "race:1";
    let servers = [a, b];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let mut p = s.connect(&format!("pub{i}")).await;
        join(&mut p, room, None).await;
        let stop = stop.clone();
        publishers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                p.publish(room, json!({ "p": i, "n": n })).await;
                n += 1;
            }
            (p, n)
        }));
    }
    let mut members = Vec::new();
    for m in 0..4usize {
        let servers = [a.url(""), b.url("")];
        let stop = stop.clone();
        members.push(tokio::spawn(async move {
            let user = format!("member{m}");
            let connect = |k: usize| {
                let url = format!("{}?token={}", servers[k % 2], token(&user));
                async move { Client::connect(&url, Codec::Json).await.expect("connect") }
            };
            let mut seen: Vec<u64> = Vec::new();
            let mut epoch = String::new();
            let mut c = connect(m).await;
            let j = join(&mut c, room, None).await;
            epoch.clone_from(&j.epoch);
            let mut last = j.offset;
            let first = j.offset;
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Read live messages for a while, then drop and rejoin.
                let until =
                    tokio::time::Instant::now() + Duration::from_millis(150 + 37 * m as u64);
                while let Some(ev) = c
                    .try_recv(until.saturating_duration_since(tokio::time::Instant::now()))
                    .await
                {
                    if let Some((o, e)) = pos(&ev) {
                        assert_eq!(e, epoch);
                        seen.push(o);
                        last = o;
                    }
                }
                drop(c);
                tokio::time::sleep(Duration::from_millis(20)).await;
                round += 1;
                c = connect(m + round).await;
                let j = join(&mut c, room, Some((last, &epoch))).await;
                assert_eq!(j.recovered, Some(true), "{user}: {j:?}");
                seen.extend(offsets(&j.replayed));
                if let Some(&o) = seen.last() {
                    last = o;
                }
                assert_eq!(j.offset, last, "{user}: ack after the replay");
            }
            (user, first, seen, c, last)
        }));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut published = 0;
    for p in publishers {
        let (_c, n) = p.await.expect("publisher");
        published += n;
    }
    assert!(published > 100, "only {published} published");
    let mut counts = HashMap::new();
    for m in members {
        let (user, first, mut seen, mut c, mut last) = m.await.expect("member");
        // Drain what is still in flight.
        while let Some(ev) = c.try_recv(Duration::from_millis(500)).await {
            if let Some((o, _)) = pos(&ev) {
                seen.push(o);
                last = o;
            }
        }
        let want: Vec<u64> = (first + 1..=last).collect();
        assert_eq!(seen, want, "{user}: offsets not contiguous or duplicated");
        assert_eq!(
            last, published,
            "{user} did not reach the room's last offset"
        );
        counts.insert(user, seen.len());
    }
    let top = counts.values().max().copied().unwrap_or(0);
    eprintln!("race: {published} published, per member {counts:?}");
    assert!(top > 0);
}

#[tokio::test]
async fn standalone_race_of_rejoins_and_publishes() {
    let s = Server::start(&[
        "--history",
        RULES,
        "--rate-per-s",
        "10000",
        "--burst",
        "10000",
    ])
    .await;
    race(&s, &s).await;
}

#[tokio::test]
async fn cluster_race_of_rejoins_and_publishes() {
    let redis = Redis::start().await;
    let args = [
        "--redis",
        &redis.url(),
        "--history",
        RULES,
        "--rate-per-s",
        "10000",
        "--burst",
        "10000",
    ];
    let a = Server::start(&args).await;
    let b = Server::start(&args).await;
    race(&a, &b).await;
}
