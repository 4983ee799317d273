//! Game-tick delivery: a write delay holds room messages back at most its
//! N ms and never a direct message, an answer or a close; a latest-wins
//! message replaces its unsent predecessor of the same room and key and
//! an unkeyed one never does, in both codecs; a member that stops reading
//! in a room where every message is keyed is not closed as a slow
//! consumer and gets the latest state per key when it reads again.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ServerEvent};
use serde_json::{Value, json};

/// A client that asked for `batch` frames.
async fn batch_client(server: &Server, user: &str, codec: Codec) -> Client {
    let url = server.url(&format!("?token={}&batch=1", token(user)));
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        codec.subprotocol().parse().expect("header"),
    );
    Client::connect_request(req, codec).await.expect("connect")
}

async fn publish_keyed(c: &mut Client, room: &str, key: Option<&str>, data: Value) {
    let mut frame = ClientFrame::new("publish").room(room).data(data);
    if let Some(k) = key {
        frame = frame.key(k);
    }
    let ev = c.request(frame).await;
    assert!(matches!(ev, ServerEvent::Ack { .. }), "publish: {ev:?}");
}

/// `data` and `key` of the next `message` event.
async fn next_message(c: &mut Client) -> (Value, Option<String>) {
    let ev = c
        .recv_matching(|e| matches!(e, ServerEvent::Message { .. }))
        .await;
    let ServerEvent::Message { data, key, .. } = &ev else {
        unreachable!()
    };
    (
        data.to_value().expect("data"),
        key.as_deref().map(str::to_owned),
    )
}

#[tokio::test]
async fn a_write_delay_holds_room_messages_at_most_its_ms_and_writes_them_in_one_batch() {
    let server = Server::start(&["--write-delay-ms", "300"]).await;
    let mut listener = batch_client(&server, "listener", Codec::Json).await;
    listener.join("room").await;
    let mut publisher = server.connect("publisher").await;
    publisher.join("room").await;
    // The publisher's `joined` is held too: let it go out first.
    listener
        .recv_matching(|e| matches!(e, ServerEvent::Joined { user, .. } if user == "publisher"))
        .await;
    let batches = listener.batches;
    let start = Instant::now();
    for i in 0..5 {
        publish_keyed(&mut publisher, "room", None, json!(i)).await;
    }
    for i in 0..5 {
        assert_eq!(next_message(&mut listener).await.0, json!(i));
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "held for {waited:?}, the delay is 300 ms"
    );
    assert!(
        waited < Duration::from_millis(300 + 400),
        "held for {waited:?}, more than the delay"
    );
    assert_eq!(
        listener.batches,
        batches + 1,
        "five held messages, one batch frame"
    );
}

#[tokio::test]
async fn the_delay_of_a_room_pattern_applies_only_to_its_rooms() {
    let server = Server::start(&["--write-delay", "game:*=400"]).await;
    let mut listener = server.connect("listener").await;
    listener.join("game:1").await;
    listener.join("chat").await;
    let mut publisher = server.connect("publisher").await;
    publisher.join("game:1").await;
    publisher.join("chat").await;

    let start = Instant::now();
    publish_keyed(&mut publisher, "chat", None, json!("now")).await;
    assert_eq!(next_message(&mut listener).await.0, json!("now"));
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "chat is not held"
    );

    let start = Instant::now();
    publish_keyed(&mut publisher, "game:1", None, json!("tick")).await;
    assert_eq!(next_message(&mut listener).await.0, json!("tick"));
    assert!(
        start.elapsed() >= Duration::from_millis(350),
        "game:1 is held: {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn direct_messages_and_answers_are_never_held_and_take_the_held_ones_along() {
    let server = Server::start(&["--write-delay-ms", "1000"]).await;
    let mut listener = server.connect("listener").await;
    listener.join("room").await;
    let mut publisher = server.connect("publisher").await;
    publisher.join("room").await;
    publish_keyed(&mut publisher, "room", None, json!("held")).await;

    // A direct message goes out at once, behind the held room message.
    let start = Instant::now();
    publisher.send_to("listener", json!("dm")).await;
    let mut held_first = false;
    loop {
        match listener.recv().await {
            ServerEvent::Direct { data, .. } => {
                assert_eq!(data.to_value().ok(), Some(json!("dm")));
                break;
            }
            ev @ ServerEvent::Message { .. } => {
                assert_eq!(message_data(&ev), Some(json!("held")));
                held_first = true;
            }
            _ => {}
        }
    }
    assert!(
        held_first,
        "the held message goes out before the direct one"
    );
    assert!(start.elapsed() < Duration::from_millis(500), "not held");

    // An ack is not held either (the listener's own request).
    publish_keyed(&mut publisher, "room", None, json!("held 2")).await;
    let start = Instant::now();
    let pong = listener.request(ClientFrame::new("ping")).await;
    assert!(matches!(pong, ServerEvent::Pong { .. }), "{pong:?}");
    assert!(start.elapsed() < Duration::from_millis(500), "not held");
    assert_eq!(next_message(&mut listener).await.0, json!("held 2"));
}

#[tokio::test]
async fn a_close_is_not_held_behind_room_messages() {
    let server = Server::start(&["--write-delay-ms", "1000"]).await;
    let mut listener = server.connect("listener").await;
    listener.join("room").await;
    let mut publisher = server.connect("publisher").await;
    publisher.join("room").await;
    publish_keyed(&mut publisher, "room", None, json!("held")).await;
    let start = Instant::now();
    // A masked frame with a reserved opcode: the server closes with 1002.
    use futures_util::SinkExt;
    let bad = tokio_tungstenite::tungstenite::Message::Frame(
        tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            vec![1u8],
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Reserved(3),
            ),
            true,
        ),
    );
    let _ = listener.ws.send(bad).await;
    let close = listener.closed().await;
    assert!(start.elapsed() < Duration::from_millis(700), "close held");
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1002));
}

async fn keyed_replacement(codec: Codec) {
    let server = Server::start(&["--write-delay-ms", "400"]).await;
    let mut listener = server.connect_with("listener", codec).await;
    listener.join("game").await;
    let mut publisher = server.connect("publisher").await;
    publisher.join("game").await;
    let before = server_metric(&server, "roomcast_keyed_replaced_total").await;
    // All five are still held for the listener when the next one comes.
    publish_keyed(&mut publisher, "game", Some("pos:a"), json!("a1")).await;
    publish_keyed(&mut publisher, "game", None, json!("u1")).await;
    publish_keyed(&mut publisher, "game", Some("pos:a"), json!("a2")).await;
    publish_keyed(&mut publisher, "game", Some("pos:b"), json!("b1")).await;
    publish_keyed(&mut publisher, "game", None, json!("u1")).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_message(&mut listener).await);
    }
    let want = vec![
        (json!("u1"), None),
        (json!("a2"), Some("pos:a".to_owned())),
        (json!("b1"), Some("pos:b".to_owned())),
        (json!("u1"), None),
    ];
    assert_eq!(got, want, "{codec:?}");
    listener
        .expect_none(Duration::from_millis(600), |e| {
            matches!(e, ServerEvent::Message { .. })
        })
        .await;
    let after = server_metric(&server, "roomcast_keyed_replaced_total").await;
    assert!(after - before >= 1.0, "{before} -> {after}");
}

#[tokio::test]
async fn a_keyed_message_replaces_its_unsent_predecessor_and_an_unkeyed_one_never_does_json() {
    keyed_replacement(Codec::Json).await;
}

#[tokio::test]
async fn a_keyed_message_replaces_its_unsent_predecessor_and_an_unkeyed_one_never_does_msgpack() {
    keyed_replacement(Codec::MsgPack).await;
}

#[tokio::test]
async fn a_bad_key_is_refused() {
    let server = Server::start(&[]).await;
    let mut c = server.connect("c").await;
    c.join("game").await;
    for key in [String::new(), "k".repeat(129)] {
        let ev = c
            .request(
                ClientFrame::new("publish")
                    .room("game")
                    .data(json!(1))
                    .key(&key),
            )
            .await;
        assert!(
            matches!(&ev, ServerEvent::Error { code, .. } if code.as_str() == "bad_request"),
            "{ev:?}"
        );
    }
}

/// Every text frame in `bytes` as JSON (control frames skipped); what is
/// left of an incomplete frame stays in `bytes`.
fn take_events(bytes: &mut Vec<u8>) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some((op, payload, used)) = first_frame(bytes) {
        bytes.drain(..used);
        if op == 0x1 {
            out.push(serde_json::from_slice(&payload).expect("json"));
        }
    }
    out
}

#[tokio::test]
async fn a_member_that_stops_reading_in_a_keyed_room_is_caught_up_with_the_latest_positions() {
    const PLAYERS: usize = 5;
    const TICKS: usize = 100;
    // A queue that five seconds of unkeyed messages would overflow many
    // times over: 500 messages of 8 KB each against 32 slots.
    let server = Server::start(&["--outbound-queue", "32", "--slow-consumer", "close"]).await;
    let mut stalled = RawWs::open(&server.addr, "stalled", Some(4096), &[]).await;
    assert_eq!(stalled.next_event().await["ev"], "welcome");
    stalled
        .send(&client_frame(
            true,
            0x1,
            br#"{"op":"join","room":"game:1","id":1}"#,
        ))
        .await;
    loop {
        if stalled.next_event().await["ev"] == "ack" {
            break;
        }
    }
    let mut players = Vec::new();
    for p in 0..PLAYERS {
        let mut c = server.connect(&format!("player{p}")).await;
        c.join("game:1").await;
        players.push(c);
    }
    // The stalled member reads nothing for about five seconds while every
    // player moves at 20 Hz.
    let pad = "x".repeat(8192);
    let start = Instant::now();
    for tick in 0..TICKS {
        for (p, c) in players.iter_mut().enumerate() {
            let frame = ClientFrame::new("publish")
                .room("game:1")
                .data(json!({"p": p, "tick": tick, "pad": pad}))
                .key(&format!("pos:{p}"));
            c.send(&frame).await;
        }
        let next = Duration::from_millis(50 * (tick as u64 + 1));
        tokio::time::sleep(next.saturating_sub(start.elapsed())).await;
    }
    let replaced = server_metric(&server, "roomcast_keyed_replaced_total").await;
    assert!(
        replaced > 0.0,
        "the stalled member's queue never held a key twice"
    );
    // Now it reads again: everything up to each player's last tick.
    let mut last: HashMap<u64, u64> = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while last.len() < PLAYERS || last.values().any(|&t| t != TICKS as u64 - 1) {
        assert!(Instant::now() < deadline, "not caught up: {last:?}");
        assert!(stalled.fill().await > 0, "closed: {last:?}");
        for ev in take_events(&mut stalled.buf) {
            if ev["ev"] != "message" {
                continue;
            }
            let p = ev["data"]["p"].as_u64().expect("p");
            let tick = ev["data"]["tick"].as_u64().expect("tick");
            assert_eq!(ev["key"], format!("pos:{p}"));
            let seen = last.entry(p).or_insert(0);
            assert!(tick >= *seen, "player {p}: tick {tick} after {seen}");
            *seen = tick;
        }
    }
    assert_eq!(
        server_metric(&server, "roomcast_slow_consumer_drops_total").await,
        0.0
    );
}

#[tokio::test]
async fn joins_and_leaves_of_an_interval_come_as_one_presence_diff_with_the_exact_count() {
    let server = Server::start(&["--presence-interval-ms", "300"]).await;
    let mut observer = server.connect("observer").await;
    observer.join("room").await;
    let first = observer
        .recv_matching(|e| matches!(e, ServerEvent::PresenceDiff { .. }))
        .await;
    assert_eq!(
        first,
        ServerEvent::PresenceDiff {
            room: "room".into(),
            joins: vec!["observer".into()],
            leaves: vec![],
            count: 1,
        }
    );
    let mut others = Vec::new();
    for user in ["a", "b", "c"] {
        let mut c = server.connect(user).await;
        c.join("room").await;
        others.push(c);
    }
    let ev = others[2]
        .request(ClientFrame::new("leave").room("room"))
        .await;
    assert!(matches!(ev, ServerEvent::Ack { .. }), "{ev:?}");
    let diff = observer
        .recv_matching(|e| matches!(e, ServerEvent::PresenceDiff { .. }))
        .await;
    let ServerEvent::PresenceDiff {
        joins,
        leaves,
        count,
        ..
    } = diff
    else {
        unreachable!()
    };
    let mut joins: Vec<String> = joins.into_iter().map(|j| j.into_owned()).collect();
    joins.sort();
    assert_eq!(
        joins,
        vec!["a", "b"],
        "c joined and left within the interval"
    );
    assert!(leaves.is_empty());
    assert_eq!(count, 3);
    // Then one leave alone.
    drop(others.remove(0));
    let diff = observer
        .recv_matching(|e| matches!(e, ServerEvent::PresenceDiff { .. }))
        .await;
    assert_eq!(
        diff,
        ServerEvent::PresenceDiff {
            room: "room".into(),
            joins: vec![],
            leaves: vec!["a".into()],
            count: 2,
        }
    );
    observer
        .expect_none(Duration::from_millis(500), |e| {
            matches!(e, ServerEvent::Joined { .. } | ServerEvent::Left { .. })
        })
        .await;
}
