//! Test harness: real `roomcast` processes on free ports, their own
//! `redis-server`s, and a protocol client over real WebSockets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ServerEvent};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789";
/// How long a test waits for any one expected event.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Event = ServerEvent<'static>;

/// A running roomcast process, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// What the process wrote to stderr (across restarts).
    pub log: Log,
}

/// A server's stderr, kept in memory and printed only when the test fails.
/// Fault tests make servers log WARN lines on purpose (Redis killed, peers
/// reaped); passed straight through, they would fill `scripts/test` output
/// with lines that read like failures. Captured, they cost nothing when the
/// test passes and sit beside the panic message when it fails, where a
/// lower log level would have hidden them. `ROOMCAST_TEST_STDERR=1` also
/// echoes them live while a test runs.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<String>>);

/// The most of a server's stderr a test keeps (the newest part).
const LOG_KEEP: usize = 1 << 20;

impl Log {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn push(&self, line: &str) {
        let mut text = self.0.lock().unwrap_or_else(|e| e.into_inner());
        text.push_str(line);
        text.push('\n');
        if text.len() > 2 * LOG_KEEP {
            let mut cut = text.len() - LOG_KEEP;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
    }

    /// Reads `stderr` line by line into the log until it closes.
    pub fn capture(&self, stderr: tokio::process::ChildStderr) {
        let log = self.clone();
        let live = std::env::var_os("ROOMCAST_TEST_STDERR").is_some_and(|v| v == "1");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if live {
                    use std::io::Write;
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
                log.push(&line);
            }
        });
    }

    /// Waits until a line containing `needle` was written; its text, or
    /// `None` after `wait`.
    pub async fn wait_for(&self, needle: &str, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(line) = self.text().lines().find(|l| l.contains(needle)) {
                return Some(line.to_owned());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Goes to the test's captured output, shown with its failure.
            eprintln!(
                "---- roomcast {} stderr ----\n{}---- end of roomcast {} stderr ----",
                self.addr,
                self.log.text(),
                self.addr
            );
        }
    }
}

impl Server {
    /// A cluster-mode instance on `redis` with key prefix `prefix`, instance
    /// id `id`, and further flags.
    pub async fn clustered(redis: &Redis, prefix: &str, id: &str, extra: &[&str]) -> Server {
        let url = redis.url();
        let mut args = vec![
            "--redis",
            url.as_str(),
            "--redis-prefix",
            prefix,
            "--instance-id",
            id,
        ];
        args.extend_from_slice(extra);
        Server::start(&args).await
    }

    /// Starts `roomcast serve` on a free port with the test secret and `args`.
    pub async fn start(args: &[&str]) -> Server {
        Self::start_env(args, &[]).await
    }

    pub async fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn(args, envs, "127.0.0.1:0", Log::default()).await
    }

    /// The `roomcast serve` command the harness runs: the test secret,
    /// info logs (captured, see [`Log`]), stdout and stderr piped.
    pub fn command(listen: &str, args: &[String], envs: &[(String, String)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .args(args)
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .env("ROOMCAST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }

    async fn spawn(
        args: Vec<String>,
        envs: Vec<(String, String)>,
        listen: &str,
        log: Log,
    ) -> Server {
        let mut child = Self::command(listen, &args, &envs)
            .spawn()
            .expect("spawn roomcast");
        log.capture(child.stderr.take().expect("stderr"));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let started = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(addr) = line.strip_prefix("listening ") {
                    return Some(addr.to_owned());
                }
            }
            None
        })
        .await;
        let addr = match started {
            Ok(Some(addr)) => addr,
            // Give the stderr reader a moment, then show what it said.
            failed => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let why = match failed {
                    Ok(_) => "exited before listening",
                    Err(_) => "did not start in time",
                };
                panic!("roomcast {why}; its stderr:\n{}", log.text());
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server {
            child,
            addr,
            args,
            envs,
            log,
        }
    }

    /// Starts the same server again on the same address (after a kill);
    /// its stderr goes on in the same [`Log`].
    pub async fn restart(&mut self) {
        self.log.push("---- restarted ----");
        let fresh = Self::spawn(
            self.args.clone(),
            self.envs.clone(),
            &self.addr.clone(),
            self.log.clone(),
        )
        .await;
        *self = fresh;
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/ws{}", self.addr, query)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a signal to the process (by its PID, which this test started).
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.url(&format!("?token={}", token(user))), Codec::Json)
            .await
            .expect("connect")
    }

    pub async fn connect_with(&self, user: &str, codec: Codec) -> Client {
        Client::connect(&self.url(&format!("?token={}", token(user))), codec)
            .await
            .expect("connect")
    }
}

/// A valid HS256 token for `sub`, valid for an hour.
pub fn token(sub: &str) -> String {
    token_with(json!({ "sub": sub }))
}

/// A token with the given claims; `exp` is added when missing.
pub fn token_with(mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now_s() + 3600);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign")
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HTTP answer: status, lower-cased headers, body text.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: std::collections::HashMap<String, String>,
    pub body: String,
}

/// One HTTP/1.1 request on a fresh loopback connection, without a client
/// crate. `url` is `http://host:port/path`.
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = TcpStream::connect(host).await.expect("connect http");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpAnswer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// HTTP GET on loopback without a client crate: status and body.
pub async fn http_get(url: &str) -> (u16, String) {
    let a = http_request("GET", url, &[], b"").await;
    (a.status, a.body)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
pub struct Client {
    pub ws: Ws,
    pub codec: Codec,
    /// Events read while waiting for another one, in order.
    pending: std::collections::VecDeque<Event>,
    pub welcome: Option<Event>,
    next_id: u64,
    /// How many `batch` frames arrived.
    pub batches: usize,
}

impl Client {
    /// Connects and waits for `welcome`.
    pub async fn connect(url: &str, codec: Codec) -> Result<Client, WsError> {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(codec.subprotocol()),
        );
        Self::connect_request(req, codec).await
    }

    pub async fn connect_request(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
        codec: Codec,
    ) -> Result<Client, WsError> {
        let (ws, _resp) = tokio_tungstenite::connect_async(req).await?;
        let mut c = Client {
            ws,
            codec,
            pending: Default::default(),
            welcome: None,
            next_id: 1,
            batches: 0,
        };
        let w = c.recv().await;
        assert!(
            matches!(w, ServerEvent::Welcome { .. }),
            "first event: {w:?}"
        );
        c.welcome = Some(w);
        Ok(c)
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        let bytes = self.codec.encode(frame).expect("encode");
        self.send_raw(bytes.to_vec()).await;
    }

    /// Sends a publish whose frame is `size` bytes long.
    pub async fn publish_raw_big(&mut self, size: usize) {
        let pad = "x".repeat(size);
        let frame = ClientFrame::new("publish").room("r").data(json!(pad));
        self.send(&frame).await;
    }

    /// Sends bytes as a frame of this codec's type.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        let msg = match self.codec {
            Codec::Json => Message::text(String::from_utf8(bytes).expect("utf8")),
            Codec::MsgPack => Message::binary(bytes),
        };
        self.ws.send(msg).await.expect("send");
    }

    /// Sends an op with a fresh numeric id and waits for its ack (or error).
    pub async fn request(&mut self, frame: ClientFrame) -> Event {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&frame.id(id)).await;
        self.recv_matching(|e| answers(e, id)).await
    }

    pub async fn join(&mut self, room: &str) {
        let ev = self.request(ClientFrame::new("join").room(room)).await;
        assert!(matches!(ev, ServerEvent::Ack { .. }), "join {room}: {ev:?}");
    }

    pub async fn publish(&mut self, room: &str, data: Value) {
        let ev = self
            .request(ClientFrame::new("publish").room(room).data(data))
            .await;
        assert!(
            matches!(ev, ServerEvent::Ack { .. }),
            "publish {room}: {ev:?}"
        );
    }

    pub async fn send_to(&mut self, user: &str, data: Value) {
        let ev = self
            .request(ClientFrame::new("send").to(user).data(data))
            .await;
        assert!(
            matches!(ev, ServerEvent::Ack { .. }),
            "send to {user}: {ev:?}"
        );
    }

    /// The next event (batches are unpacked), waiting at most [`WAIT`].
    pub async fn recv(&mut self) -> Event {
        self.try_recv(WAIT).await.expect("no event in time")
    }

    /// The next event within `wait`, or `None` (also when the socket closed).
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Event> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            let bytes = match msg.ok()? {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => return None,
                _ => continue,
            };
            let ev: Event = self.codec.decode(&bytes).expect("server sent a bad frame");
            return Some(match ev {
                ServerEvent::Batch { events } => {
                    self.batches += 1;
                    let mut it = events.into_iter();
                    let first = it.next().expect("empty batch");
                    self.pending.extend(it);
                    first
                }
                ev => ev,
            });
        }
    }

    /// Reads events until one matches, keeping the others for later `recv`s.
    pub async fn recv_matching(&mut self, mut pred: impl FnMut(&Event) -> bool) -> Event {
        let mut skipped = std::collections::VecDeque::new();
        if let Some(pos) = self.pending.iter().position(&mut pred) {
            return self.pending.remove(pos).expect("present");
        }
        let pending = std::mem::take(&mut self.pending);
        let deadline = tokio::time::Instant::now() + WAIT;
        let found = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = self
                .try_recv(left)
                .await
                .unwrap_or_else(|| panic!("no matching event in time; saw {skipped:?}"));
            if pred(&ev) {
                break ev;
            }
            skipped.push_back(ev);
        };
        let mut rest = pending;
        rest.extend(skipped);
        rest.extend(std::mem::take(&mut self.pending));
        self.pending = rest;
        found
    }

    /// Waits for the server to close the socket; returns the close frame.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("socket not closed in time"),
                Ok(None) => return None,
                Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => return frame,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Asserts that no event matching `pred` is pending or arrives within `wait`.
    pub async fn expect_none(&mut self, wait: Duration, pred: impl Fn(&Event) -> bool) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_recv(left).await {
                Some(ev) => assert!(!pred(&ev), "unexpected event: {ev:?}"),
                None => return,
            }
        }
    }

    /// Asserts no event arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(ev) = self.try_recv(wait).await {
            panic!("unexpected event: {ev:?}");
        }
    }
}

/// Whether `e` answers the request with numeric id `id`.
pub fn answers(e: &Event, id: u64) -> bool {
    let want = roomcast::protocol::ReqId::Num(id);
    match e {
        ServerEvent::Ack { id, .. } => **id == want,
        ServerEvent::Error { id: Some(i), .. }
        | ServerEvent::History { id: Some(i), .. }
        | ServerEvent::Pong { id: Some(i) }
        | ServerEvent::Presence { id: Some(i), .. }
        | ServerEvent::Admin { id: Some(i), .. } => **i == want,
        _ => false,
    }
}

/// Tries a WebSocket upgrade and returns the HTTP status of a refusal
/// (`None` when the upgrade succeeded).
pub async fn upgrade_status(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Option<u16> {
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => None,
        Err(WsError::Http(resp)) => Some(resp.status().as_u16()),
        Err(e) => panic!("unexpected upgrade error: {e}"),
    }
}

/// A Prometheus counter's value from `/metrics` text (summing label sets).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `redis-server` on a free port with nothing on disk, killed when dropped.
pub struct Redis {
    pub child: Child,
    pub port: u16,
}

impl Redis {
    pub async fn start() -> Redis {
        let port = free_port();
        Self::start_on(port).await
    }

    pub async fn start_on(port: u16) -> Redis {
        Self::spawn(port, &["--appendonly", "no"]).await
    }

    /// Starts `redis-server` on `port` with `extra` settings (nothing is
    /// saved by RDB) and waits until it answers PING, which it does only
    /// once any append-only file is loaded.
    pub async fn spawn(port: u16, extra: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server (is it installed? scripts/test installs it)");
        let redis = Redis { child, port };
        let deadline = tokio::time::Instant::now() + WAIT;
        while redis.cli(&["PING"]).trim() != "PONG" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Data of a `message` event, as a value.
pub fn message_data(ev: &Event) -> Option<Value> {
    match ev {
        ServerEvent::Message { data, .. } => data.to_value().ok(),
        _ => None,
    }
}

impl Redis {
    /// A `redis-server` on `port` keeping its data in `dir` (append-only
    /// file, fsync on every write), so a kill and a restart on the same
    /// `dir` loses nothing that was acknowledged.
    pub async fn start_persistent_on(port: u16, dir: &std::path::Path) -> Redis {
        std::fs::create_dir_all(dir).expect("redis dir");
        let dir = dir.to_string_lossy().to_string();
        Self::spawn(
            port,
            &[
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &dir,
            ],
        )
        .await
    }
}

/// A masked client frame of any length.
pub fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_rsv(fin, 0, op, payload)
}

/// A masked client frame; `rsv` goes into bits 4-6 of the first byte.
pub fn client_frame_rsv(fin: bool, rsv: u8, op: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x1f, 0x22, 0x83, 0x04];
    let mut f = vec![if fin { 0x80 } else { 0 } | (rsv & 7) << 4 | op];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// A server frame read back from raw bytes: opcode and payload.
pub type RawFrame = (u8, Vec<u8>);

/// Splits server bytes into whole frames. Fails when a frame is malformed
/// or the bytes end inside a frame (`Err` holds the frames before it and
/// how many bytes were left over).
pub fn split_frames(mut bytes: &[u8]) -> Result<Vec<RawFrame>, (Vec<RawFrame>, String)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let bad = |frames: Vec<RawFrame>, why: String| Err((frames, why));
        if bytes.len() < 2 {
            return bad(frames, format!("{} bytes of a frame header", bytes.len()));
        }
        if bytes[0] & 0x70 != 0 || bytes[1] & 0x80 != 0 || bytes[0] & 0x80 == 0 {
            return bad(frames, format!("not a server frame: {:02x?}", &bytes[..2]));
        }
        let (len, at) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => return bad(frames, "cut frame header".into()),
            n => (n as usize, 2),
        };
        if bytes.len() < at + len {
            return bad(
                frames,
                format!(
                    "the bytes end inside a frame of {len} bytes ({} left)",
                    bytes.len() - at
                ),
            );
        }
        frames.push((bytes[0] & 0x0f, bytes[at..at + len].to_vec()));
        bytes = &bytes[at + len..];
    }
    Ok(frames)
}

/// A WebSocket client over a raw TCP socket, for tests that must control
/// exactly when the client reads and what bytes it sends.
pub struct RawWs {
    pub tcp: TcpStream,
    /// Bytes read after the 101 response.
    pub buf: Vec<u8>,
}

impl RawWs {
    /// Connects as `user` with a receive buffer of about `rcvbuf` bytes
    /// (so a client that stops reading fills up quickly), sends the
    /// upgrade request followed by `extra`, and reads the 101 response.
    pub async fn open(addr: &str, user: &str, rcvbuf: Option<u32>, extra: &[u8]) -> RawWs {
        use tokio::io::AsyncWriteExt;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(n) = rcvbuf {
            socket.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let mut tcp = socket
            .connect(addr.parse().expect("addr"))
            .await
            .expect("connect");
        let request = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            token(user)
        );
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(extra);
        tcp.write_all(&bytes).await.expect("write");
        let mut raw = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await > 0, "closed before the 101");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..end);
        raw
    }

    /// Reads once (waiting at most [`WAIT`]); 0 at the end of the stream.
    pub async fn fill(&mut self) -> usize {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("server answered in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads until a whole text frame arrived and returns its JSON,
    /// leaving what follows it in `buf`. Skips control frames.
    pub async fn next_event(&mut self) -> Value {
        loop {
            if let Some((op, payload, used)) = first_frame(&self.buf) {
                self.buf.drain(..used);
                if op == 0x1 {
                    return serde_json::from_slice(&payload).expect("json");
                }
                continue;
            }
            assert!(self.fill().await > 0, "closed while waiting for an event");
        }
    }

    /// Reads everything until the server ends the connection (a close, a
    /// reset, or [`WAIT`] without a byte) and returns all of it.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.tcp.write_all(bytes).await.expect("write");
    }
}

/// The first whole frame of `bytes`: opcode, payload, bytes used.
pub fn first_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (len, at) = match *bytes.get(1)? & 0x7f {
        126 => (
            u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
            4,
        ),
        127 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(bytes.get(2..10)?);
            (u64::from_be_bytes(n) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let payload = bytes.get(at..at + len)?.to_vec();
    Some((bytes[0] & 0x0f, payload, at + len))
}

/// A counter from the server's `/metrics`.
pub async fn server_metric(server: &Server, name: &str) -> f64 {
    let (_, body) = http_get(&server.http("/metrics")).await;
    metric(&body, name)
}

/// A binary on PATH or in /usr/sbin (where Debian puts nginx and haproxy).
pub fn binary(name: &str, package: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin").join(name)).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (looked on PATH and in /usr/sbin); this test runs \
                 the deploy configs in it. `apt-get install -y {package}` (scripts/test does)."
            )
        })
}

/// An nginx main config around the rendered http-context file, with every
/// path in `dir` (no root, nothing under /var).
pub fn nginx_main(dir: &Path, site: &Path) -> PathBuf {
    let d = dir.display();
    let main = format!(
        "worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include {};\n\
         }}\n",
        site.display()
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).expect("write nginx.conf");
    conf
}
