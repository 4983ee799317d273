//! The deploy config under test: a real nginx, configured from
//! `deploy/nginx/roomcast.conf`, in front of two cluster instances sharing
//! one test `redis-server`, all on free ports. The config is rendered the
//! way its header describes (upstream `server` line per instance, `# tls`
//! lines dropped, `# plain-http` listen address and `# access-log` path
//! replaced), so every other line of the deploy file is what this test runs.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ServerEvent};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const DEPLOY_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/roomcast.conf");
/// The whole test, start to finish.
const BUDGET: Duration = Duration::from_secs(30);
const AFFINITY_COOKIE: &str = "roomcast_affinity";

/// Replaces the first argument of `directive` on `line`.
fn replace_arg(line: &str, directive: &str, value: &str) -> String {
    let at = line
        .find(directive)
        .unwrap_or_else(|| panic!("`{directive}` on {line:?}"));
    let rest = &line[at + directive.len()..];
    let arg_start = rest.len() - rest.trim_start().len();
    let arg_len = rest[arg_start..]
        .find(|c: char| c == ';' || c.is_whitespace())
        .unwrap_or_else(|| panic!("no argument on {line:?}"));
    let tail = &rest[arg_start + arg_len..];
    format!("{}{directive} {value}{tail}", &line[..at])
}

/// Renders the deploy file for local use, as its header describes.
fn render(template: &str, upstreams: &[String], listen: &str, access_log: &str) -> String {
    let mut out = Vec::new();
    let mut in_servers = false;
    let mut server_line: Option<&str> = None;
    // Which markers were found: upstream servers, tls, plain-http, access-log.
    let mut saw = [false; 4];
    for line in template.lines() {
        let s = line.trim();
        if s == "# BEGIN upstream servers" {
            in_servers = true;
            out.push(line.to_owned());
        } else if s == "# END upstream servers" {
            let tmpl = server_line.expect("a `server` line between the upstream markers");
            for addr in upstreams {
                out.push(replace_arg(tmpl, "server", addr));
            }
            in_servers = false;
            saw[0] = true;
            out.push(line.to_owned());
        } else if in_servers {
            if server_line.is_none() && s.starts_with("server ") {
                server_line = Some(line);
            }
        } else if s.ends_with("# tls") {
            saw[1] = true;
        } else if s.ends_with("# plain-http") {
            out.push(replace_arg(line, "listen", listen));
            saw[2] = true;
        } else if s.ends_with("# access-log") {
            out.push(replace_arg(line, "access_log", access_log));
            saw[3] = true;
        } else {
            out.push(line.to_owned());
        }
    }
    assert_eq!(
        saw, [true; 4],
        "deploy/nginx/roomcast.conf lost a rendering marker \
         (upstream servers, tls, plain-http, access-log)"
    );
    out.join("\n") + "\n"
}

/// A directory of this test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "roomcast-nginx-test-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An nginx master process started by this test; stopped (SIGTERM, which
/// also stops its workers) when dropped.
struct Nginx {
    child: std::process::Child,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    fn start(upstreams: &[String]) -> Nginx {
        let bin = common::binary("nginx", "nginx-light");
        let dir = TempDir::new();
        let port = free_port();
        let template = std::fs::read_to_string(DEPLOY_CONF).expect("read deploy config");
        let site = dir.0.join("roomcast.conf");
        std::fs::write(
            &site,
            render(
                &template,
                upstreams,
                &format!("127.0.0.1:{port}"),
                &dir.0.join("access.log").display().to_string(),
            ),
        )
        .expect("write site");
        let conf = common::nginx_main(&dir.0, &site);
        let stderr = std::fs::File::create(dir.0.join("error.log")).expect("error log");
        let child = std::process::Command::new(&bin)
            .arg("-p")
            .arg(&dir.0)
            .args(["-e", "stderr", "-c"])
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut nginx = Nginx { child, port, dir };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = nginx.child.try_wait().expect("try_wait") {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("access.log")).unwrap_or_default()
    }

    fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn ws_request(&self, user: &str, cookie: Option<&str>) -> Request {
        let url = format!("ws://127.0.0.1:{}/ws?token={}", self.port, token(user));
        let mut req = url.into_client_request().expect("request");
        let h = req.headers_mut();
        h.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(Codec::Json.subprotocol()),
        );
        if let Some(c) = cookie {
            h.insert("Cookie", HeaderValue::from_str(c).expect("cookie"));
        }
        req
    }

    /// A protocol client through nginx, optionally carrying an affinity cookie.
    async fn client(&self, user: &str, cookie: Option<&str>) -> Client {
        Client::connect_request(self.ws_request(user, cookie), Codec::Json)
            .await
            .expect("connect through nginx")
    }

    /// One upgrade through nginx: the instance from `welcome` and the
    /// affinity cookie nginx set (`name=value`), if any. The socket is closed.
    async fn upgrade(&self, user: &str, cookie: Option<&str>) -> (String, Option<String>) {
        let (mut ws, resp) = tokio_tungstenite::connect_async(self.ws_request(user, cookie))
            .await
            .expect("upgrade through nginx");
        let set_cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(AFFINITY_COOKIE))
            .map(|v| v.split(';').next().unwrap_or(v).to_owned());
        let instance = loop {
            let msg = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("welcome in time")
                .expect("open")
                .expect("frame");
            if let Message::Text(t) = msg {
                let ev: Event = Codec::Json.decode(t.as_bytes()).expect("event");
                match ev {
                    ServerEvent::Welcome { instance, .. } => break instance.into_owned(),
                    other => panic!("first event: {other:?}"),
                }
            }
        };
        // Wait for the server's close, so this connection no longer counts
        // against the instance's limit when the next upgrade arrives.
        let _ = ws.close(None).await;
        let _ =
            tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
        (instance, set_cookie)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn instance_of(client: &Client) -> String {
    match client.welcome.as_ref().expect("welcome") {
        ServerEvent::Welcome { instance, .. } => instance.to_string(),
        other => panic!("{other:?}"),
    }
}

/// A labelled sample from `/metrics` text, e.g. `roomcast_ops_total{op="ping"}`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_sample(server: &Server, series: &str) -> f64 {
    let (status, body) = http_get(&server.http("/metrics")).await;
    assert_eq!(status, 200);
    sample(&body, series)
}

async fn pings_seen(server: &Server) -> f64 {
    metrics_sample(server, "roomcast_ops_total{op=\"ping\"}").await
}

/// Waits until `server` holds exactly `n` WebSocket connections.
async fn wait_connections(server: &Server, n: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let open = metrics_sample(server, "roomcast_connections ").await;
        if open == n {
            return;
        }
        assert!(Instant::now() < deadline, "{open} connections, wanted {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn nginx_deploy_config_routes_a_two_instance_cluster() {
    tokio::time::timeout(BUDGET, scenario())
        .await
        .expect("the nginx test took longer than its budget");
}

async fn scenario() {
    // Fail first, and clearly, when nginx is missing.
    common::binary("nginx", "nginx-light");
    let redis = Redis::start().await;
    let url = redis.url();
    let start = |id: &'static str, max_connections: &'static str| {
        let url = url.clone();
        async move {
            let args = ["--redis", &url, "--instance-id", id, "--drain-s", "1"];
            Server::start(&[&args[..], &["--max-connections", max_connections]].concat()).await
        }
    };
    // nginx-a is small, to show what nginx does with a full instance.
    let (a, b) = tokio::join!(start("nginx-a", "4"), start("nginx-b", "1000"));
    let nginx = Nginx::start(&[a.addr.clone(), b.addr.clone()]);

    // HTTP endpoints through nginx; /metrics is open to loopback.
    let (status, body) = http_get(&nginx.http("/ready")).await;
    assert_eq!((status, body.as_str()), (200, "ready"), "/ready via nginx");
    let (status, _) = http_get(&nginx.http("/health")).await;
    assert_eq!(status, 200, "/health via nginx");
    let (status, body) = http_get(&nginx.http("/metrics")).await;
    assert_eq!(status, 200, "/metrics via nginx");
    assert!(body.contains("roomcast_"), "{body}");

    // First-time clients (no cookie) spread over both instances, and each
    // gets an affinity cookie naming where it landed.
    let mut cookie_for = std::collections::HashMap::new();
    for n in 0..32 {
        let (instance, cookie) = nginx.upgrade(&format!("visitor{n}"), None).await;
        let cookie = cookie.expect("nginx sets the affinity cookie on a first upgrade");
        cookie_for.entry(instance).or_insert(cookie);
        if cookie_for.len() == 2 {
            break;
        }
    }
    let (cookie_a, cookie_b) = match (cookie_for.get("nginx-a"), cookie_for.get("nginx-b")) {
        (Some(ca), Some(cb)) => (ca.clone(), cb.clone()),
        _ => panic!("32 upgrades through nginx did not reach both instances: {cookie_for:?}"),
    };

    // Sticky upgrades: a cookie brings every later upgrade back to its
    // instance, and nginx does not reset a cookie the client sent.
    for (cookie, want) in [(&cookie_a, "nginx-a"), (&cookie_b, "nginx-b")] {
        for n in 0..5 {
            let (instance, set) = nginx.upgrade(&format!("again{n}"), Some(cookie)).await;
            assert_eq!(instance, want, "upgrade with {cookie}");
            assert_eq!(set, None, "cookie reset for a client that sent one");
        }
    }

    // A room spans both instances through nginx.
    let mut alice = nginx.client("alice", Some(&cookie_a)).await;
    let mut bob = nginx.client("bob", Some(&cookie_b)).await;
    assert_eq!(instance_of(&alice), "nginx-a");
    assert_eq!(instance_of(&bob), "nginx-b");
    alice.join("table").await;
    bob.join("table").await;
    alice.publish("table", json!({"from": "a"})).await;
    bob.publish("table", json!({"from": "b"})).await;
    for c in [&mut alice, &mut bob] {
        for from in ["a", "b"] {
            let ev = c
                .recv_matching(|e| message_data(e) == Some(json!({ "from": from })))
                .await;
            assert!(matches!(&ev, ServerEvent::Message { room, .. } if room == "table"));
        }
    }

    // A WebSocket stays on its instance: every frame alice sends is handled
    // by nginx-a, none by nginx-b.
    let (pings_a, pings_b) = (pings_seen(&a).await, pings_seen(&b).await);
    for _ in 0..20 {
        let ev = alice.request(ClientFrame::new("ping")).await;
        assert!(matches!(ev, ServerEvent::Pong { .. }), "{ev:?}");
    }
    assert_eq!(
        pings_seen(&a).await - pings_a,
        20.0,
        "pings handled by nginx-a"
    );
    assert_eq!(
        pings_seen(&b).await - pings_b,
        0.0,
        "pings handled by nginx-b"
    );

    // A full instance answers the upgrade with 503; nginx passes it on to
    // the next instance (proxy_next_upstream http_503).
    wait_connections(&a, 1.0).await;
    let mut fillers = Vec::new();
    for n in 0..3 {
        let c = nginx.client(&format!("filler{n}"), Some(&cookie_a)).await;
        assert_eq!(instance_of(&c), "nginx-a", "filler{n}");
        fillers.push(c);
    }
    let (instance, _) = nginx.upgrade("overflow", Some(&cookie_a)).await;
    assert_eq!(instance, "nginx-b", "an upgrade refused with 503 moves on");
    drop(fillers);

    // Drain nginx-a: alice is told to reconnect, and her reconnect (same
    // cookie) lands on nginx-b through proxy_next_upstream.
    a.signal("TERM");
    let hint = alice
        .recv_matching(|e| matches!(e, ServerEvent::Reconnect { .. }))
        .await;
    assert!(matches!(hint, ServerEvent::Reconnect { .. }));
    alice.closed().await;
    let mut alice = nginx.client("alice", Some(&cookie_a)).await;
    assert_eq!(instance_of(&alice), "nginx-b", "reconnect after a drain");
    alice.join("table").await;
    bob.publish("table", json!({"after": "drain"})).await;
    alice
        .recv_matching(|e| message_data(e) == Some(json!({"after": "drain"})))
        .await;
    let (status, _) = http_get(&nginx.http("/ready")).await;
    assert_eq!(status, 200, "/ready via nginx with one instance left");

    // Tokens travel in `?token=`: nginx logs must not hold them. The access
    // log gets a WebSocket's line when it closes.
    drop(alice);
    drop(bob);
    let deadline = Instant::now() + WAIT;
    while !nginx.access_log().contains("GET /ws ") {
        assert!(Instant::now() < deadline, "no /ws line in the access log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = nginx.access_log() + &nginx.error_log();
    assert!(!logs.contains("token="), "a token in nginx logs:\n{logs}");
    // Every JWT starts with the base64 of `{"`.
    assert!(!logs.contains("eyJ"), "a token in nginx logs:\n{logs}");
}
