//! Operations: health, readiness, metrics, config file, graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use roomcast::protocol::ServerEvent;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn health_ready_and_metrics() {
    let server = Server::start(&[]).await;
    assert_eq!(http_get(&server.http("/health")).await.0, 200);
    assert_eq!(http_get(&server.http("/ready")).await.0, 200);
    let mut a = server.connect("alice").await;
    a.join("room").await;
    a.publish("room", json!(1)).await;
    let (status, text) = http_get(&server.http("/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "roomcast_connections"), 1.0, "{text}");
    assert!(metric(&text, "roomcast_deliveries_total") >= 2.0, "{text}");
    assert!(metric(&text, "roomcast_encodes_total") >= 1.0, "{text}");
    // No label carries a room or a user.
    assert!(
        !text.contains("alice") && !text.contains("\"room\""),
        "{text}"
    );
    // A plain GET on /ws is not an upgrade.
    assert_eq!(http_get(&server.http("/ws")).await.0, 400);
}

#[tokio::test]
async fn config_file_with_env_and_flag_precedence() {
    let dir = std::env::temp_dir().join(format!("roomcast-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("roomcast.env");
    std::fs::write(
        &file,
        "# test config\nROOMCAST_MAX_ROOMS_PER_CONN=3\nROOMCAST_BURST=7\nROOMCAST_RATE_PER_S=9\n",
    )
    .expect("write");
    let path = file.to_string_lossy().to_string();
    // File sets rooms=3, burst=7, rate=9; the environment overrides burst,
    // the flag overrides rate.
    let server = Server::start_env(
        &["--config", &path, "--rate-per-s", "11"],
        &[("ROOMCAST_BURST", "8")],
    )
    .await;
    let c = server.connect("u").await;
    match c.welcome {
        Some(ServerEvent::Welcome { ref limits, .. }) => {
            assert_eq!(limits.max_rooms, 3);
            assert_eq!(limits.burst, 8);
            assert_eq!(limits.rate_per_s, 11);
        }
        ref other => panic!("{other:?}"),
    }
    std::fs::write(&file, "ROOMCAST_NO_SUCH_THING=1\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--config", &path, "--listen", "127.0.0.1:0"])
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown setting ROOMCAST_NO_SUCH_THING")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn refuses_to_start_without_any_auth() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("ROOMCAST_JWT_SECRET")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no way to authenticate"));
}

#[tokio::test]
async fn sigterm_drains_clients_with_a_reconnect_hint_and_1001() {
    let mut server = Server::start(&["--drain-s", "1", "--shutdown-deadline-s", "5"]).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = server.connect(&format!("u{i}")).await;
        c.join("room").await;
        clients.push(c);
    }
    let started = std::time::Instant::now();
    server.signal("TERM");
    for c in &mut clients {
        let hint = c
            .recv_matching(|e| matches!(e, ServerEvent::Reconnect { .. }))
            .await;
        assert!(matches!(hint, ServerEvent::Reconnect { after_ms, .. } if after_ms > 0));
        let frame = c.closed().await.expect("close frame");
        assert_eq!(u16::from(frame.code), 1001);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exited before the deadline")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn each_room_event_is_encoded_once_per_codec() {
    use roomcast::protocol::Codec;
    let server = Server::start(&[]).await;
    let mut members = Vec::new();
    for i in 0..6 {
        let codec = if i % 2 == 0 {
            Codec::Json
        } else {
            Codec::MsgPack
        };
        let mut c = server.connect_with(&format!("m{i}"), codec).await;
        c.join("table").await;
        members.push(c);
    }
    for n in 0..5 {
        members[0].publish("table", json!(n)).await;
    }
    for c in &mut members {
        for n in 0..5 {
            let got = c
                .recv_matching(|e| matches!(e, ServerEvent::Message { .. }))
                .await;
            assert_eq!(message_data(&got), Some(json!(n)));
        }
    }
    let (_, text) = http_get(&server.http("/metrics")).await;
    let events = metric(&text, "roomcast_room_events_total");
    let encodes = metric(&text, "roomcast_room_encodes_total");
    // Joined events and messages: each encoded at most once per codec, never per member.
    assert!(events >= 5.0, "{text}");
    assert!(
        encodes <= 2.0 * events,
        "{encodes} encodes for {events} events"
    );
    assert!(metric(&text, "roomcast_deliveries_total") >= 30.0, "{text}");
}

/// `GET path` on a fresh connection: the status, or `None` when the TCP
/// connection is refused or dropped without an answer.
async fn status_of(server: &Server, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&server.addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test]
async fn during_the_drain_http_answers_ready_503_and_upgrades_503() {
    let mut server = Server::start(&["--drain-s", "1", "--shutdown-deadline-s", "5"]).await;
    // Enough connections that the drain spreads over its whole second.
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(server.connect(&format!("d{i}")).await);
    }
    server.signal("TERM");
    let signalled = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = status_of(&server, "/ready").await;
    assert!(
        signalled.elapsed() < Duration::from_millis(500),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(ready, Some(503), "/ready during the drain");
    assert_eq!(status_of(&server, "/health").await, Some(200));
    let req = server
        .url(&format!("?token={}", token("late")))
        .into_client_request()
        .expect("request");
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            let body = resp.body().as_deref().unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(body), "server draining");
        }
        Ok(_) => panic!("upgraded during the drain"),
        Err(e) => panic!("upgrade during the drain: {e}"),
    }
    for c in &mut clients {
        let frame = c.closed().await.expect("close frame");
        assert_eq!(u16::from(frame.code), 1001);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exited before the deadline")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    // Once the drain is over the listener is gone.
    assert_eq!(status_of(&server, "/ready").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_of_thousands_of_connections_fits_in_the_drain_period() {
    const N: usize = 2000;
    let mut server = Server::start(&[
        "--drain-s",
        "1",
        "--shutdown-deadline-s",
        "10",
        "--max-connections",
        "5000",
    ])
    .await;
    let url = server.url(&format!("?token={}", token("many")));
    let mut clients = Vec::with_capacity(N);
    // Connected in waves so the listen backlog never overflows.
    for wave in 0..N / 100 {
        let mut opening = Vec::new();
        for i in 0..100 {
            let url = server.url(&format!("?token={}", token(&format!("m{wave}-{i}"))));
            opening.push(tokio::spawn(async move {
                Client::connect(&url, roomcast::protocol::Codec::Json)
                    .await
                    .expect("connect")
            }));
        }
        for o in opening {
            clients.push(o.await.expect("task"));
        }
    }
    drop(url);
    let started = std::time::Instant::now();
    server.signal("TERM");
    let mut drained = Vec::with_capacity(N);
    for mut c in clients {
        drained.push(tokio::spawn(async move {
            let hint = c
                .recv_matching(|e| matches!(e, ServerEvent::Reconnect { .. }))
                .await;
            let ServerEvent::Reconnect { after_ms, .. } = hint else {
                unreachable!("matched above")
            };
            let frame = c.closed().await.expect("close frame");
            assert_eq!(u16::from(frame.code), 1001);
            (after_ms, started.elapsed())
        }));
    }
    let mut after = Vec::with_capacity(N);
    let mut last_close = Duration::ZERO;
    for d in drained {
        let (after_ms, at) = d.await.expect("drained");
        after.push(after_ms);
        last_close = last_close.max(at);
    }
    // The drain period plus slack for a loaded machine; spacing the
    // closes one timer tick apart took over 5 s here.
    assert!(
        last_close < Duration::from_millis(2500),
        "last close after {last_close:?}"
    );
    // Clients are told to come back at spread-out times.
    after.sort_unstable();
    after.dedup();
    assert!(after.len() > 100, "{} distinct delays", after.len());
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exited")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "exit after {:?}",
        started.elapsed()
    );
}
