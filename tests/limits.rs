//! Every limit of spec §7: each one a clear error or close code, the
//! connection surviving wherever the protocol says it does.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ErrorCode, ServerEvent};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn is_error(ev: &Event, want: ErrorCode) -> bool {
    matches!(ev, ServerEvent::Error { code, .. } if *code == want)
}

#[tokio::test]
async fn malformed_frames_and_unknown_ops_get_errors_and_the_connection_lives() {
    let server = Server::start(&[]).await;
    let mut c = server.connect("u").await;
    c.send_raw(b"{not json".to_vec()).await;
    let ev = c.recv().await;
    assert!(is_error(&ev, ErrorCode::BadFrame), "{ev:?}");
    c.send_raw(b"[1,2,3]".to_vec()).await;
    assert!(is_error(&c.recv().await, ErrorCode::BadFrame));
    let ev = c.request(ClientFrame::new("explode")).await;
    assert!(is_error(&ev, ErrorCode::UnknownOp), "{ev:?}");
    let ev = c.request(ClientFrame::new("join")).await;
    assert!(is_error(&ev, ErrorCode::BadRequest), "{ev:?}");
    let ev = c.request(ClientFrame::new("send").data(json!(1))).await;
    assert!(is_error(&ev, ErrorCode::BadRequest), "{ev:?}");
    c.send_raw(br#"{"id":"x","room":"r"}"#.to_vec()).await;
    let ev = c.recv().await;
    assert!(is_error(&ev, ErrorCode::BadRequest), "{ev:?}");
    for room in ["", "has space", "slash/no", &"x".repeat(129)] {
        let ev = c.request(ClientFrame::new("join").room(room)).await;
        assert!(is_error(&ev, ErrorCode::InvalidRoom), "{room:?}: {ev:?}");
    }
    let pong = c.request(ClientFrame::new("ping")).await;
    assert!(matches!(pong, ServerEvent::Pong { .. }), "{pong:?}");

    let mut m = server.connect_with("m", Codec::MsgPack).await;
    m.send_raw(vec![0xc1, 0xff, 0x00]).await;
    assert!(is_error(&m.recv().await, ErrorCode::BadFrame));
    // A MessagePack `bin` value is not JSON-representable data.
    m.send_raw(vec![
        0x82, 0xa2, b'o', b'p', 0xa4, b'p', b'i', b'n', b'g', 0xa4, b'd', b'a', b't', b'a', 0xc4,
        0x01, 0x00,
    ])
    .await;
    let ev = m.recv().await;
    assert!(is_error(&ev, ErrorCode::BadFrame), "{ev:?}");
    let pong = m.request(ClientFrame::new("ping")).await;
    assert!(matches!(pong, ServerEvent::Pong { .. }), "{pong:?}");
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let server = Server::start(&["--max-message-bytes", "1024"]).await;
    let mut c = server.connect("u").await;
    c.publish_raw_big(2000).await;
    let frame = c.closed().await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1009);
    // Other clients are unaffected.
    let mut d = server.connect("d").await;
    assert!(matches!(
        d.request(ClientFrame::new("ping")).await,
        ServerEvent::Pong { .. }
    ));
}

#[tokio::test]
async fn rate_limit_errors_then_closes_on_abuse() {
    let server = Server::start(&[
        "--rate-per-s",
        "1",
        "--burst",
        "5",
        "--rate-abuse-strikes",
        "10",
    ])
    .await;
    let mut c = server.connect("u").await;
    for i in 0..8u64 {
        c.send(&ClientFrame::new("ping").id(i)).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..8 {
        match c.recv().await {
            ServerEvent::Pong { .. } => pongs += 1,
            ev if is_error(&ev, ErrorCode::RateLimited) => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((pongs, limited), (5, 3));
    for i in 0..20u64 {
        let bytes = c
            .codec
            .encode(&ClientFrame::new("ping").id(100 + i))
            .expect("encode");
        if c.ws
            .send(Message::text(
                String::from_utf8(bytes.to_vec()).expect("utf8"),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let frame = c.closed().await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1008);
}

#[tokio::test]
async fn max_rooms_per_connection() {
    let server = Server::start(&["--max-rooms-per-conn", "2"]).await;
    let mut c = server.connect("u").await;
    c.join("a").await;
    c.join("b").await;
    let ev = c.request(ClientFrame::new("join").room("c")).await;
    assert!(is_error(&ev, ErrorCode::TooManyRooms), "{ev:?}");
    // Joining a room again is idempotent, and leaving frees a slot.
    c.join("a").await;
    let ack = c.request(ClientFrame::new("leave").room("b")).await;
    assert!(matches!(ack, ServerEvent::Ack { .. }));
    c.join("c").await;
}

#[tokio::test]
async fn connection_limits_answer_503_and_429_before_the_upgrade() {
    let server = Server::start(&["--max-connections", "2", "--max-conns-per-user", "1"]).await;
    let _a = server.connect("a").await;
    let req = server
        .url(&format!("?token={}", token("a")))
        .into_client_request()
        .expect("req");
    assert_eq!(upgrade_status(req).await, Some(429));
    let _b = server.connect("b").await;
    let req = server
        .url(&format!("?token={}", token("c")))
        .into_client_request()
        .expect("req");
    assert_eq!(upgrade_status(req).await, Some(503));
    drop(_b);
    // The slot comes back once the connection is gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let req = server
            .url(&format!("?token={}", token("c")))
            .into_client_request()
            .expect("req");
        if upgrade_status(req).await.is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn silent_peer_is_closed_after_two_ping_intervals() {
    let server = Server::start(&["--ping-interval-ms", "200"]).await;
    let mut silent = server.connect("silent").await;
    let mut live = server.connect("live").await;
    // `live` keeps reading, so its client answers the server's pings.
    live.expect_silence(Duration::from_millis(1000)).await;
    assert!(matches!(
        live.request(ClientFrame::new("ping")).await,
        ServerEvent::Pong { .. }
    ));
    // `silent` read nothing for 1 s, so it never answered a ping.
    let frame = silent.closed().await.expect("close frame");
    assert_eq!(u16::from(frame.code), 4001);
}

async fn slow_consumer(policy: &str) -> (Client, Server) {
    let server = Server::start(&[
        "--outbound-queue",
        "4",
        "--slow-consumer",
        policy,
        "--rate-per-s",
        "100000",
        "--burst",
        "100000",
        "--max-message-bytes",
        "1000000",
    ])
    .await;
    let mut slow = server.connect("slow").await;
    slow.join("room").await;
    let mut fast = server.connect("fast").await;
    fast.join("room").await;
    let mut publisher = server.connect("pub").await;
    publisher.join("room").await;
    let n = 400u64;
    let started = tokio::time::Instant::now();
    // The publisher and `fast` read each message before the next is sent,
    // so only `slow` falls behind. (Reading `fast` from a task of its own
    // let the test client itself lag behind and overflow `fast`'s queue.)
    let pad = "x".repeat(60_000);
    for seq in 0..n {
        publisher
            .send(
                &ClientFrame::new("publish")
                    .room("room")
                    .data(json!({"seq": seq, "pad": pad})),
            )
            .await;
        publisher
            .recv_matching(|e| matches!(e, ServerEvent::Message { .. }))
            .await;
        let ev = fast
            .recv_matching(|e| matches!(e, ServerEvent::Message { .. }))
            .await;
        let ServerEvent::Message { data, .. } = ev else {
            unreachable!("matched a message")
        };
        let data = data.to_value().expect("data is JSON");
        assert_eq!(data["seq"], json!(seq), "fast member lost or reordered");
    }
    // The room kept moving although one member read nothing.
    assert!(started.elapsed() < Duration::from_secs(20));
    (slow, server)
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4000_and_never_slows_the_room() {
    let (mut slow, server) = slow_consumer("close").await;
    let frame = slow.closed().await;
    if let Some(frame) = frame {
        assert_eq!(u16::from(frame.code), 4000);
    }
    let (_, text) = http_get(&server.http("/metrics")).await;
    assert!(
        metric(&text, "roomcast_slow_consumer_drops_total") >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("roomcast_closes_total{code=\"4000\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn slow_consumer_drop_policy_counts_and_keeps_the_connection() {
    let (mut slow, server) = slow_consumer("drop").await;
    let (_, text) = http_get(&server.http("/metrics")).await;
    assert!(
        metric(&text, "roomcast_slow_consumer_drops_total") >= 1.0,
        "{text}"
    );
    // Drain what was buffered; the connection is still usable.
    while slow.try_recv(Duration::from_millis(500)).await.is_some() {}
    assert!(matches!(
        slow.request(ClientFrame::new("ping")).await,
        ServerEvent::Pong { .. }
    ));
}
