//! The standalone offline queue: direct messages to a user with no
//! connection wait, capped and with a TTL, and arrive in order, flagged
//! queued, when the user connects; written messages are not sent again.

mod common;

use std::time::Duration;

use common::*;
use roomcast::protocol::{Codec, ServerEvent};
use serde_json::json;

async fn queued_directs(c: &mut Client, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for _ in 0..n {
        match c
            .recv_matching(|e| matches!(e, ServerEvent::Direct { .. }))
            .await
        {
            ServerEvent::Direct {
                data, queued, from, ..
            } => {
                assert!(queued, "backlog must be flagged queued");
                assert_eq!(from, "alice");
                out.push(data.to_value().expect("data is JSON"));
            }
            other => panic!("{other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn offline_messages_arrive_in_order_once() {
    let server = Server::start(&[]).await;
    let mut alice = server.connect("alice").await;
    for i in 0..5 {
        alice.send_to("bob", json!({"n": i})).await;
    }
    let mut bob = server.connect_with("bob", Codec::MsgPack).await;
    let got = queued_directs(&mut bob, 5).await;
    assert_eq!(got, (0..5).map(|i| json!({"n": i})).collect::<Vec<_>>());
    // Once online, new messages come live, after the backlog.
    alice.send_to("bob", json!("live")).await;
    match bob
        .recv_matching(|e| matches!(e, ServerEvent::Direct { .. }))
        .await
    {
        ServerEvent::Direct { data, queued, .. } => {
            assert_eq!(*data, json!("live"));
            assert!(!queued);
        }
        other => panic!("{other:?}"),
    }
    drop(bob);
    // The backlog was removed after it was written: a new connection gets nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bob = server.connect("bob").await;
    bob.expect_none(Duration::from_millis(300), |e| {
        matches!(e, ServerEvent::Direct { .. })
    })
    .await;
}

#[tokio::test]
async fn offline_queue_is_capped_keeping_the_newest() {
    let server = Server::start(&["--offline-max", "3"]).await;
    let mut alice = server.connect("alice").await;
    for i in 0..5 {
        alice.send_to("bob", json!(i)).await;
    }
    let mut bob = server.connect("bob").await;
    assert_eq!(
        queued_directs(&mut bob, 3).await,
        vec![json!(2), json!(3), json!(4)]
    );
    bob.expect_none(Duration::from_millis(200), |e| {
        matches!(e, ServerEvent::Direct { .. })
    })
    .await;
}

#[tokio::test]
async fn offline_messages_expire() {
    let server = Server::start(&["--offline-ttl-s", "1"]).await;
    let mut alice = server.connect("alice").await;
    alice.send_to("bob", json!("old")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    alice.send_to("bob", json!("fresh")).await;
    let mut bob = server.connect("bob").await;
    assert_eq!(queued_directs(&mut bob, 1).await, vec![json!("fresh")]);
    bob.expect_none(Duration::from_millis(200), |e| {
        matches!(e, ServerEvent::Direct { .. })
    })
    .await;
}

#[tokio::test]
async fn batch_clients_get_the_backlog_in_one_frame() {
    let server = Server::start(&[]).await;
    let mut alice = server.connect("alice").await;
    for i in 0..3 {
        alice.send_to("bob", json!(i)).await;
    }
    let url = server.url(&format!("?token={}&batch=1", token("bob")));
    let mut bob = Client::connect(&url, Codec::Json).await.expect("connect");
    assert!(matches!(
        bob.welcome,
        Some(ServerEvent::Welcome { batch: true, .. })
    ));
    assert_eq!(bob.batches, 0, "welcome is never batched");
    assert_eq!(
        queued_directs(&mut bob, 3).await,
        vec![json!(0), json!(1), json!(2)]
    );
    assert_eq!(bob.batches, 1);
}
