//! The server API (`/api/`): real instances, a real redis-server, real
//! WebSocket clients, and HTTP requests written by hand.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use roomcast::protocol::{Codec, ServerEvent};
use serde_json::{Value, json};

const KEY: &str = "api-key-0123456789abcdef";
const OLD_KEY: &str = "api-key-old-0123456789";

/// An HTTP answer: status, lower-cased headers, body as JSON (Null if none).
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Value,
}

/// One HTTP/1.1 request on a fresh connection.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let a = http_request(method, &format!("http://{addr}{path}"), headers, body).await;
    let body = if a.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&a.body).unwrap_or(Value::String(a.body))
    };
    Answer {
        status: a.status,
        headers: a.headers,
        body,
    }
}

async fn post_as(server: &Server, credential: &str, path: &str, body: Value) -> Answer {
    let auth = format!("Bearer {credential}");
    http(
        &server.addr,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

async fn post(server: &Server, path: &str, body: Value) -> Answer {
    post_as(server, KEY, path, body).await
}

async fn cluster(redis: &Redis) -> (Server, Server) {
    let keys = format!("{OLD_KEY},{KEY}");
    let args = ["--redis", &redis.url(), "--api-keys", &keys];
    (Server::start(&args).await, Server::start(&args).await)
}

fn error_code(a: &Answer) -> &str {
    a.body["error"]["code"].as_str().unwrap_or("")
}

fn message_from_server(room: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, ServerEvent::Message { room: r, from, .. } if r == room && from == "$server")
}

/// (mid, ts, data) of a message, direct or broadcast event.
fn stamp(e: &Event) -> (String, u64, Value) {
    match e {
        ServerEvent::Message { mid, ts, data, .. }
        | ServerEvent::Direct { mid, ts, data, .. }
        | ServerEvent::Broadcast { mid, ts, data, .. } => {
            (mid.to_string(), *ts, data.to_value().expect("data"))
        }
        other => panic!("not a message: {other:?}"),
    }
}

#[tokio::test]
async fn a_publish_to_one_instance_reaches_members_on_both_in_both_codecs() {
    let redis = Redis::start().await;
    let (a, b) = cluster(&redis).await;
    let mut members = vec![
        a.connect_with("alice", Codec::Json).await,
        a.connect_with("amy", Codec::MsgPack).await,
        b.connect_with("bob", Codec::Json).await,
        b.connect_with("bea", Codec::MsgPack).await,
    ];
    for m in &mut members {
        m.join("lobby").await;
    }
    let res = post(
        &a,
        "/api/publish",
        json!({"room": "lobby", "data": {"turn": 3}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body["status"], "published");
    let mid = res.body["mid"].as_str().expect("mid").to_owned();
    let ts = res.body["ts"].as_u64().expect("ts");
    for m in &mut members {
        let ev = m.recv_matching(message_from_server("lobby")).await;
        assert_eq!(stamp(&ev), (mid.clone(), ts, json!({"turn": 3})));
    }
    // The old key of a rotation works as well.
    let res = post_as(
        &b,
        OLD_KEY,
        "/api/publish",
        json!({"room": "lobby", "data": 1}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    for m in &mut members {
        m.recv_matching(message_from_server("lobby")).await;
    }
}

#[tokio::test]
async fn send_reaches_a_user_on_the_other_instance_or_queues_for_an_offline_one() {
    let redis = Redis::start().await;
    let (a, b) = cluster(&redis).await;
    let mut bob = b.connect("bob").await;
    let res = post(
        &a,
        "/api/send",
        json!({"user": "bob", "data": {"your": "turn"}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body["status"], "delivered");
    let ev = bob
        .recv_matching(
            |e| matches!(e, ServerEvent::Direct { from, queued: false, .. } if from == "$server"),
        )
        .await;
    assert_eq!(stamp(&ev).0, res.body["mid"].as_str().expect("mid"));

    let res = post(
        &b,
        "/api/send",
        json!({"user": "zed", "data": "while you were away"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body["status"], "queued");
    let mut zed = a.connect("zed").await;
    let ev = zed
        .recv_matching(|e| matches!(e, ServerEvent::Direct { queued: true, .. }))
        .await;
    assert_eq!(
        stamp(&ev),
        (
            res.body["mid"].as_str().expect("mid").to_owned(),
            res.body["ts"].as_u64().expect("ts"),
            json!("while you were away")
        )
    );
}

#[tokio::test]
async fn a_tenant_broadcast_reaches_only_that_tenant_and_all_reaches_everyone() {
    let redis = Redis::start().await;
    let (a, b) = cluster(&redis).await;
    let connect = |s: &Server, sub: &str, tenant: Option<&str>| {
        let claims = match tenant {
            Some(t) => json!({"sub": sub, "tenant": t}),
            None => json!({"sub": sub}),
        };
        let url = s.url(&format!("?token={}", token_with(claims)));
        async move { Client::connect(&url, Codec::Json).await.expect("connect") }
    };
    let mut acme_a = connect(&a, "u1", Some("acme")).await;
    let mut acme_b = connect(&b, "u2", Some("acme")).await;
    let mut other = connect(&a, "u3", Some("other")).await;
    let mut default = connect(&b, "u4", None).await;
    let is_broadcast =
        |e: &Event| matches!(e, ServerEvent::Broadcast { from, .. } if from == "$server");

    let res = post(
        &a,
        "/api/broadcast",
        json!({"tenant": "acme", "data": {"restart": 5}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body["status"], "broadcast");
    for c in [&mut acme_a, &mut acme_b] {
        let ev = c.recv_matching(is_broadcast).await;
        assert_eq!(stamp(&ev).0, res.body["mid"].as_str().expect("mid"));
    }
    other
        .expect_none(Duration::from_millis(300), is_broadcast)
        .await;
    default
        .expect_none(Duration::from_millis(10), is_broadcast)
        .await;

    // A token scoped to tenant acme broadcasts inside it only.
    let acme_server = token_with(json!({"sub": "backend", "roles": ["server"], "tenant": "acme"}));
    let res = post_as(
        &b,
        &acme_server,
        "/api/broadcast",
        json!({"all": true, "data": 1}),
    )
    .await;
    assert_eq!((res.status, error_code(&res)), (403, "tenant_forbidden"));
    let res = post_as(&b, &acme_server, "/api/broadcast", json!({"data": 2})).await;
    assert_eq!(res.status, 200, "{}", res.body);
    for c in [&mut acme_a, &mut acme_b] {
        assert_eq!(stamp(&c.recv_matching(is_broadcast).await).2, json!(2));
    }

    let res = post(
        &b,
        "/api/broadcast",
        json!({"all": true, "data": "everyone"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    for c in [&mut acme_a, &mut acme_b, &mut other, &mut default] {
        assert_eq!(
            stamp(&c.recv_matching(is_broadcast).await).2,
            json!("everyone")
        );
    }
    other
        .expect_none(Duration::from_millis(200), is_broadcast)
        .await;
}

#[tokio::test]
async fn a_batch_of_1000_publishes_arrives_complete_and_in_order_per_room() {
    let redis = Redis::start().await;
    let (a, b) = cluster(&redis).await;
    let rooms: Vec<String> = (0..10).map(|r| format!("table:{r}")).collect();
    let mut on_a = a.connect("watcher-a").await;
    let mut on_b = b.connect_with("watcher-b", Codec::MsgPack).await;
    for room in &rooms {
        on_a.join(room).await;
        on_b.join(room).await;
    }
    let items: Vec<Value> = (0..1000)
        .map(|n| json!({"op": "publish", "room": rooms[n % 10], "data": {"n": n}}))
        .collect();
    let res = post(&a, "/api/batch", json!({ "items": items })).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let results = res.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r["status"] == "published"));
    for c in [&mut on_a, &mut on_b] {
        let mut last: HashMap<String, i64> = HashMap::new();
        for _ in 0..1000 {
            let ev = c
                .recv_matching(
                    |e| matches!(e, ServerEvent::Message { from, .. } if from == "$server"),
                )
                .await;
            let ServerEvent::Message {
                room, data, mid, ..
            } = &ev
            else {
                unreachable!()
            };
            let n = data.to_value().expect("data")["n"].as_i64().expect("n");
            assert_eq!(rooms[n as usize % 10], **room);
            assert_eq!(results[n as usize]["mid"], **mid);
            let prev = last.insert(room.to_string(), n).unwrap_or(-1);
            assert!(n > prev, "{room}: {n} after {prev}");
        }
        c.expect_none(Duration::from_millis(200), |e| {
            matches!(e, ServerEvent::Message { .. })
        })
        .await;
    }
}

#[tokio::test]
async fn a_retried_idempotent_request_delivers_once_on_either_instance() {
    let redis = Redis::start().await;
    let (a, b) = cluster(&redis).await;
    let mut member = b.connect("carol").await;
    member.join("lobby").await;
    let body = json!({"room": "lobby", "data": {"once": true}}).to_string();
    let headers = [
        ("Authorization", &*format!("Bearer {KEY}")),
        ("Idempotency-Key", "order-42"),
    ];
    let first = http(&a.addr, "POST", "/api/publish", &headers, body.as_bytes()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(!first.headers.contains_key("idempotent-replayed"));
    for server in [&a, &b] {
        let again = http(
            &server.addr,
            "POST",
            "/api/publish",
            &headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(again.status, 200);
        assert_eq!(again.body, first.body);
        assert_eq!(
            again.headers.get("idempotent-replayed").map(String::as_str),
            Some("true")
        );
    }
    member.recv_matching(message_from_server("lobby")).await;
    member
        .expect_none(Duration::from_millis(500), |e| {
            matches!(e, ServerEvent::Message { .. })
        })
        .await;
    // The same key with another request is refused.
    let other = json!({"room": "lobby", "data": {"once": false}}).to_string();
    let res = http(&b.addr, "POST", "/api/publish", &headers, other.as_bytes()).await;
    assert_eq!(
        (res.status, error_code(&res)),
        (422, "idempotency_key_reused")
    );
    // A batch too: a retry replays every result.
    let headers = [
        ("Authorization", &*format!("Bearer {KEY}")),
        ("Idempotency-Key", "batch-7"),
    ];
    let batch = json!({"items": [
        {"op": "publish", "room": "lobby", "data": 1},
        {"op": "send", "user": "carol", "data": 2}
    ]})
    .to_string();
    let first = http(&b.addr, "POST", "/api/batch", &headers, batch.as_bytes()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["results"][1]["status"], "delivered");
    let again = http(&a.addr, "POST", "/api/batch", &headers, batch.as_bytes()).await;
    assert_eq!(again.body, first.body);
    member.recv_matching(message_from_server("lobby")).await;
    member
        .recv_matching(|e| matches!(e, ServerEvent::Direct { .. }))
        .await;
    member
        .expect_none(Duration::from_millis(500), |e| {
            matches!(e, ServerEvent::Message { .. } | ServerEvent::Direct { .. })
        })
        .await;
}

#[tokio::test]
async fn members_are_counted_cluster_wide() {
    let redis = Redis::start().await;
    let (a, b) = cluster(&redis).await;
    let mut x = a.connect("xena").await;
    let mut y = b.connect("yuri").await;
    let mut y2 = a.connect("yuri").await;
    for c in [&mut x, &mut y, &mut y2] {
        c.join("hall").await;
    }
    let auth = format!("Bearer {KEY}");
    let res = http(
        &b.addr,
        "GET",
        "/api/rooms/hall/members",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body["count"], 2);
    let mut users: Vec<String> = serde_json::from_value(res.body["users"].clone()).expect("users");
    users.sort();
    assert_eq!(users, ["xena", "yuri"]);
    let res = http(
        &a.addr,
        "GET",
        "/api/rooms/hall/members?tenant=other",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!((res.status, res.body["count"].as_u64()), (200, Some(0)));
    let res = http(
        &a.addr,
        "GET",
        "/api/rooms/bad%20room/members",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!((res.status, error_code(&res)), (400, "invalid_room"));
}

/// The Redis contract: a service that never calls HTTP publishes, sends
/// and broadcasts with FCALL, over the Redis protocol.
#[tokio::test]
async fn the_redis_function_library_emits_without_http() {
    use fred::interfaces::{ClientLike, FunctionInterface};
    use fred::prelude::{Builder, Config};

    let redis = Redis::start().await;
    let (a, b) = cluster(&redis).await;
    let mut on_a = a.connect("ann").await;
    let mut on_b = b.connect_with("ben", Codec::MsgPack).await;
    on_a.join("arena").await;
    on_b.join("arena").await;

    let client = Builder::from_config(Config::from_url(&redis.url()).expect("url"))
        .build()
        .expect("client");
    client.init().await.expect("connect to redis");
    let no_keys: Vec<String> = Vec::new();
    let (mid, ts): (String, u64) = client
        .fcall(
            "roomcast_v1_publish",
            no_keys.clone(),
            vec!["roomcast", "", "arena", r#"{"wave": 2}"#],
        )
        .await
        .expect("publish");
    for c in [&mut on_a, &mut on_b] {
        let ev = c.recv_matching(message_from_server("arena")).await;
        assert_eq!(stamp(&ev), (mid.clone(), ts, json!({"wave": 2})));
    }

    let (status, mid, _): (String, String, u64) = client
        .fcall(
            "roomcast_v1_send",
            no_keys.clone(),
            vec!["roomcast", "", "ben", "7"],
        )
        .await
        .expect("send");
    assert_eq!(status, "delivered");
    let ev = on_b
        .recv_matching(|e| matches!(e, ServerEvent::Direct { from, .. } if from == "$server"))
        .await;
    assert_eq!(stamp(&ev).0, mid);

    let (status, mid, _): (String, String, u64) = client
        .fcall(
            "roomcast_v1_send",
            no_keys.clone(),
            vec!["roomcast", "", "cy", r#""later""#],
        )
        .await
        .expect("send");
    assert_eq!(status, "queued");
    let mut cy = b.connect("cy").await;
    let ev = cy
        .recv_matching(|e| matches!(e, ServerEvent::Direct { queued: true, .. }))
        .await;
    let (queued_mid, _, data) = stamp(&ev);
    assert_eq!((queued_mid, data), (mid, json!("later")));

    let (mid, _): (String, u64) = client
        .fcall(
            "roomcast_v1_broadcast",
            no_keys.clone(),
            vec!["roomcast", "*", "null"],
        )
        .await
        .expect("broadcast");
    for c in [&mut on_a, &mut on_b, &mut cy] {
        let ev = c
            .recv_matching(|e| matches!(e, ServerEvent::Broadcast { .. }))
            .await;
        assert_eq!(stamp(&ev).0, mid);
    }

    // Refusals are Redis errors, and nothing is published.
    for args in [
        vec!["roomcast", "", "bad room", "1"],
        vec!["roomcast", "", "arena", "{not json"],
        vec!["roomcast", "a/b", "arena", "1"],
        vec!["nobody-here", "", "arena", "1"],
    ] {
        let r: Result<fred::types::Value, _> = client
            .fcall("roomcast_v1_publish", no_keys.clone(), args.clone())
            .await;
        assert!(r.is_err(), "{args:?} was accepted");
    }
    on_a.expect_none(Duration::from_millis(300), |e| {
        matches!(e, ServerEvent::Message { .. })
    })
    .await;
    let _ = client.quit().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_code_and_delivers_nothing() {
    let server = Server::start_env(
        &[
            "--api-keys",
            KEY,
            "--api-max-batch",
            "5",
            "--api-max-body-bytes",
            "4000",
            "--max-message-bytes",
            "1000",
        ],
        &[("ROOMCAST_LOG", "debug")],
    )
    .await;
    let mut member = server.connect("mo").await;
    member.join("lobby").await;
    let addr = &server.addr;
    let auth = format!("Bearer {KEY}");
    let with_key = [("Authorization", auth.as_str())];

    let res = http(
        addr,
        "POST",
        "/api/publish",
        &[],
        br#"{"room":"lobby","data":1}"#,
    )
    .await;
    assert_eq!((res.status, error_code(&res)), (401, "unauthorized"));
    assert_eq!(
        res.headers.get("www-authenticate").map(String::as_str),
        Some("Bearer")
    );
    let res = post_as(
        &server,
        "not-a-key-or-a-token",
        "/api/publish",
        json!({"room": "lobby", "data": 1}),
    )
    .await;
    assert_eq!((res.status, error_code(&res)), (401, "unauthorized"));
    let client_token = token("mo");
    let res = post_as(
        &server,
        &client_token,
        "/api/publish",
        json!({"room": "lobby", "data": 1}),
    )
    .await;
    assert_eq!((res.status, error_code(&res)), (403, "forbidden"));
    let t1 = token_with(json!({"sub": "svc", "roles": ["server"], "tenant": "t1"}));
    let res = post_as(
        &server,
        &t1,
        "/api/publish",
        json!({"room": "lobby", "tenant": "t2", "data": 1}),
    )
    .await;
    assert_eq!((res.status, error_code(&res)), (403, "tenant_forbidden"));

    let cases: [(&str, &[u8], u16, &str); 12] = [
        (
            "/api/publish",
            br#"{"room":"lobby","data":"#,
            400,
            "malformed_json",
        ),
        (
            "/api/publish",
            br#"{"room":"lobby","data":1,"extra":2}"#,
            400,
            "invalid_body",
        ),
        ("/api/publish", br#"{"room":"lobby"}"#, 400, "invalid_body"),
        (
            "/api/publish",
            br#"{"room":"no/slash","data":1}"#,
            400,
            "invalid_room",
        ),
        (
            "/api/publish",
            br#"{"room":"lobby","data":1,"tenant":"a b"}"#,
            400,
            "invalid_tenant",
        ),
        ("/api/send", br#"{"user":"","data":1}"#, 400, "invalid_user"),
        (
            "/api/send",
            br#"{"user":"$admin","data":1}"#,
            400,
            "invalid_user",
        ),
        ("/api/broadcast", br#"{"data":1}"#, 400, "invalid_audience"),
        ("/api/batch", br#"{"items":[]}"#, 400, "empty_batch"),
        (
            "/api/batch",
            br#"{"items":[{"op":"shout","data":1}]}"#,
            400,
            "invalid_body",
        ),
        (
            "/api/batch",
            br#"{"items":[{"op":"publish","user":"x","room":"lobby","data":1}]}"#,
            400,
            "invalid_body",
        ),
        ("/api/nothing", b"{}", 404, "not_found"),
    ];
    for (path, body, status, code) in cases {
        let res = http(addr, "POST", path, &with_key, body).await;
        assert_eq!(
            (res.status, error_code(&res)),
            (status, code),
            "{path} {}",
            String::from_utf8_lossy(body)
        );
    }
    let big = json!({"room": "lobby", "data": "x".repeat(5000)});
    let res = post(&server, "/api/publish", big).await;
    assert_eq!((res.status, error_code(&res)), (413, "body_too_large"));
    let big_data = json!({"room": "lobby", "data": "x".repeat(1500)});
    let res = post(&server, "/api/publish", big_data).await;
    assert_eq!((res.status, error_code(&res)), (413, "data_too_large"));
    let six: Vec<Value> = (0..6)
        .map(|_| json!({"op": "publish", "room": "lobby", "data": 1}))
        .collect();
    let res = post(&server, "/api/batch", json!({ "items": six })).await;
    assert_eq!((res.status, error_code(&res)), (413, "batch_too_large"));
    // One bad item refuses the whole batch, naming it.
    let items = json!({"items": [
        {"op": "publish", "room": "lobby", "data": 1},
        {"op": "publish", "room": "lobby", "data": 2},
        {"op": "publish", "room": "lob by", "data": 3}
    ]});
    let res = post(&server, "/api/batch", items).await;
    assert_eq!((res.status, error_code(&res)), (400, "invalid_room"));
    assert_eq!(res.body["error"]["index"], 2);
    let res = http(
        addr,
        "POST",
        "/api/publish",
        &[("Authorization", &auth), ("Idempotency-Key", "has space")],
        b"{}",
    )
    .await;
    assert_eq!(
        (res.status, error_code(&res)),
        (400, "invalid_idempotency_key")
    );
    let res = http(addr, "GET", "/api/publish", &with_key, b"").await;
    assert_eq!((res.status, error_code(&res)), (405, "method_not_allowed"));

    member
        .expect_none(Duration::from_millis(500), |e| {
            matches!(
                e,
                ServerEvent::Message { .. }
                    | ServerEvent::Direct { .. }
                    | ServerEvent::Broadcast { .. }
            )
        })
        .await;
    let metrics = http_get(&server.http("/metrics")).await.1;
    assert!(metric(&metrics, "roomcast_api_errors_total") >= 20.0);
    // Credentials never reach the log, even with every request refused.
    let log = server.log.text();
    assert!(!log.contains(KEY) && !log.contains(&t1) && !log.contains(&client_token));
}

#[tokio::test]
async fn standalone_mode_serves_the_whole_api() {
    let server = Server::start(&["--api-keys", KEY]).await;
    let mut one = server.connect("one").await;
    let mut two = server.connect_with("two", Codec::MsgPack).await;
    one.join("room").await;
    two.join("room").await;
    let res = post(
        &server,
        "/api/publish",
        json!({"room": "room", "data": [1, 2]}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    for c in [&mut one, &mut two] {
        let ev = c.recv_matching(message_from_server("room")).await;
        assert_eq!(stamp(&ev).0, res.body["mid"].as_str().expect("mid"));
    }
    let res = post(&server, "/api/send", json!({"user": "two", "data": 1})).await;
    assert_eq!(res.body["status"], "delivered");
    two.recv_matching(|e| matches!(e, ServerEvent::Direct { .. }))
        .await;
    let res = post(&server, "/api/send", json!({"user": "three", "data": 3})).await;
    assert_eq!(res.body["status"], "queued");
    let mut three = server.connect("three").await;
    three
        .recv_matching(|e| matches!(e, ServerEvent::Direct { queued: true, .. }))
        .await;
    let res = post(
        &server,
        "/api/broadcast",
        json!({"tenant": "", "data": "hi"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    for c in [&mut one, &mut two, &mut three] {
        c.recv_matching(|e| matches!(e, ServerEvent::Broadcast { .. }))
            .await;
    }
    let auth = format!("Bearer {KEY}");
    let res = http(
        &server.addr,
        "GET",
        "/api/rooms/room/members",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(res.body["count"], 2);
    let headers = [("Authorization", auth.as_str()), ("Idempotency-Key", "k1")];
    let body = br#"{"room":"room","data":"once"}"#;
    let first = http(&server.addr, "POST", "/api/publish", &headers, body).await;
    let again = http(&server.addr, "POST", "/api/publish", &headers, body).await;
    assert_eq!((first.status, &first.body), (again.status, &again.body));
    one.recv_matching(message_from_server("room")).await;
    one.expect_none(Duration::from_millis(300), |e| {
        matches!(e, ServerEvent::Message { .. })
    })
    .await;
}

/// Every path and method proto/openapi.json documents is served (and
/// guarded: 401 without a credential); an undocumented one is not.
#[tokio::test]
async fn the_documented_routes_are_served() {
    let server = Server::start(&["--api-keys", KEY]).await;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/openapi.json"))
        .expect("openapi.json");
    let doc: Value = serde_json::from_str(&text).expect("json");
    let mut seen = 0;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        let path = path.replace("{room}", "lobby");
        for method in ops.as_object().expect("ops").keys() {
            let res = http(&server.addr, &method.to_uppercase(), &path, &[], b"{}").await;
            assert_eq!(
                (res.status, error_code(&res)),
                (401, "unauthorized"),
                "{method} {path}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, roomcast::api::ROUTES.len());
    let res = http(&server.addr, "POST", "/api/rooms", &[], b"{}").await;
    assert_eq!(res.status, 404);
}
