//! The path of a message's `data` through a cluster: a JSON publisher's
//! text reaches JSON subscribers on every instance as it was written (only
//! whitespace removed), without being parsed into a value and written
//! again, and each instance encodes the event once per codec.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use roomcast::protocol::{Codec, ServerEvent};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn instance(redis: &Redis, id: &str) -> Server {
    let url = redis.url();
    Server::start(&["--redis", &url, "--redis-prefix", "rc", "--instance-id", id]).await
}

/// The next frame of `kind` (`"ev":"<kind>"`) the server sent, as raw bytes.
async fn raw_event(client: &mut Client, kind: &str) -> Vec<u8> {
    let tag = format!(r#""ev":"{kind}""#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let msg = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} in time"))
            .expect("socket open")
            .expect("a frame");
        let bytes = match msg {
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            _ => continue,
        };
        let is_kind = match client.codec {
            Codec::Json => String::from_utf8_lossy(&bytes).contains(&tag),
            Codec::MsgPack => Codec::MsgPack
                .decode::<Value>(&bytes)
                .is_ok_and(|v| v["ev"] == kind),
        };
        if is_kind {
            return bytes;
        }
    }
}

/// (JSON encodes, MessagePack encodes, room events, room encodes) so far.
async fn counters(server: &Server) -> [f64; 4] {
    let (status, text) = http_get(&server.http("/metrics")).await;
    assert_eq!(status, 200);
    [
        metric(&text, r#"roomcast_encodes_total{codec="json"}"#),
        metric(&text, r#"roomcast_encodes_total{codec="msgpack"}"#),
        metric(&text, "roomcast_room_events_total"),
        metric(&text, "roomcast_room_encodes_total"),
    ]
}

fn delta(after: [f64; 4], before: [f64; 4]) -> [f64; 4] {
    [0, 1, 2, 3].map(|i| after[i] - before[i])
}

#[tokio::test]
async fn json_data_crosses_the_cluster_as_written_and_is_encoded_once_per_codec() {
    let redis = Redis::start().await;
    let a = instance(&redis, "a").await;
    let b = instance(&redis, "b").await;
    let mut clients = vec![
        a.connect_with("alice", Codec::Json).await,
        a.connect_with("carol", Codec::MsgPack).await,
        b.connect_with("bob", Codec::Json).await,
        b.connect_with("dave", Codec::MsgPack).await,
    ];
    for c in &mut clients {
        c.join("r").await;
    }
    // A first message shows every subscription is in place.
    clients[0].publish("r", json!("warm-up")).await;
    for c in &mut clients {
        c.recv_matching(|e| matches!(e, ServerEvent::Message { .. }))
            .await;
    }
    let before = [counters(&a).await, counters(&b).await];

    // Unsorted keys, whitespace, brackets and an escaped quote inside a
    // string, a u64 and a float. No `id`: no ack is encoded.
    let data = r#"{ "z": [1, 2.5, "[[\"{ ", 18446744073709551615], "a": {"k": null} }"#;
    let frame = format!(r#"{{"op":"publish","room":"r","data":{data}}}"#);
    clients[0].send_raw(frame.into_bytes()).await;

    let compact = r#"{"z":[1,2.5,"[[\"{ ",18446744073709551615],"a":{"k":null}}"#;
    let value = json!({"a": {"k": null}, "z": [1, 2.5, "[[\"{ ", u64::MAX]});
    for c in &mut clients {
        let bytes = raw_event(c, "message").await;
        match c.codec {
            Codec::Json => {
                let text = String::from_utf8(bytes).expect("text frame");
                assert!(
                    text.contains(&format!(r#""data":{compact},"ts":"#)),
                    "the publisher's text, key order included: {text}"
                );
            }
            Codec::MsgPack => {
                let ev: Value = Codec::MsgPack.decode(&bytes).expect("msgpack");
                assert_eq!(ev["data"], value);
                assert_eq!(ev["data"]["z"][3].as_u64(), Some(u64::MAX));
            }
        }
    }

    // One event on each instance, encoded once for JSON and once for
    // MessagePack, whatever the number of members.
    let want = [1.0, 1.0, 1.0, 2.0];
    for (server, before) in [(&a, before[0]), (&b, before[1])] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = delta(counters(server).await, before);
            if got == want {
                break;
            }
            assert!(Instant::now() < deadline, "encodes: {got:?}, want {want:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delta(counters(&a).await, before[0]), want, "instance a");
    assert_eq!(delta(counters(&b).await, before[1]), want, "instance b");
}
