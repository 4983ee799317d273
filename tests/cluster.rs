//! Cluster mode against real processes: each test starts its own
//! `redis-server` on a free port and two or three `roomcast serve --redis`
//! instances, then checks what users of the cluster see and what Redis
//! holds. Redis keys and channels follow ARCHITECTURE.md (prefix `rc`,
//! tenant-less users and rooms are scoped as `/name`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ServerEvent};
use serde_json::{Value, json};

const PREFIX: &str = "rc";
/// Short cluster timings for the reaper test: heartbeat every 500 ms, dead
/// after 1.5 s, reaper every 300 ms.
const FAST_HEARTBEAT: [&str; 6] = [
    "--redis-heartbeat-ms",
    "500",
    "--redis-heartbeat-ttl-ms",
    "1500",
    "--redis-reaper-ms",
    "300",
];
/// Heartbeat TTL plus one heartbeat interval, with those timings.
const REAP_BOUND: Duration = Duration::from_millis(2000);

async fn instance(redis: &Redis, id: &str, extra: &[&str]) -> Server {
    Server::clustered(redis, PREFIX, id, extra).await
}

/// Polls `check` until it holds or `within` passed.
async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready_status(server: &Server) -> u16 {
    http_get(&server.http("/ready")).await.0
}

async fn wait_ready(server: &Server, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status = ready_status(server).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/ready stayed {status}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last line of a redis-cli answer (the value of a NUMSUB, a count...).
fn last_line(out: &str) -> String {
    out.lines().last().unwrap_or("").trim().to_owned()
}

fn lines(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// Like `recv_matching`, with a longer wait.
async fn recv_within(
    client: &mut Client,
    within: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.try_recv(left).await {
            Some(ev) if pred(&ev) => return ev,
            Some(_) => {}
            None => panic!("no matching event within {within:?}"),
        }
    }
}

fn is_message(e: &Event) -> bool {
    matches!(e, ServerEvent::Message { .. })
}

fn direct_data(e: &Event) -> Option<(&str, Value, bool)> {
    match e {
        ServerEvent::Direct {
            from, data, queued, ..
        } => Some((from.as_ref(), data.to_value().ok()?, *queued)),
        _ => None,
    }
}

async fn presence_of(client: &mut Client, room: &str) -> Vec<String> {
    match client
        .request(ClientFrame::new("presence").room(room))
        .await
    {
        ServerEvent::Presence { users, count, .. } => {
            let mut users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
            users.sort();
            assert_eq!(count as usize, users.len());
            users
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn room_fan_out_crosses_instances_in_both_codecs() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect_with("alice", Codec::Json).await;
    let mut bob = b.connect_with("bob", Codec::MsgPack).await;
    alice.join("encounter:42").await;
    bob.join("encounter:42").await;
    let joined = alice
        .recv_matching(|e| matches!(e, ServerEvent::Joined { user, .. } if user == "bob"))
        .await;
    assert!(
        matches!(joined, ServerEvent::Joined { count: 2, .. }),
        "{joined:?}"
    );

    bob.publish("encounter:42", json!({"hp": 7})).await;
    let got = alice.recv_matching(is_message).await;
    assert!(
        matches!(&got, ServerEvent::Message { from, room, .. } if from == "bob" && room == "encounter:42")
    );
    assert_eq!(message_data(&got), Some(json!({"hp": 7})));

    // One sender's messages keep their order across instances.
    for i in 0..20 {
        alice.publish("encounter:42", json!(i)).await;
    }
    for i in 0..20 {
        let got = bob
            .recv_matching(|e| matches!(e, ServerEvent::Message { from, .. } if from == "alice"))
            .await;
        assert_eq!(message_data(&got), Some(json!(i)));
    }
    // Everyone got each message exactly once: the publisher's own instance
    // delivered it locally and dropped the copy that came back from Redis.
    for i in 0..20 {
        let got = alice
            .recv_matching(|e| matches!(e, ServerEvent::Message { from, .. } if from == "alice"))
            .await;
        assert_eq!(message_data(&got), Some(json!(i)));
    }
    let own = bob
        .recv_matching(|e| matches!(e, ServerEvent::Message { from, .. } if from == "bob"))
        .await;
    assert_eq!(message_data(&own), Some(json!({"hp": 7})));
    alice
        .expect_none(Duration::from_millis(500), is_message)
        .await;
    bob.expect_none(Duration::from_millis(100), is_message)
        .await;
}

#[tokio::test]
async fn direct_messages_reach_the_instances_holding_the_user() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let c = instance(&redis, "c", &[]).await;
    let mut alice = a.connect("alice").await;
    let mut bob_b = b.connect_with("bob", Codec::Json).await;
    let mut bob_c = c.connect_with("bob", Codec::MsgPack).await;
    let mut routes = lines(&redis.cli(&["HKEYS", "rc:routes:{/bob}"]));
    routes.sort();
    assert_eq!(routes, vec!["b", "c"]);

    alice.send_to("bob", json!({"roll": 20})).await;
    for bob in [&mut bob_b, &mut bob_c] {
        let got = bob.recv_matching(|e| direct_data(e).is_some()).await;
        assert_eq!(
            direct_data(&got),
            Some(("alice", json!({"roll": 20}), false))
        );
        bob.expect_none(Duration::from_millis(300), |e| direct_data(e).is_some())
            .await;
    }
    for i in 0..10 {
        alice.send_to("bob", json!(i)).await;
    }
    for i in 0..10 {
        let got = bob_b.recv_matching(|e| direct_data(e).is_some()).await;
        assert_eq!(direct_data(&got).map(|d| d.1), Some(json!(i)));
    }
    bob_b.send_to("alice", json!("hi")).await;
    let got = alice.recv_matching(|e| direct_data(e).is_some()).await;
    assert_eq!(direct_data(&got), Some(("bob", json!("hi"), false)));
    // Nothing was queued for a user who was online.
    assert_eq!(last_line(&redis.cli(&["LLEN", "rc:offline:{/bob}"])), "0");
}

#[tokio::test]
async fn offline_queue_filled_on_one_instance_drains_on_another() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect("alice").await;
    for i in 0..5 {
        alice.send_to("dave", json!({"n": i})).await;
    }
    assert_eq!(last_line(&redis.cli(&["LLEN", "rc:offline:{/dave}"])), "5");

    let mut dave = b.connect("dave").await;
    for i in 0..5 {
        let got = dave.recv_matching(|e| direct_data(e).is_some()).await;
        assert_eq!(
            direct_data(&got),
            Some(("alice", json!({"n": i}), true)),
            "message {i}"
        );
    }
    // Removed once written, and only then.
    eventually("queue emptied", Duration::from_secs(5), || {
        last_line(&redis.cli(&["LLEN", "rc:offline:{/dave}"])) == "0"
    })
    .await;
    alice.send_to("dave", json!("live")).await;
    let got = dave.recv_matching(|e| direct_data(e).is_some()).await;
    assert_eq!(direct_data(&got), Some(("alice", json!("live"), false)));
    drop(dave);

    // Back on the first instance: nothing is delivered twice.
    eventually("dave's route removed", Duration::from_secs(5), || {
        last_line(&redis.cli(&["HLEN", "rc:routes:{/dave}"])) == "0"
    })
    .await;
    let mut dave = a.connect("dave").await;
    dave.expect_none(Duration::from_millis(700), |e| direct_data(e).is_some())
        .await;
}

#[tokio::test]
async fn member_counts_and_presence_are_cluster_wide() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect("alice").await;
    let mut carol = a.connect("carol").await;
    let mut bob = b.connect("bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    carol.join("lobby").await;
    let joined = bob
        .recv_matching(|e| matches!(e, ServerEvent::Joined { user, .. } if user == "carol"))
        .await;
    assert!(
        matches!(joined, ServerEvent::Joined { count: 3, .. }),
        "{joined:?}"
    );
    assert_eq!(
        presence_of(&mut bob, "lobby").await,
        vec!["alice", "bob", "carol"]
    );
    assert_eq!(last_line(&redis.cli(&["HLEN", "rc:presence:/lobby"])), "3");
    // Per instance: a holds alice and carol, b holds bob.
    assert_eq!(
        lines(&redis.cli(&["SMEMBERS", "rc:instance-room:a:/lobby"])),
        vec!["/alice", "/carol"]
    );

    // The same user on two instances counts once.
    let mut alice2 = b.connect("alice").await;
    alice2.join("lobby").await;
    assert_eq!(presence_of(&mut carol, "lobby").await.len(), 3);
    // ... and members hear nothing: alice was already present.
    drop(alice2);
    carol
        .expect_none(Duration::from_millis(500), |e| {
            matches!(e, ServerEvent::Joined { user, .. } | ServerEvent::Left { user, .. } if user == "alice")
        })
        .await;

    bob.request(ClientFrame::new("leave").room("lobby")).await;
    let left = alice
        .recv_matching(|e| matches!(e, ServerEvent::Left { user, .. } if user == "bob"))
        .await;
    assert!(
        matches!(left, ServerEvent::Left { count: 2, .. }),
        "{left:?}"
    );
    drop(carol);
    let left = alice
        .recv_matching(|e| matches!(e, ServerEvent::Left { user, .. } if user == "carol"))
        .await;
    assert!(
        matches!(left, ServerEvent::Left { count: 1, .. }),
        "{left:?}"
    );
    assert_eq!(presence_of(&mut bob, "lobby").await, vec!["alice"]);
}

#[tokio::test]
async fn instances_subscribe_only_to_rooms_with_local_members() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let numsub = |ch: &str| last_line(&redis.cli(&["PUBSUB", "NUMSUB", ch]));
    let room_channels = || lines(&redis.cli(&["PUBSUB", "CHANNELS", "rc:room:*"]));
    assert_eq!(numsub("rc:global"), "2");
    assert_eq!(numsub("rc:instance:a"), "1");
    assert_eq!(numsub("rc:instance:b"), "1");
    assert!(room_channels().is_empty());

    let mut alice = a.connect("alice").await;
    alice.join("r1").await;
    assert_eq!(room_channels(), vec!["rc:room:/r1"]);
    assert_eq!(numsub("rc:room:/r1"), "1");

    let mut bob = b.connect("bob").await;
    bob.join("r1").await;
    assert_eq!(numsub("rc:room:/r1"), "2");
    bob.request(ClientFrame::new("leave").room("r1")).await;
    eventually("b unsubscribed after its last leave", WAIT, || {
        numsub("rc:room:/r1") == "1"
    })
    .await;
    // No pattern subscription over every room.
    assert_eq!(last_line(&redis.cli(&["PUBSUB", "NUMPAT"])), "0");
    drop(alice);
    eventually("a unsubscribed after its last member left", WAIT, || {
        room_channels().is_empty()
    })
    .await;
    drop(bob);
}

#[tokio::test]
async fn a_killed_instance_is_reaped_by_a_survivor() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &FAST_HEARTBEAT).await;
    let b = instance(&redis, "b", &FAST_HEARTBEAT).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    alice.join("encounter:1").await;
    bob.join("encounter:1").await;
    alice
        .recv_matching(|e| matches!(e, ServerEvent::Joined { user, count: 2, .. } if user == "bob"))
        .await;
    assert_eq!(lines(&redis.cli(&["HKEYS", "rc:routes:{/bob}"])), vec!["b"]);

    b.signal("KILL");
    let killed = Instant::now();
    let left = recv_within(&mut alice, REAP_BOUND + Duration::from_secs(3), |e| {
        matches!(e, ServerEvent::Left { .. })
    })
    .await;
    assert!(
        matches!(&left, ServerEvent::Left { user, count: 1, .. } if user == "bob"),
        "{left:?}"
    );
    assert!(killed.elapsed() <= REAP_BOUND + Duration::from_millis(800));
    assert_eq!(presence_of(&mut alice, "encounter:1").await, vec!["alice"]);
    eventually("b deregistered", Duration::from_secs(5), || {
        redis
            .cli(&["ZSCORE", "rc:instances", "b"])
            .trim()
            .is_empty()
    })
    .await;
    assert_eq!(last_line(&redis.cli(&["HLEN", "rc:routes:{/bob}"])), "0");
    assert_eq!(
        last_line(&redis.cli(&["EXISTS", "rc:instance-users:b"])),
        "0"
    );
    assert_eq!(
        last_line(&redis.cli(&["EXISTS", "rc:instance-rooms:b"])),
        "0"
    );

    // Bob's route is gone, so a message for him waits in his queue.
    alice.send_to("bob", json!("while you were out")).await;
    let mut bob = a.connect("bob").await;
    let got = bob.recv_matching(|e| direct_data(e).is_some()).await;
    assert_eq!(
        direct_data(&got),
        Some(("alice", json!("while you were out"), true))
    );
}

#[tokio::test]
async fn delivery_resumes_after_redis_restarts_empty() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    alice.join("room").await;
    bob.join("room").await;
    wait_ready(&a, 200, WAIT).await;

    redis.kill().await;
    wait_ready(&a, 503, WAIT).await;
    wait_ready(&b, 503, WAIT).await;
    // Local traffic keeps flowing; a message for an offline user is held.
    alice.publish("room", json!("during")).await;
    let got = alice.recv_matching(is_message).await;
    assert_eq!(message_data(&got), Some(json!("during")));
    alice.send_to("erin", json!("held")).await;

    let redis = Redis::start_on(port).await;
    wait_ready(&a, 200, Duration::from_secs(15)).await;
    wait_ready(&b, 200, Duration::from_secs(15)).await;
    // Subscriptions, routes and presence were re-asserted into the empty Redis.
    alice.publish("room", json!("after")).await;
    let got = bob
        .recv_matching(|e| message_data(e) == Some(json!("after")))
        .await;
    assert!(matches!(got, ServerEvent::Message { .. }));
    alice.send_to("bob", json!("dm")).await;
    let got = bob.recv_matching(|e| direct_data(e).is_some()).await;
    assert_eq!(direct_data(&got), Some(("alice", json!("dm"), false)));
    assert_eq!(presence_of(&mut bob, "room").await, vec!["alice", "bob"]);
    assert_eq!(
        last_line(&redis.cli(&["ZCARD", "rc:instances"])),
        "2",
        "both instances registered again"
    );
    // The held message went to Redis and reaches erin on the other instance.
    let mut erin = b.connect("erin").await;
    let got = erin.recv_matching(|e| direct_data(e).is_some()).await;
    assert_eq!(direct_data(&got), Some(("alice", json!("held"), true)));
}

#[tokio::test]
async fn no_queued_message_is_lost_across_a_redis_restart() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("roomcast-cluster-{}-{port}", std::process::id()));
    let mut redis = Redis::start_persistent_on(port, &dir).await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect("alice").await;
    alice.send_to("frank", json!(1)).await;
    alice.send_to("frank", json!(2)).await;

    redis.kill().await;
    wait_ready(&a, 503, WAIT).await;
    alice.send_to("frank", json!(3)).await;
    alice.send_to("frank", json!(4)).await;

    let _redis = Redis::start_persistent_on(port, &dir).await;
    wait_ready(&a, 200, Duration::from_secs(15)).await;
    wait_ready(&b, 200, Duration::from_secs(15)).await;
    let mut frank = b.connect("frank").await;
    for i in 1..=4 {
        let got = frank.recv_matching(|e| direct_data(e).is_some()).await;
        assert_eq!(direct_data(&got), Some(("alice", json!(i), true)));
    }
    frank
        .expect_none(Duration::from_millis(300), |e| direct_data(e).is_some())
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sigterm_drains_and_leaves_the_cluster() {
    let redis = Redis::start().await;
    let mut a = instance(&redis, "a", &["--drain-s", "1"]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    alice.join("table").await;
    bob.join("table").await;
    alice
        .recv_matching(|e| matches!(e, ServerEvent::Joined { user, .. } if user == "bob"))
        .await;
    assert_eq!(last_line(&redis.cli(&["EXISTS", "rc:heartbeat:a"])), "1");

    a.signal("TERM");
    alice
        .recv_matching(|e| matches!(e, ServerEvent::Reconnect { .. }))
        .await;
    let close = alice.closed().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1001);
    let left = bob
        .recv_matching(|e| matches!(e, ServerEvent::Left { .. }))
        .await;
    assert!(
        matches!(&left, ServerEvent::Left { user, count: 1, .. } if user == "alice"),
        "{left:?}"
    );
    let status = tokio::time::timeout(WAIT, a.child.wait())
        .await
        .expect("exited in time")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        redis
            .cli(&["ZSCORE", "rc:instances", "a"])
            .trim()
            .is_empty()
    );
    assert_eq!(last_line(&redis.cli(&["EXISTS", "rc:heartbeat:a"])), "0");
    assert_eq!(
        lines(&redis.cli(&["HKEYS", "rc:presence:/table"])),
        vec!["/bob"]
    );
    assert_eq!(
        last_line(&redis.cli(&["EXISTS", "rc:instance-users:a"])),
        "0"
    );
    assert_eq!(
        last_line(&redis.cli(&["EXISTS", "rc:instance-rooms:a"])),
        "0"
    );
}

#[tokio::test]
async fn a_lost_registration_is_reasserted_without_a_reconnect() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    alice.join("hall").await;
    bob.join("hall").await;
    // Redis loses every key and script while the connections stay up.
    redis.cli(&["FLUSHALL"]);
    redis.cli(&["SCRIPT", "FLUSH"]);
    // The next heartbeat (5 s) notices and each instance re-asserts itself.
    eventually("presence re-asserted", Duration::from_secs(8), || {
        last_line(&redis.cli(&["HLEN", "rc:presence:/hall"])) == "2"
    })
    .await;
    eventually("both registered", Duration::from_secs(2), || {
        last_line(&redis.cli(&["ZCARD", "rc:instances"])) == "2"
    })
    .await;
    assert_eq!(lines(&redis.cli(&["HKEYS", "rc:routes:{/bob}"])), vec!["b"]);
    alice.send_to("bob", json!("still here")).await;
    let got = bob.recv_matching(|e| direct_data(e).is_some()).await;
    assert_eq!(
        direct_data(&got),
        Some(("alice", json!("still here"), false))
    );
    // Nobody was announced as gone: Redis forgot them, they never left.
    bob.expect_none(Duration::from_millis(200), |e| {
        matches!(e, ServerEvent::Left { .. })
    })
    .await;
}

/// Sends `n` numbered direct messages from `from` to `user`, starting at `first`.
async fn send_numbered(from: &mut Client, user: &str, first: i64, n: i64) {
    for i in first..first + n {
        from.send_to(user, json!(i)).await;
    }
}

/// The next `n` direct messages' data and queued flags.
async fn directs(c: &mut Client, n: usize) -> Vec<(Value, bool)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let got = c.recv_matching(|e| direct_data(e).is_some()).await;
        let (_, data, queued) = direct_data(&got).expect("direct");
        out.push((data, queued));
    }
    out
}

fn live(range: std::ops::Range<i64>) -> Vec<(Value, bool)> {
    range.map(|i| (json!(i), false)).collect()
}

#[tokio::test]
async fn direct_messages_to_a_known_user_skip_the_send_script() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    send_numbered(&mut alice, "bob", 0, 20).await;
    assert_eq!(directs(&mut bob, 20).await, live(0..20));
    let (_, text) = http_get(&a.http("/metrics")).await;
    // The first one ran the script and taught the cache; the others were
    // one PUBLISH each.
    let series = |r: &str| {
        metric(
            &text,
            &format!("roomcast_redis_route_cache_total{{result=\"{r}\"}}"),
        )
    };
    assert_eq!(
        (series("miss"), series("hit"), series("stale")),
        (1.0, 19.0, 0.0)
    );

    // Off: every message runs the script.
    let c = instance(&redis, "c", &["--redis-route-cache", "0"]).await;
    let mut carol = c.connect("carol").await;
    send_numbered(&mut carol, "bob", 20, 3).await;
    assert_eq!(directs(&mut bob, 3).await, live(20..23));
    let hits = server_metric(&c, "roomcast_redis_route_cache_total{result=\"hit\"}").await;
    assert_eq!(hits, 0.0);
}

#[tokio::test]
async fn a_cached_route_learns_of_a_new_instance_of_the_user() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let c = instance(&redis, "c", &[]).await;
    let mut alice = a.connect("alice").await;
    let mut bob_b = b.connect("bob").await;
    send_numbered(&mut alice, "bob", 0, 2).await;
    assert_eq!(directs(&mut bob_b, 2).await, live(0..2));
    // A second connection on another instance: a knows only b until the
    // attach's `route_added` notice reaches it (through pub/sub, so a
    // message sent in that moment may still go to b alone). Without the
    // notice bob_c would never hear from alice.
    let mut bob_c = c.connect("bob").await;
    let mut learnt = false;
    for probe in 0..50 {
        alice.send_to("bob", json!({"probe": probe})).await;
        if let Some(ev) = bob_c.try_recv(Duration::from_millis(100)).await
            && direct_data(&ev).is_some()
        {
            learnt = true;
            break;
        }
    }
    assert!(learnt, "a never learnt of bob's route on c");
    send_numbered(&mut alice, "bob", 2, 3).await;
    for bob in [&mut bob_b, &mut bob_c] {
        let mut got = Vec::new();
        while got.len() < 3 {
            let ev = bob.recv_matching(|e| direct_data(e).is_some()).await;
            let (_, data, queued) = direct_data(&ev).expect("direct");
            if data.is_i64() {
                got.push((data, queued));
            }
        }
        assert_eq!(got, live(2..5));
    }
}

/// Messages sent through a cached route after the user left that instance
/// are routed again there (here: queued) in the order they were sent.
/// Before the receiving instance routed them again one at a time, each got
/// a task of its own and they could overtake one another.
#[tokio::test]
async fn messages_through_a_stale_route_keep_their_order() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect("alice").await;
    for round in 0..3 {
        let first = round * 100;
        let mut bob_b = b.connect("bob").await;
        send_numbered(&mut alice, "bob", first, 1).await;
        assert_eq!(directs(&mut bob_b, 1).await, live(first..first + 1));
        drop(bob_b);
        eventually("bob offline", Duration::from_secs(5), || {
            last_line(&redis.cli(&["HLEN", "rc:routes:{/bob}"])) == "0"
        })
        .await;
        send_numbered(&mut alice, "bob", first + 1, 30).await;
        eventually("all queued", Duration::from_secs(5), || {
            last_line(&redis.cli(&["LLEN", "rc:offline:{/bob}"])) == "30"
        })
        .await;
        let mut bob = a.connect("bob").await;
        let got: Vec<Value> = directs(&mut bob, 30)
            .await
            .into_iter()
            .map(|(data, _)| data)
            .collect();
        let want: Vec<Value> = (first + 1..first + 31).map(|i| json!(i)).collect();
        assert_eq!(got, want, "round {round}");
        drop(bob);
        eventually("bob offline again", Duration::from_secs(5), || {
            last_line(&redis.cli(&["HLEN", "rc:routes:{/bob}"])) == "0"
        })
        .await;
    }
}

#[tokio::test]
async fn a_stale_cached_route_loses_and_repeats_nothing() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect("alice").await;
    let bob_b = b.connect("bob").await;
    let mut bob_a = a.connect("bob").await;
    send_numbered(&mut alice, "bob", 0, 2).await;
    assert_eq!(directs(&mut bob_a, 2).await, live(0..2));
    // Bob leaves b; a still routes to b from its cache once: b must neither
    // queue it (a delivered it to bob there) nor send it back to a.
    drop(bob_b);
    eventually("bob's route on b removed", Duration::from_secs(5), || {
        lines(&redis.cli(&["HKEYS", "rc:routes:{/bob}"])) == ["a"]
    })
    .await;
    send_numbered(&mut alice, "bob", 2, 3).await;
    assert_eq!(directs(&mut bob_a, 3).await, live(2..5));
    bob_a
        .expect_none(Duration::from_millis(500), |e| direct_data(e).is_some())
        .await;
    assert_eq!(last_line(&redis.cli(&["LLEN", "rc:offline:{/bob}"])), "0");

    // Bob only on b again, then gone from it: the message routed from a's
    // cache to b is queued by b, not lost.
    let mut bob_b = b.connect("bob").await;
    drop(bob_a);
    eventually("bob only on b", Duration::from_secs(5), || {
        lines(&redis.cli(&["HKEYS", "rc:routes:{/bob}"])) == ["b"]
    })
    .await;
    send_numbered(&mut alice, "bob", 5, 2).await;
    assert_eq!(directs(&mut bob_b, 2).await, live(5..7));
    drop(bob_b);
    eventually("bob offline", Duration::from_secs(5), || {
        last_line(&redis.cli(&["HLEN", "rc:routes:{/bob}"])) == "0"
    })
    .await;
    send_numbered(&mut alice, "bob", 7, 2).await;
    // A send routed through a's stale cache is acked once it is published
    // to b, before b queues it: bob connecting in between would get it
    // live (once, and correctly so). Both are queued before he connects.
    eventually("both queued", Duration::from_secs(5), || {
        last_line(&redis.cli(&["LLEN", "rc:offline:{/bob}"])) == "2"
    })
    .await;
    let mut bob = a.connect("bob").await;
    assert_eq!(
        directs(&mut bob, 2).await,
        vec![(json!(7), true), (json!(8), true)]
    );
    send_numbered(&mut alice, "bob", 9, 1).await;
    assert_eq!(directs(&mut bob, 1).await, live(9..10));
}

#[tokio::test]
async fn a_cached_route_to_a_killed_instance_queues_the_message() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a", &[]).await;
    let b = instance(&redis, "b", &[]).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    send_numbered(&mut alice, "bob", 0, 2).await;
    assert_eq!(directs(&mut bob, 2).await, live(0..2));
    b.signal("KILL");
    eventually("b's channel gone", Duration::from_secs(5), || {
        last_line(&redis.cli(&["PUBSUB", "NUMSUB", "rc:instance:b"])) == "0"
    })
    .await;
    send_numbered(&mut alice, "bob", 2, 2).await;
    let mut bob = a.connect("bob").await;
    assert_eq!(
        directs(&mut bob, 2).await,
        vec![(json!(2), true), (json!(3), true)]
    );
    let stale = server_metric(&a, "roomcast_redis_route_cache_total{result=\"stale\"}").await;
    assert_eq!(stale, 1.0);
}
