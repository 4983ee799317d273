//! A big room's fan-out must not hold up other rooms: a message to a
//! 2-member room published while a 10,000-member room's message is being
//! fanned out arrives within a few milliseconds of its usual latency.
//!
//! The server runs with one worker thread, so a fan-out run by the
//! publishing connection's task would delay every other request by its
//! whole length.

mod common;

use std::time::{Duration, Instant};

use common::*;
use roomcast::protocol::message::ClientFrame;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIG: usize = 10_000;
const ROUNDS: usize = 9;

/// Opens an anonymous connection that joins `room` and then never reads.
async fn silent_member(addr: &str, room: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    req.extend(client_frame(
        true,
        0x1,
        json!({"op": "join", "room": room}).to_string().as_bytes(),
    ));
    s.write_all(&req).await.expect("write");
    // Read the answer's head so the connection is known to be upgraded.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed during the upgrade");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
    s
}

/// How long a publish to the small room takes to reach its other member.
async fn small_latency(sender: &mut Client, receiver: &mut Client, n: usize) -> Duration {
    let sent = Instant::now();
    sender
        .send(&ClientFrame::new("publish").room("small").data(json!(n)))
        .await;
    receiver
        .recv_matching(|e| message_data(e) == Some(json!(n)))
        .await;
    sent.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_rooms_fanout_does_not_delay_a_small_room() {
    let server = Server::start(&[
        "--allow-anonymous",
        "--worker-threads",
        "1",
        "--max-connections",
        "20000",
        "--rate-per-s",
        "100000",
        "--burst",
        "100000",
    ])
    .await;
    let addr = server.addr.clone();

    let mut members = Vec::with_capacity(BIG);
    for batch in 0..BIG / 250 {
        let opened =
            futures_util::future::join_all((0..250).map(|_| silent_member(&addr, "big"))).await;
        members.extend(opened);
        let _ = batch;
    }
    let mut publisher = server.connect("big-publisher").await;
    publisher.join("big").await;
    let mut sender = server.connect("small-sender").await;
    sender.join("small").await;
    let mut receiver = server.connect("small-receiver").await;
    receiver.join("small").await;
    // Every silent member's join has run once the room counts them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = publisher
            .request(ClientFrame::new("presence").room("big"))
            .await;
        if matches!(&answer, Event::Presence { count, .. } if *count as usize == BIG + 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members did not join: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut quiet = Vec::new();
    for n in 0..ROUNDS {
        quiet.push(small_latency(&mut sender, &mut receiver, n).await);
    }
    let mut loaded = Vec::new();
    for n in 0..ROUNDS {
        let data = json!({"n": n, "pad": "x".repeat(64)});
        publisher
            .send(&ClientFrame::new("publish").room("big").data(data))
            .await;
        // Let the server start the big fan-out first.
        tokio::time::sleep(Duration::from_millis(2)).await;
        loaded.push(small_latency(&mut sender, &mut receiver, 1000 + n).await);
        // Let this fan-out finish before the next round.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (quiet, loaded) = (median(quiet), median(loaded));
    println!("small-room latency: {quiet:?} alone, {loaded:?} during a {BIG}-member fan-out");
    assert!(
        loaded < quiet + Duration::from_millis(10),
        "a {BIG}-member fan-out delayed a 2-member room: {loaded:?} against {quiet:?}"
    );
    drop(members);
}
