//! One owner of a socket's bytes at a time, seen from a raw client: a
//! client that fell behind, so the server is partway through a large frame
//! to it, still gets whole frames, then a whole close frame; a pong never
//! lands inside a frame; requests that came before a bad frame are
//! answered before the close.

mod common;

use common::{
    Client, RawFrame, RawWs, Server, client_frame, first_frame, server_metric, split_frames,
};
use serde_json::{Value, json};
use std::time::Duration;

/// A client receive buffer small enough to fill within a few frames.
const SMALL_RCVBUF: u32 = 4096;

/// Opens a raw client that joins room `r`, then stops reading.
async fn stalled_member(server: &Server) -> RawWs {
    let mut raw = RawWs::open(&server.addr, "stalled", Some(SMALL_RCVBUF), &[]).await;
    assert_eq!(raw.next_event().await["ev"], "welcome");
    raw.send(&client_frame(
        true,
        0x1,
        br#"{"op":"join","room":"r","id":1}"#,
    ))
    .await;
    loop {
        let ev = raw.next_event().await;
        if ev["ev"] == "ack" {
            break;
        }
    }
    raw
}

/// Publishes large messages to room `r` until the server's counter `name`
/// is at least 1, so the stalled member's socket is full and the server is
/// partway through a frame to it.
async fn flood_until(server: &Server, publisher: &mut Client, name: &str) {
    let big = "x".repeat(60_000);
    for _ in 0..400 {
        publisher.publish("r", json!(big)).await;
        if server_metric(server, name).await >= 1.0 {
            return;
        }
    }
    panic!("{name} never counted");
}

/// Asserts that `bytes` are whole frames, data frames holding JSON, and
/// that the last one is a close frame with `code`.
fn assert_whole_frames_then_close(bytes: &[u8], code: u16) -> Vec<RawFrame> {
    let frames = match split_frames(bytes) {
        Ok(frames) => frames,
        Err((frames, why)) => panic!(
            "after {} whole frames: {why} (a frame was cut off; the client sees 1006)",
            frames.len()
        ),
    };
    let (last, before) = frames.split_last().expect("some frames");
    for (op, payload) in before {
        assert_ne!(*op, 0x8, "one close frame, at the end");
        if *op == 0x1 {
            serde_json::from_slice::<Value>(payload).expect("a whole JSON event");
        }
    }
    assert_eq!(last.0, 0x8, "the last frame closes");
    assert!(last.1.len() >= 2, "the close frame has a code");
    assert_eq!(u16::from_be_bytes([last.1[0], last.1[1]]), code);
    frames
}

#[tokio::test]
async fn a_stalled_reader_gets_4000_after_whole_frames() {
    let server = Server::start(&["--outbound-queue", "4"]).await;
    let mut stalled = stalled_member(&server).await;
    let mut publisher = server.connect("pub").await;
    publisher.join("r").await;
    flood_until(
        &server,
        &mut publisher,
        r#"roomcast_closes_total{code="4000"}"#,
    )
    .await;
    let bytes = stalled.read_to_end().await;
    let frames = assert_whole_frames_then_close(&bytes, 4000);
    assert!(frames.len() > 2, "messages arrived before the close");
}

#[tokio::test]
async fn an_oversized_message_mid_frame_gets_1009_after_whole_frames() {
    let server = Server::start(&["--outbound-queue", "4", "--slow-consumer", "drop"]).await;
    let mut stalled = stalled_member(&server).await;
    let mut publisher = server.connect("pub").await;
    publisher.join("r").await;
    flood_until(
        &server,
        &mut publisher,
        "roomcast_slow_consumer_drops_total",
    )
    .await;
    // The header of a text frame above the 64 KiB limit: refused from the
    // header alone.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&100_000u64.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    stalled.send(&header).await;
    let bytes = stalled.read_to_end().await;
    assert_whole_frames_then_close(&bytes, 1009);
}

#[tokio::test]
async fn a_ping_while_a_frame_is_half_written_is_answered_after_it() {
    let server = Server::start(&["--outbound-queue", "4", "--slow-consumer", "drop"]).await;
    let mut stalled = stalled_member(&server).await;
    let mut publisher = server.connect("pub").await;
    publisher.join("r").await;
    flood_until(
        &server,
        &mut publisher,
        "roomcast_slow_consumer_drops_total",
    )
    .await;
    stalled.send(&client_frame(true, 0x9, b"mid")).await;
    // Reads until the pong: every frame before it is whole.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let mut messages = 0;
    loop {
        while let Some((op, payload, used)) = first_frame(&stalled.buf) {
            stalled.buf.drain(..used);
            match op {
                0x1 => {
                    let ev: Value = serde_json::from_slice(&payload)
                        .unwrap_or_else(|e| panic!("a frame cut by a control frame: {e}"));
                    if ev["ev"] == "message" {
                        messages += 1;
                    }
                }
                0xA => {
                    assert_eq!(payload, b"mid");
                    assert!(messages > 0, "the frames already started come first");
                    return;
                }
                0x9 => {}
                op => panic!("unexpected frame {op:#x}"),
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no pong");
        assert!(stalled.fill().await > 0, "closed before the pong");
    }
}

#[tokio::test]
async fn requests_before_a_bad_frame_in_the_same_write_are_answered_first() {
    let server = Server::start(&[]).await;
    // Two whole requests, then a bad frame, in one write.
    let cases: [(Vec<u8>, u16); 2] = [
        (vec![0x81, 0x02, b'h', b'i'], 1002),
        (client_frame(true, 0x1, &[0xc3, 0x28]), 1007),
    ];
    for (bad, code) in cases {
        let mut raw = RawWs::open(&server.addr, "bad", None, &[]).await;
        assert_eq!(raw.next_event().await["ev"], "welcome");
        let bytes = [
            client_frame(true, 0x1, br#"{"op":"ping","id":1}"#),
            client_frame(true, 0x1, br#"{"op":"ping","id":2}"#),
            bad,
        ]
        .concat();
        raw.send(&bytes).await;
        let mut rest = std::mem::take(&mut raw.buf);
        rest.extend(raw.read_to_end().await);
        let frames = assert_whole_frames_then_close(&rest, code);
        let ids: Vec<Value> = frames
            .iter()
            .filter(|(op, _)| *op == 0x1)
            .map(|(_, p)| serde_json::from_slice::<Value>(p).expect("json"))
            .filter(|ev| ev["ev"] == "pong")
            .map(|ev| ev["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!(1), json!(2)], "both requests answered");
    }
    // The server lives on.
    let mut raw = RawWs::open(&server.addr, "after", None, &[]).await;
    assert_eq!(raw.next_event().await["ev"], "welcome");
}

#[tokio::test]
async fn a_reader_that_never_reads_on_is_reset_within_the_finish_timeout() {
    let server = Server::start(&["--outbound-queue", "4"]).await;
    let mut stalled = stalled_member(&server).await;
    let mut publisher = server.connect("pub").await;
    publisher.join("r").await;
    flood_until(
        &server,
        &mut publisher,
        r#"roomcast_closes_total{code="4000"}"#,
    )
    .await;
    // The frame in progress cannot be finished: within FINISH_TIMEOUT
    // (2 s) and some slack the server lets the connection go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while server_metric(&server, "roomcast_connections").await > 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection is still held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It was reset: no close frame follows the unfinished frame.
    let bytes = stalled.read_to_end().await;
    let mut at = 0;
    while let Some((op, _, used)) = first_frame(&bytes[at..]) {
        assert_ne!(op, 0x8, "a close frame after a cut frame");
        at += used;
    }
    assert!(
        at < bytes.len(),
        "the stream ends inside a frame, by a reset"
    );
}

#[tokio::test]
async fn a_keepalive_timeout_mid_frame_gets_4001_after_whole_frames() {
    let server = Server::start(&[
        "--outbound-queue",
        "4",
        "--slow-consumer",
        "drop",
        "--ping-interval-ms",
        "1000",
    ])
    .await;
    let mut stalled = stalled_member(&server).await;
    let mut publisher = server.connect("pub").await;
    publisher.join("r").await;
    // The stalled member sends nothing: two to three intervals after its
    // join, while its socket is full, the sweep closes it with 4001.
    flood_until(
        &server,
        &mut publisher,
        r#"roomcast_closes_total{code="4001"}"#,
    )
    .await;
    let bytes = stalled.read_to_end().await;
    assert_whole_frames_then_close(&bytes, 4001);
}
