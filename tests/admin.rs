//! The admin side against real processes: the stats channel, admin
//! commands over WebSocket and HTTP, kicks, drains, and refusals, in
//! cluster mode (two instances and their own `redis-server`) and in
//! standalone mode.

mod common;

use std::time::{Duration, Instant};

use common::*;
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ErrorCode, ServerEvent};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const STATS: &str = "$admin:stats";
/// Stats every 300 ms; heartbeat every 500 ms, dead after 3 s.
const FAST: [&str; 8] = [
    "--admin-stats-interval-ms",
    "300",
    "--redis-heartbeat-ms",
    "500",
    "--redis-heartbeat-ttl-ms",
    "3000",
    "--redis-reaper-ms",
    "300",
];
const INTERVAL: Duration = Duration::from_millis(300);
const HEARTBEAT_TTL: Duration = Duration::from_millis(3000);

fn admin_token() -> String {
    token_with(json!({"sub": "root", "roles": ["admin"]}))
}

async fn connect_token(server: &Server, token: &str) -> Client {
    Client::connect(&server.url(&format!("?token={token}")), Codec::Json)
        .await
        .expect("connect")
}

async fn instance(redis: &Redis, id: &str, extra: &[&str]) -> Server {
    let args: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    Server::clustered(redis, "rc", id, &args).await
}

/// An HTTP request with an optional bearer token: status and JSON body
/// (`Value::Null` when the body is not JSON).
async fn http(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    let a = http_request(method, url, &headers, body.as_bytes()).await;
    (
        a.status,
        serde_json::from_str(&a.body).unwrap_or(Value::Null),
    )
}

/// Sends an `admin` op and returns its answer: `Ok(result)` or the error.
async fn admin_op(c: &mut Client, cmd: &str, args: Value) -> Result<Value, (ErrorCode, String)> {
    match c
        .request(ClientFrame::new("admin").cmd(cmd).data(args))
        .await
    {
        ServerEvent::Admin { result, .. } => Ok(result.to_value().expect("json")),
        ServerEvent::Error { code, text, .. } => Err((code, text.into_owned())),
        other => panic!("admin {cmd}: {other:?}"),
    }
}

/// The next `stats` event's data.
async fn next_stats(c: &mut Client) -> Value {
    match c
        .recv_matching(|e| matches!(e, ServerEvent::Stats { .. }))
        .await
    {
        ServerEvent::Stats { data } => data.to_value().expect("json"),
        _ => unreachable!(),
    }
}

/// Waits for a `stats` event for which `check` holds; the last one seen
/// is in the panic message otherwise.
async fn stats_until(c: &mut Client, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = next_stats(c).await;
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "stats never matched; last: {s:#}"
        );
    }
}

fn instance_of<'a>(stats: &'a Value, id: &str) -> Option<&'a Value> {
    stats["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
}

fn conn_id(c: &Client) -> String {
    match &c.welcome {
        Some(ServerEvent::Welcome { conn, .. }) => conn.to_string(),
        other => panic!("no welcome: {other:?}"),
    }
}

async fn wait_status(url: &str, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, _) = http("GET", url, None, None).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} stayed {status}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn expect_close(c: &mut Client, code: u16, reason: &str) {
    let frame = c.closed().await.expect("close frame");
    assert_eq!(u16::from(frame.code), code, "{frame:?}");
    assert_eq!(frame.reason.as_str(), reason);
}

#[tokio::test]
async fn cluster_admin_sees_and_acts_on_every_instance() {
    let redis = Redis::start().await;
    let a = instance(&redis, "inst-a", &[]).await;
    let mut b = instance(&redis, "inst-b", &[]).await;
    let token = admin_token();

    let mut admin = connect_token(&a, &token).await;
    admin.join(STATS).await;

    // A: the admin and three users; B: two users.
    let mut on_a = Vec::new();
    for u in ["u1", "u2", "u3"] {
        let mut c = a.connect(u).await;
        c.join("lobby").await;
        c.join("room-a").await;
        on_a.push(c);
    }
    let mut u4 = b.connect("u4").await;
    u4.join("lobby").await;
    let mut u5 = b.connect("u5").await;
    u5.join("lobby").await;
    u5.join("room-b").await;

    let s = stats_until(&mut admin, Duration::from_secs(10), |s| {
        instance_of(s, "inst-a").is_some_and(|i| i["connections"] == 4 && i["rooms"] == 2)
            && instance_of(s, "inst-b").is_some_and(|i| i["connections"] == 2 && i["rooms"] == 2)
    })
    .await;
    assert_eq!(s["totals"]["instances"], 2);
    assert_eq!(s["totals"]["connections"], 6.0);
    let a_stats = instance_of(&s, "inst-a").expect("a");
    assert_eq!(a_stats["address"], a.addr.as_str());
    assert_eq!(a_stats["bus"]["mode"], "cluster");
    assert_eq!(a_stats["bus"]["connected"], true);
    assert!(a_stats["rss_bytes"].as_u64().is_some_and(|r| r > 1_000_000));
    assert!(a_stats["uptime_s"].is_u64() && a_stats["version"].is_string());
    assert_eq!(
        s["top_rooms"]["by_members"][0],
        json!({"tenant": "", "room": "lobby", "members": 5})
    );

    // Messages in room-b (on B) show as rates, on A's admin.
    for i in 0..20 {
        u5.publish("room-b", json!(i)).await;
    }
    let s = stats_until(&mut admin, Duration::from_secs(5), |s| {
        s["top_rooms"]["by_rate"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["room"] == "room-b"))
    })
    .await;
    assert!(
        s["totals"]["msgs_in_per_s"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{s:#}"
    );
    assert!(
        instance_of(&s, "inst-b").expect("b")["deliveries_per_s"]
            .as_f64()
            .is_some_and(|x| x > 0.0)
    );

    // Commands over WebSocket: instances and rooms of the whole cluster.
    let list = admin_op(&mut admin, "instances", Value::Null)
        .await
        .expect("instances");
    let ids: Vec<&str> = list["instances"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, ["inst-a", "inst-b"]);
    let rooms = admin_op(&mut admin, "rooms", json!({"limit": 10}))
        .await
        .expect("rooms");
    let mut names: Vec<(String, u64)> = rooms["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| {
            (
                r["room"].as_str().unwrap_or("").to_owned(),
                r["members"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("lobby".into(), 5),
            ("room-a".into(), 3),
            ("room-b".into(), 1)
        ]
    );
    let room = admin_op(&mut admin, "room", json!({"room": "lobby"}))
        .await
        .expect("room");
    assert_eq!(room["count"], 5);

    // A broadcast issued on A reaches every connection on both instances.
    let sent = admin_op(
        &mut admin,
        "broadcast",
        json!({"data": {"notice": "maintenance"}}),
    )
    .await
    .expect("broadcast");
    assert_eq!(sent["local"], 4);
    for c in on_a.iter_mut().chain([&mut u4, &mut u5, &mut admin]) {
        let ev = c
            .recv_matching(|e| matches!(e, ServerEvent::Broadcast { .. }))
            .await;
        let ServerEvent::Broadcast { from, data, .. } = ev else {
            unreachable!()
        };
        assert_eq!(from, "$admin");
        assert_eq!(
            data.to_value().expect("json"),
            json!({"notice": "maintenance"})
        );
    }

    // A kick issued on A closes u4's connection on B with 4002.
    let kicked = admin_op(
        &mut admin,
        "kick_user",
        json!({"user": "u4", "reason": "spam"}),
    )
    .await
    .expect("kick");
    assert_eq!(kicked["kicked_here"], 0);
    expect_close(&mut u4, 4002, "spam").await;

    // One connection by its id, over HTTP on A: u5's on B.
    let id = conn_id(&u5);
    let (status, body) = http(
        "POST",
        &a.http(&format!("/admin/api/connections/{id}/kick")),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    expect_close(&mut u5, 4002, "kicked").await;
    let (status, body) = http(
        "POST",
        &a.http("/admin/api/connections/inst-zz:1/kick"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Drain B from A: B's clients are told to reconnect, B is not ready
    // and refuses upgrades; undrain reverses it.
    let mut u6 = b.connect("u6").await;
    let (status, body) = http(
        "POST",
        &a.http("/admin/api/instances/inst-b/drain"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let hint = u6
        .recv_matching(|e| matches!(e, ServerEvent::Reconnect { .. }))
        .await;
    assert!(matches!(hint, ServerEvent::Reconnect { after_ms, .. } if after_ms >= 100));
    expect_close(&mut u6, 1001, "server draining").await;
    wait_status(&b.http("/ready"), 503, WAIT).await;
    let req = b
        .url(&format!("?token={}", common::token("u7")))
        .into_client_request()
        .expect("request");
    assert_eq!(upgrade_status(req).await, Some(503));
    let s = stats_until(&mut admin, Duration::from_secs(5), |s| {
        instance_of(s, "inst-b").is_some_and(|i| i["draining"] == true)
    })
    .await;
    assert_eq!(instance_of(&s, "inst-a").expect("a")["draining"], false);
    let undrained = admin_op(&mut admin, "undrain", json!({"instance": "inst-b"})).await;
    assert!(undrained.is_ok(), "{undrained:?}");
    wait_status(&b.http("/ready"), 200, WAIT).await;
    let _u7 = b.connect("u7").await;

    // B dies: it leaves the stats within its heartbeat TTL plus one interval.
    let _ = b.child.start_kill();
    let _ = b.child.wait().await;
    let killed = Instant::now();
    stats_until(&mut admin, HEARTBEAT_TTL + INTERVAL, |s| {
        instance_of(s, "inst-b").is_none()
    })
    .await;
    assert!(killed.elapsed() <= HEARTBEAT_TTL + INTERVAL * 2);
    drop(on_a);
}

#[tokio::test]
async fn cluster_rooms_are_paged_with_a_cursor() {
    let redis = Redis::start().await;
    let a = instance(&redis, "page-a", &[]).await;
    let b = instance(&redis, "page-b", &[]).await;
    let mut ca = a.connect("x").await;
    let mut cb = b.connect("y").await;
    let mut want = Vec::new();
    for i in 0..30 {
        let room = format!("r{i:02}");
        if i % 2 == 0 {
            ca.join(&room).await;
        } else {
            cb.join(&room).await;
        }
        want.push(room);
    }
    let token = admin_token();
    let mut seen = Vec::new();
    let mut cursor = "0".to_owned();
    for page in 0.. {
        assert!(page < 100, "paging never ended");
        let (status, body) = http(
            "GET",
            &a.http(&format!("/admin/api/rooms?limit=7&cursor={cursor}")),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        for r in body["rooms"].as_array().expect("rooms") {
            assert_eq!(r["members"], 1);
            seen.push(r["room"].as_str().expect("name").to_owned());
        }
        cursor = body["cursor"].as_str().expect("cursor").to_owned();
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, want);
    let (status, body) = http(
        "GET",
        &a.http("/admin/api/rooms?cursor=abc"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

/// Every admin op and endpoint, for a caller that is not an admin.
#[tokio::test]
async fn non_admins_are_refused_everything() {
    let server = Server::start(&[]).await;
    let mut user = server.connect("mallory").await;
    for frame in [
        ClientFrame::new("join").room(STATS),
        ClientFrame::new("leave").room(STATS),
        ClientFrame::new("publish").room(STATS).data(json!(1)),
        ClientFrame::new("presence").room(STATS),
    ] {
        let ev = user.request(frame.clone()).await;
        assert!(
            matches!(
                ev,
                ServerEvent::Error {
                    code: ErrorCode::Forbidden,
                    ..
                }
            ),
            "{frame:?}: {ev:?}"
        );
    }
    for cmd in [
        "instances",
        "rooms",
        "room",
        "kick_user",
        "kick_conn",
        "drain",
        "undrain",
        "stats",
        "broadcast",
        "nonsense",
    ] {
        let r = admin_op(&mut user, cmd, json!({})).await;
        assert_eq!(r.map_err(|e| e.0), Err(ErrorCode::Forbidden), "{cmd}");
    }
    // Nobody publishes to the stats channel, admins included.
    let mut admin = connect_token(&server, &admin_token()).await;
    admin.join(STATS).await;
    let ev = admin
        .request(ClientFrame::new("publish").room(STATS).data(json!(1)))
        .await;
    assert!(matches!(
        ev,
        ServerEvent::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    // The user never gets stats.
    user.expect_none(Duration::from_millis(2500), |e| {
        matches!(e, ServerEvent::Stats { .. })
    })
    .await;

    let plain = token("mallory");
    let endpoints = [
        ("GET", "/admin/api/instances"),
        ("GET", "/admin/api/stats"),
        ("GET", "/admin/api/rooms"),
        ("GET", "/admin/api/rooms/lobby"),
        ("POST", "/admin/api/users/bob/kick"),
        ("POST", "/admin/api/connections/x:1/kick"),
        ("POST", "/admin/api/instances/x/drain"),
        ("POST", "/admin/api/instances/x/undrain"),
        ("POST", "/admin/api/broadcast"),
        ("GET", "/admin/api/nothing-here"),
    ];
    for (method, path) in endpoints {
        let url = server.http(path);
        let (status, body) = http(method, &url, Some(&plain), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
        let (status, body) = http(method, &url, None, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
        let (status, _) = http(method, &url, Some("not-a-jwt"), None).await;
        assert_eq!(status, 401, "{path}");
    }
    // The server still accepts upgrades: nothing was drained.
    let _again = server.connect("mallory").await;
}

/// A tenant's admin sees and acts on its own tenant only.
#[tokio::test]
async fn tenant_admins_act_on_their_tenant() {
    let server = Server::start(&[]).await;
    let t1 = token_with(json!({"sub": "boss", "roles": ["admin"], "tenant": "t1"}));
    let mut in_t1 = Client::connect(
        &server.url(&format!(
            "?token={}",
            token_with(json!({"sub": "bob", "tenant": "t1"}))
        )),
        Codec::Json,
    )
    .await
    .expect("connect");
    in_t1.join("lobby").await;
    let mut in_t2 = Client::connect(
        &server.url(&format!(
            "?token={}",
            token_with(json!({"sub": "bob", "tenant": "t2"}))
        )),
        Codec::Json,
    )
    .await
    .expect("connect");
    in_t2.join("lobby").await;

    let mut boss = connect_token(&server, &t1).await;
    let ev = boss.request(ClientFrame::new("join").room(STATS)).await;
    assert!(matches!(
        ev,
        ServerEvent::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    for cmd in ["instances", "drain", "undrain", "stats"] {
        let r = admin_op(&mut boss, cmd, json!({})).await;
        assert_eq!(r.map_err(|e| e.0), Err(ErrorCode::Forbidden), "{cmd}");
    }
    let rooms = admin_op(&mut boss, "rooms", json!({}))
        .await
        .expect("rooms");
    assert_eq!(
        rooms["rooms"],
        json!([{"tenant": "t1", "room": "lobby", "members": 1}])
    );
    let r = admin_op(&mut boss, "rooms", json!({"tenant": "t2"})).await;
    assert_eq!(r.map_err(|e| e.0), Err(ErrorCode::Forbidden));
    // A tenant admin's broadcast reaches its tenant only.
    admin_op(&mut boss, "broadcast", json!({"data": "hello t1"}))
        .await
        .expect("broadcast");
    let ev = in_t1
        .recv_matching(|e| matches!(e, ServerEvent::Broadcast { .. }))
        .await;
    assert!(
        matches!(ev, ServerEvent::Broadcast { ref from, .. } if from == "$admin"),
        "{ev:?}"
    );
    let r = admin_op(&mut boss, "broadcast", json!({"data": 1, "tenant": "t2"})).await;
    assert_eq!(r.map_err(|e| e.0), Err(ErrorCode::Forbidden));

    // Kicking `bob` reaches t1's bob only.
    admin_op(&mut boss, "kick_user", json!({"user": "bob"}))
        .await
        .expect("kick");
    expect_close(&mut in_t1, 4002, "kicked").await;
    let pong = in_t2.request(ClientFrame::new("ping")).await;
    assert!(matches!(pong, ServerEvent::Pong { .. }), "{pong:?}");
    in_t2
        .expect_none(Duration::from_millis(200), |e| {
            matches!(e, ServerEvent::Broadcast { .. })
        })
        .await;
    // Another tenant's connection is not found.
    let r = admin_op(&mut boss, "kick_conn", json!({"conn": conn_id(&in_t2)})).await;
    assert_eq!(r.map_err(|e| e.0), Err(ErrorCode::NotFound));
}

#[tokio::test]
async fn standalone_admin_sees_itself_and_commands_work() {
    let server = Server::start(&["--admin-stats-interval-ms", "300"]).await;
    let token = admin_token();
    let mut admin = connect_token(&server, &token).await;
    admin.join(STATS).await;
    let mut users = Vec::new();
    for i in 0..5 {
        let mut c = server.connect(&format!("s{i}")).await;
        c.join(&format!("room-{}", i % 3)).await;
        users.push(c);
    }
    let s = stats_until(&mut admin, Duration::from_secs(5), |s| {
        s["totals"]["connections"] == 6.0
    })
    .await;
    assert_eq!(s["totals"]["instances"], 1);
    assert_eq!(s["instances"][0]["rooms"], 3);
    assert_eq!(s["instances"][0]["bus"]["mode"], "standalone");
    assert_eq!(s["interval_ms"], 300);

    // Rooms, paged by name.
    let mut seen = Vec::new();
    let mut cursor = json!("0");
    loop {
        let page = admin_op(&mut admin, "rooms", json!({"limit": 2, "cursor": cursor}))
            .await
            .expect("rooms");
        for r in page["rooms"].as_array().expect("rooms") {
            seen.push(r["room"].as_str().expect("room").to_owned());
        }
        cursor = page["cursor"].clone();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen, ["room-0", "room-1", "room-2"]);

    // Bad requests are told apart.
    let bad = [
        ("rooms", json!({"limit": 0}), ErrorCode::BadRequest),
        ("rooms", json!({"limit": "x"}), ErrorCode::BadRequest),
        ("room", json!({}), ErrorCode::BadRequest),
        (
            "room",
            json!({"room": "no such room"}),
            ErrorCode::InvalidRoom,
        ),
        ("room", json!({"room": "empty"}), ErrorCode::NotFound),
        ("kick_user", json!({}), ErrorCode::BadRequest),
        (
            "kick_conn",
            json!({"conn": "nonsense"}),
            ErrorCode::BadRequest,
        ),
        (
            "drain",
            json!({"instance": "elsewhere"}),
            ErrorCode::NotFound,
        ),
        ("nonsense", json!({}), ErrorCode::BadRequest),
        ("broadcast", json!({}), ErrorCode::BadRequest),
        ("instances", json!([1]), ErrorCode::BadRequest),
    ];
    for (cmd, args, code) in bad {
        let r = admin_op(&mut admin, cmd, args.clone()).await;
        assert_eq!(r.map_err(|e| e.0), Err(code), "{cmd} {args}");
    }
    let ev = admin.request(ClientFrame::new("admin")).await;
    assert!(matches!(
        ev,
        ServerEvent::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    let (status, body) = http(
        "POST",
        &server.http("/admin/api/users/x/kick"),
        Some(&token),
        Some(&json!([1])),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, body) = http(
        "GET",
        &server.http("/admin/api/rooms/room-1"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mut users_in: Vec<&str> = body["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    users_in.sort();
    assert_eq!(users_in, ["s1", "s4"]);
    assert_eq!(body["count"], 2);

    // A kick by connection id.
    let victim = users.pop().expect("user");
    let mut victim = victim;
    admin_op(
        &mut admin,
        "kick_conn",
        json!({"conn": conn_id(&victim), "reason": "bye"}),
    )
    .await
    .expect("kick");
    expect_close(&mut victim, 4002, "bye").await;

    // Draining itself: the admin's own connection is told to reconnect too.
    let drained = admin_op(&mut admin, "drain", json!({}))
        .await
        .expect("drain");
    assert_eq!(drained["changed"], true);
    wait_status(&server.http("/ready"), 503, WAIT).await;
    let mut first = users.remove(0);
    first
        .recv_matching(|e| matches!(e, ServerEvent::Reconnect { .. }))
        .await;
    expect_close(&mut first, 1001, "server draining").await;
    let (status, body) = http(
        "POST",
        &server.http(&format!(
            "/admin/api/instances/{}/undrain",
            instance_id(&admin)
        )),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    wait_status(&server.http("/ready"), 200, WAIT).await;
    let _back = server.connect("s9").await;
}

fn instance_id(c: &Client) -> String {
    match &c.welcome {
        Some(ServerEvent::Welcome { instance, .. }) => instance.to_string(),
        other => panic!("no welcome: {other:?}"),
    }
}

/// The dashboard and its assets are served by the binary itself.
#[tokio::test]
async fn dashboard_is_served() {
    let server = Server::start(&[]).await;
    let (status, page) = http_get(&server.http("/admin")).await;
    assert_eq!(status, 200);
    assert!(page.contains("assets/admin.js"), "{page}");
    let (status, js) = http_get(&server.http("/admin/assets/admin.js")).await;
    assert_eq!(status, 200);
    assert!(js.contains("$admin:stats"));
    let (status, _) = http_get(&server.http("/admin/assets/admin.css")).await;
    assert_eq!(status, 200);
    let (status, _) = http_get(&server.http("/admin/assets/nope.js")).await;
    assert_eq!(status, 404);
}

/// Instances gather and share figures only while an admin watches: no
/// admin key exists in Redis before the first subscriber, every instance
/// shares its figures while one watches, and they expire after it leaves.
#[tokio::test]
async fn figures_are_gathered_only_while_an_admin_watches() {
    let redis = Redis::start().await;
    let a = instance(&redis, "idle-a", &[]).await;
    let _b = instance(&redis, "idle-b", &[]).await;
    let admin_keys = || {
        let mut keys: Vec<String> = redis
            .cli(&["--scan", "--pattern", "rc:admin:*"])
            .lines()
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    };
    tokio::time::sleep(INTERVAL * 4).await;
    assert!(admin_keys().is_empty(), "{:?}", admin_keys());

    let mut admin = connect_token(&a, &admin_token()).await;
    admin.join(STATS).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = [
        "rc:admin:stats:idle-a",
        "rc:admin:stats:idle-b",
        "rc:admin:watch",
    ];
    while admin_keys() != want {
        assert!(Instant::now() < deadline, "{:?}", admin_keys());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    admin.request(ClientFrame::new("leave").room(STATS)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !admin_keys().is_empty() {
        assert!(Instant::now() < deadline, "{:?}", admin_keys());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it stays idle.
    tokio::time::sleep(INTERVAL * 4).await;
    assert!(admin_keys().is_empty(), "{:?}", admin_keys());
    // The stats events sent before the leave were read; none come after.
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin.try_recv(INTERVAL * 2).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "stats keep coming after the leave"
        );
    }
}
