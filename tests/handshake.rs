//! The HTTP side of the upgrade, over raw TCP where the answer's exact
//! bytes matter: the request line and headers RFC 6455 §4 asks for, and
//! the per-user slot taken at the upgrade.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The head of an HTTP answer (status line and headers).
struct Answer {
    status: u16,
    head: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads an answer's head; `None` when the server closed the socket first.
async fn read_head(tcp: &mut TcpStream) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("the server answered in time")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Some(Answer { status, head })
}

/// Sends `request` as it is on a fresh connection and reads the answer's head.
async fn exchange(server: &Server, request: String) -> Option<Answer> {
    let mut tcp = TcpStream::connect(&server.addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    read_head(&mut tcp).await
}

/// An upgrade request for `user` over `http` ("HTTP/1.1") with the given
/// `Sec-WebSocket-Version` line, asking the server to close afterwards
/// where it refuses.
fn upgrade_request(server: &Server, http: &str, version: Option<&str>, user: &str) -> String {
    let version = version.map_or(String::new(), |v| format!("Sec-WebSocket-Version: {v}\r\n"));
    format!(
        "GET /ws?token={} {http}\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         {version}\r\n",
        token(user),
        server.addr
    )
}

async fn rejected(server: &Server, reason: &str) -> f64 {
    let (_, text) = http_get(&server.http("/metrics")).await;
    text.lines()
        .filter(|l| l.starts_with("roomcast_upgrades_rejected_total{"))
        .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn an_unknown_websocket_version_gets_426_naming_version_13() {
    let server = Server::start(&[]).await;
    for version in [Some("8"), Some("14"), None] {
        let answer = exchange(&server, upgrade_request(&server, "HTTP/1.1", version, "u"))
            .await
            .expect("an answer");
        assert_eq!(answer.status, 426, "version {version:?}: {}", answer.head);
        assert_eq!(
            answer.header("sec-websocket-version"),
            Some("13"),
            "{}",
            answer.head
        );
    }
    assert_eq!(rejected(&server, "not_websocket").await, 3.0);
    // Version 13 on the same server still upgrades.
    let answer = exchange(
        &server,
        upgrade_request(&server, "HTTP/1.1", Some("13"), "u"),
    )
    .await;
    assert_eq!(answer.map(|a| a.status), Some(101));
}

#[tokio::test]
async fn an_http_1_0_upgrade_is_refused_before_any_101() {
    let server = Server::start(&[]).await;
    let mut tcp = TcpStream::connect(&server.addr).await.expect("connect");
    let request = upgrade_request(&server, "HTTP/1.0", Some("13"), "u");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let answer = read_head(&mut tcp).await.expect("an answer");
    assert_eq!(answer.status, 400, "{}", answer.head);
    assert!(answer.header("upgrade").is_none(), "{}", answer.head);
    // The answer is whole and the server then closes: HTTP/1.0 has no
    // keep-alive unless asked for.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("closed after the answer")
        .expect("read");
    assert!(rejected(&server, "not_websocket").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upgrades_of_one_user_never_exceed_the_limit() {
    crowd_of_one_user(&Server::start(&["--max-conns-per-user", "3"]).await).await;
}

/// In cluster mode a connection registers after a Redis round trip, which
/// widens the window between the upgrade and the registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upgrades_of_one_user_never_exceed_the_limit_in_cluster_mode() {
    let redis = Redis::start().await;
    let url = redis.url();
    let server = Server::start(&[
        "--redis",
        &url,
        "--redis-prefix",
        "hs",
        "--max-conns-per-user",
        "3",
    ])
    .await;
    crowd_of_one_user(&server).await;
}

/// Forty upgrades of one user at once against a limit of three.
async fn crowd_of_one_user(server: &Server) {
    // Every socket is open before any request goes out, and the requests
    // go out back to back, so they are checked as close together as
    // possible.
    let mut socks = Vec::new();
    for _ in 0..40 {
        socks.push(TcpStream::connect(&server.addr).await.expect("connect"));
    }
    let request = upgrade_request(server, "HTTP/1.1", Some("13"), "crowd");
    for s in &mut socks {
        s.write_all(request.as_bytes()).await.expect("write");
    }
    let mut open = Vec::new();
    let mut refused = 0;
    for mut s in socks {
        let answer = read_head(&mut s).await.expect("an answer");
        match answer.status {
            101 => open.push(s),
            429 => refused += 1,
            other => panic!("unexpected answer {other}: {}", answer.head),
        }
    }
    assert_eq!(open.len(), 3, "{refused} refused");
    assert_eq!(refused, 37);

    // The slot is freed when a connection ends, and only then.
    let url = server.url(&format!("?token={}", token("crowd")));
    let req = url.as_str().into_client_request().expect("request");
    assert_eq!(upgrade_status(req).await, Some(429));
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let req = url.as_str().into_client_request().expect("request");
        match upgrade_status(req).await {
            None => break,
            Some(429) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("after a close: {other:?}"),
        }
    }
}
