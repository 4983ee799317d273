//! Rooms, presence, direct messages and codec interop against a real
//! standalone server.

mod common;

use std::time::Duration;

use common::*;
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ServerEvent};
use serde_json::json;

#[tokio::test]
async fn welcome_ping_join_publish_leave() {
    let server = Server::start(&[]).await;
    let mut a = server.connect("alice").await;
    match a.welcome.as_ref().expect("welcome") {
        ServerEvent::Welcome {
            user,
            limits,
            batch,
            ..
        } => {
            assert_eq!(user, "alice");
            assert_eq!(limits.max_rooms, 100);
            assert!(!batch);
        }
        other => panic!("{other:?}"),
    }
    let pong = a.request(ClientFrame::new("ping")).await;
    assert!(
        matches!(pong, ServerEvent::Pong { id: Some(_) }),
        "{pong:?}"
    );

    a.join("encounter:42").await;
    let joined = a
        .recv_matching(|e| matches!(e, ServerEvent::Joined { .. }))
        .await;
    assert!(
        matches!(&joined, ServerEvent::Joined { room, user, count: 1 } if room == "encounter:42" && user == "alice"),
        "{joined:?}"
    );

    let mut b = server.connect("bob").await;
    b.join("encounter:42").await;
    let joined = a
        .recv_matching(|e| matches!(e, ServerEvent::Joined { .. }))
        .await;
    assert!(
        matches!(&joined, ServerEvent::Joined { user, count: 2, .. } if user == "bob"),
        "{joined:?}"
    );

    b.publish("encounter:42", json!({"hp": 7})).await;
    for c in [&mut a, &mut b] {
        let ev = c
            .recv_matching(|e| matches!(e, ServerEvent::Message { .. }))
            .await;
        match ev {
            ServerEvent::Message {
                room,
                from,
                data,
                ts,
                mid,
                offset,
                epoch,
                ..
            } => {
                assert_eq!((offset, epoch), (None, None), "no history here");
                assert_eq!(room, "encounter:42");
                assert_eq!(from, "bob");
                assert_eq!(*data, json!({"hp": 7}));
                assert!(ts > 1_700_000_000_000);
                assert!(!mid.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    let presence = a
        .request(ClientFrame::new("presence").room("encounter:42"))
        .await;
    match presence {
        ServerEvent::Presence { users, count, .. } => {
            let mut users: Vec<_> = users.iter().map(|u| u.to_string()).collect();
            users.sort();
            assert_eq!(users, vec!["alice", "bob"]);
            assert_eq!(count, 2);
        }
        other => panic!("{other:?}"),
    }

    let ack = b
        .request(ClientFrame::new("leave").room("encounter:42"))
        .await;
    assert!(matches!(ack, ServerEvent::Ack { .. }), "{ack:?}");
    let left = a
        .recv_matching(|e| matches!(e, ServerEvent::Left { .. }))
        .await;
    assert!(
        matches!(&left, ServerEvent::Left { user, count: 1, .. } if user == "bob"),
        "{left:?}"
    );
    // After leaving, bob gets nothing from the room and cannot publish.
    a.publish("encounter:42", json!(1)).await;
    let err = b
        .request(
            ClientFrame::new("publish")
                .room("encounter:42")
                .data(json!(2)),
        )
        .await;
    assert!(
        matches!(
            err,
            ServerEvent::Error {
                code: roomcast::protocol::ErrorCode::NotJoined,
                ..
            }
        ),
        "{err:?}"
    );
    b.expect_none(Duration::from_millis(200), |e| {
        matches!(e, ServerEvent::Message { .. })
    })
    .await;

    // A disconnect counts as leaving.
    let mut c = server.connect("carol").await;
    c.join("encounter:42").await;
    drop(c);
    let left = a
        .recv_matching(|e| matches!(e, ServerEvent::Left { user, .. } if user == "carol"))
        .await;
    assert!(
        matches!(left, ServerEvent::Left { count: 1, .. }),
        "{left:?}"
    );
}

#[tokio::test]
async fn json_and_msgpack_clients_interoperate() {
    let server = Server::start(&[]).await;
    let mut j = server.connect_with("json-user", Codec::Json).await;
    let mut m = server.connect_with("mp-user", Codec::MsgPack).await;
    j.join("lobby").await;
    m.join("lobby").await;
    let data = json!({"name": "Goblin", "hp": [7, 3.5], "flags": {"hidden": true}, "note": null});
    j.publish("lobby", data.clone()).await;
    let got = m
        .recv_matching(|e| matches!(e, ServerEvent::Message { .. }))
        .await;
    assert_eq!(message_data(&got), Some(data));
    m.publish("lobby", json!("from msgpack")).await;
    let got = j
        .recv_matching(|e| matches!(e, ServerEvent::Message { from, .. } if from == "mp-user"))
        .await;
    assert_eq!(message_data(&got), Some(json!("from msgpack")));
    // Direct messages cross codecs too.
    j.send_to("mp-user", json!({"dm": 1})).await;
    let got = m
        .recv_matching(|e| matches!(e, ServerEvent::Direct { .. }))
        .await;
    assert!(
        matches!(&got, ServerEvent::Direct { from, queued: false, .. } if from == "json-user"),
        "{got:?}"
    );
}

#[tokio::test]
async fn direct_message_reaches_every_connection_of_the_user() {
    let server = Server::start(&[]).await;
    let mut a = server.connect("alice").await;
    let mut b1 = server.connect("bob").await;
    let mut b2 = server.connect_with("bob", Codec::MsgPack).await;
    a.send_to("bob", json!({"roll": 20})).await;
    for b in [&mut b1, &mut b2] {
        let ev = b
            .recv_matching(|e| matches!(e, ServerEvent::Direct { .. }))
            .await;
        match ev {
            ServerEvent::Direct {
                from,
                data,
                queued,
                mid,
                ..
            } => {
                assert_eq!(from, "alice");
                assert_eq!(*data, json!({"roll": 20}));
                assert!(!queued);
                assert!(!mid.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
    a.expect_none(Duration::from_millis(100), |e| {
        matches!(e, ServerEvent::Direct { .. })
    })
    .await;
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let server = Server::start(&[]).await;
    let connect = |sub: &str, tenant: &str| {
        let url = server.url(&format!(
            "?token={}",
            token_with(json!({"sub": sub, "tenant": tenant}))
        ));
        async move { Client::connect(&url, Codec::Json).await.expect("connect") }
    };
    let mut a1 = connect("alice", "t1").await;
    let mut a2 = connect("alice", "t2").await;
    let mut b2 = connect("bob", "t2").await;
    a1.join("lobby").await;
    a2.join("lobby").await;
    b2.join("lobby").await;
    a1.publish("lobby", json!("t1 only")).await;
    let got = a1
        .recv_matching(|e| matches!(e, ServerEvent::Message { .. }))
        .await;
    assert_eq!(message_data(&got), Some(json!("t1 only")));
    // b2 sends to "alice": only t2's alice gets it.
    b2.send_to("alice", json!("hi t2")).await;
    let got = a2
        .recv_matching(|e| matches!(e, ServerEvent::Direct { .. }))
        .await;
    assert!(matches!(got, ServerEvent::Direct { .. }));
    let seen_by_t2 = a2
        .try_recv(Duration::from_millis(300))
        .await
        .into_iter()
        .chain(b2.try_recv(Duration::from_millis(100)).await)
        .filter(|e| matches!(e, ServerEvent::Message { .. }))
        .count();
    assert_eq!(seen_by_t2, 0);
    let a1_direct = a1
        .try_recv(Duration::from_millis(200))
        .await
        .filter(|e| matches!(e, ServerEvent::Direct { .. }));
    assert!(a1_direct.is_none());
}

#[tokio::test]
async fn presence_events_stop_above_the_configured_room_size() {
    let server = Server::start(&["--presence-events-max", "2"]).await;
    let mut a = server.connect("a").await;
    let mut b = server.connect("b").await;
    let mut c = server.connect("c").await;
    a.join("big").await;
    b.join("big").await;
    let joined = a
        .recv_matching(|e| matches!(e, ServerEvent::Joined { user, .. } if user == "b"))
        .await;
    assert!(matches!(joined, ServerEvent::Joined { count: 2, .. }));
    // The third user makes the room larger than 2: no event, but presence knows.
    c.join("big").await;
    let is_c = |e: &Event| matches!(e, ServerEvent::Joined { user, .. } | ServerEvent::Left { user, .. } if user == "c");
    a.expect_none(Duration::from_millis(300), is_c).await;
    match c.request(ClientFrame::new("presence").room("big")).await {
        ServerEvent::Presence { count, .. } => assert_eq!(count, 3),
        other => panic!("{other:?}"),
    }
    // Leaving a room of 3 is silent; leaving a room of 2 is announced.
    drop(c);
    a.expect_none(Duration::from_millis(300), is_c).await;
    drop(b);
    let left = a
        .recv_matching(|e| matches!(e, ServerEvent::Left { user, .. } if user == "b"))
        .await;
    assert!(
        matches!(left, ServerEvent::Left { count: 1, .. }),
        "{left:?}"
    );
}
