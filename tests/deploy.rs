//! The deploy files as an operator gets them. Every YAML and JSON file
//! under `deploy/` parses (and the Kubernetes and compose files have the
//! keys their tools need), the Dockerfile's exec forms are JSON arrays,
//! and nginx (`nginx -t`) and HAProxy (`haproxy -c`) accept their configs
//! with the upstream names rewritten to loopback addresses and a throw-away
//! certificate. A copy of `deploy/` with one file broken must fail each
//! check, so no check passes vacuously.
//!
//! Then what the configs promise, on real processes: the affinity cookie
//! is set on WebSocket upgrades (101) only, HAProxy starts and proxies
//! under a common open-file limit, and the image's entrypoint raises the
//! server's soft open-file limit to the hard one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use roomcast::protocol::Codec;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
const NGINX_CONF: &str = "nginx/roomcast.conf";
const HAPROXY_CFG: &str = "haproxy/roomcast.cfg";
const DOCKERFILE: &str = "docker/Dockerfile";
/// Each process test, start to finish.
const BUDGET: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Files and temp dirs

/// A directory of this test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "roomcast-deploy-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for file in files_under(from) {
        let dest = to.join(file.strip_prefix(from).expect("under the tree"));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&file, &dest).expect("copy");
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The checks. Each returns the problems it found, one line per problem,
// naming the file.

/// Parses every `.yaml`, `.yml` and `.json` file under `dir`; returns how
/// many documents were read, or the problems.
fn check_data_files(dir: &Path) -> Result<usize, Vec<String>> {
    let mut problems = Vec::new();
    let mut documents = 0;
    for path in files_under(dir) {
        let name = path
            .strip_prefix(dir)
            .expect("under dir")
            .display()
            .to_string();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "yaml" | "yml" => {
                let text = read(&path);
                for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
                    match Yaml::deserialize(doc) {
                        Ok(value) => {
                            documents += 1;
                            if let Err(e) = check_yaml_shape(dir, &name, value) {
                                problems.push(format!("{name} (document {}): {e}", i + 1));
                            }
                        }
                        Err(e) => {
                            problems.push(format!("{name} (document {}): {e}", i + 1));
                            // After a syntax error the document iterator
                            // yields the same error forever.
                            break;
                        }
                    }
                }
            }
            "json" => match serde_json::from_str::<Json>(&read(&path)) {
                Ok(_) => documents += 1,
                Err(e) => problems.push(format!("{name}: {e}")),
            },
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(documents)
    } else {
        Err(problems)
    }
}

/// What each tool needs besides valid YAML: a Kubernetes object names its
/// `apiVersion`, `kind` and `metadata.name`; a kustomization lists files
/// that exist; every compose service (after its merge keys) has an image
/// or a build.
fn check_yaml_shape(dir: &Path, name: &str, mut value: Yaml) -> Result<(), String> {
    let field = |v: &Yaml, key: &str| v.get(key).and_then(Yaml::as_str).map(str::to_owned);
    if name.starts_with("k8s/") {
        let kind = field(&value, "kind").ok_or("no `kind`")?;
        field(&value, "apiVersion").ok_or("no `apiVersion`")?;
        if kind == "Kustomization" {
            let resources = value
                .get("resources")
                .and_then(Yaml::as_sequence)
                .ok_or("a Kustomization without `resources`")?;
            for r in resources {
                let file = r.as_str().ok_or("a resource that is not a string")?;
                if !dir.join("k8s").join(file).is_file() {
                    return Err(format!("resource {file} does not exist"));
                }
            }
        } else {
            value
                .get("metadata")
                .and_then(|m| field(m, "name"))
                .ok_or("no `metadata.name`")?;
        }
    } else if name.ends_with("compose.yaml") {
        value.apply_merge().map_err(|e| e.to_string())?;
        let services = value
            .get("services")
            .and_then(Yaml::as_mapping)
            .filter(|s| !s.is_empty())
            .ok_or("no `services`")?;
        for (service, spec) in services {
            if spec.get("image").is_none() && spec.get("build").is_none() {
                return Err(format!("service {service:?} has no image or build"));
            }
        }
    }
    Ok(())
}

/// ENTRYPOINT and CMD are exec forms, so that SIGTERM reaches the server.
/// Docker reads one that is not a JSON array of strings as a shell
/// command, silently: check each one.
fn check_dockerfile(dir: &Path) -> Result<usize, Vec<String>> {
    let text = read(&dir.join(DOCKERFILE));
    let mut problems = Vec::new();
    let mut forms = 0;
    for (n, line) in text.lines().enumerate() {
        let Some((instr, rest)) = line.split_once(' ') else {
            continue;
        };
        if !matches!(instr, "ENTRYPOINT" | "CMD") {
            continue;
        }
        forms += 1;
        if serde_json::from_str::<Vec<String>>(rest.trim()).is_err() {
            problems.push(format!(
                "{DOCKERFILE}:{}: {instr} is not a JSON array of strings (exec form): {rest}",
                n + 1
            ));
        }
    }
    if problems.is_empty() {
        Ok(forms)
    } else {
        Err(problems)
    }
}

/// The exec form of the Dockerfile's ENTRYPOINT.
fn entrypoint() -> Vec<String> {
    let text = read(&Path::new(DEPLOY).join(DOCKERFILE));
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    serde_json::from_str(line.trim()).expect("ENTRYPOINT is a JSON array")
}

/// Where a rendered config sends its traffic.
struct Loopback {
    /// Replaces the compose/Kubernetes names `roomcast-N:8080`, in turn.
    upstreams: Vec<String>,
    /// The plain-HTTP listener.
    listen: String,
    /// Keep the `# tls` lines (with `tls_dir`'s throw-away certificate), or
    /// drop them as local runs do.
    tls: Option<(String, PathBuf)>,
    /// Directory for logs.
    dir: PathBuf,
}

/// Rewrites an nginx or HAProxy deploy config for loopback: upstream
/// names, the `# plain-http` listener, the `# tls` lines and the
/// `# access-log` path. Each marked rewrite must change its line, so a
/// config that drifts from its markers fails here instead of being tested
/// half-rendered.
fn render(template: &str, lb: &Loopback) -> Result<String, String> {
    let names = regex_lite::Regex::new(r"roomcast-(\d+):8080").expect("regex");
    let mut renamed = 0;
    let mut out = Vec::new();
    for line in template.lines() {
        let trimmed = line.trim_end();
        let mut line = names
            .replace_all(line, |c: &regex_lite::Captures| {
                renamed += 1;
                let n: usize = c[1].parse().expect("digits");
                lb.upstreams[(n - 1) % lb.upstreams.len()].clone()
            })
            .into_owned();
        if trimmed.ends_with("# tls") {
            let Some((addr, tls_dir)) = &lb.tls else {
                continue;
            };
            let tls = tls_dir.display().to_string();
            line = line
                .replace("/etc/nginx/tls", &tls)
                .replace("/etc/haproxy/tls", &tls)
                .replace("listen 443 ", &format!("listen {addr} "))
                .replace("bind :443 ", &format!("bind {addr} "));
            if line.contains("/etc/") || line.contains("listen 443") || line.contains(":443 ") {
                return Err(format!("cannot rewrite the `# tls` line: {line}"));
            }
        } else if trimmed.ends_with("# plain-http") {
            let before = line.clone();
            line = line
                .replace("listen 80;", &format!("listen {};", lb.listen))
                .replace("bind :80 ", &format!("bind {} ", lb.listen));
            if line == before {
                return Err(format!("cannot rewrite the `# plain-http` line: {line}"));
            }
        } else if trimmed.ends_with("# access-log") {
            let log = lb.dir.join("access.log").display().to_string();
            let at = line
                .find("access_log ")
                .ok_or_else(|| format!("no access_log on the `# access-log` line: {line}"))?;
            let rest = &line[at + "access_log ".len()..];
            let end = rest
                .find([' ', ';'])
                .ok_or_else(|| format!("no path on {line}"))?;
            line = format!("{}access_log {log}{}", &line[..at], &rest[end..]);
        }
        out.push(line);
    }
    if renamed == 0 {
        return Err("no upstream `roomcast-N:8080` to rewrite".into());
    }
    Ok(out.join("\n") + "\n")
}

/// A self-signed certificate for `nginx -t` and `haproxy -c`:
/// `roomcast.crt`, `roomcast.key` and `roomcast.pem` (both) in `dir`.
fn throwaway_certificate(dir: &Path) {
    std::fs::create_dir_all(dir).expect("tls dir");
    let out = Command::new(common::binary("openssl", "openssl"))
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=roomcast.test", "-keyout"])
        .arg(dir.join("roomcast.key"))
        .arg("-out")
        .arg(dir.join("roomcast.crt"))
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = read(&dir.join("roomcast.crt")) + &read(&dir.join("roomcast.key"));
    std::fs::write(dir.join("roomcast.pem"), pem).expect("write pem");
}

fn loopback_for_checks(work: &Path) -> Loopback {
    let tls_dir = work.join("tls");
    throwaway_certificate(&tls_dir);
    Loopback {
        upstreams: vec![
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        ],
        listen: format!("127.0.0.1:{}", free_port()),
        tls: Some((format!("127.0.0.1:{}", free_port()), tls_dir)),
        dir: work.to_path_buf(),
    }
}

/// `nginx -t` of the deploy config under `dir`, TLS lines included.
fn check_nginx(dir: &Path, work: &Path) -> Result<(), String> {
    let lb = loopback_for_checks(work);
    let site = work.join("roomcast.conf");
    let rendered =
        render(&read(&dir.join(NGINX_CONF)), &lb).map_err(|e| format!("{NGINX_CONF}: {e}"))?;
    std::fs::write(&site, rendered).expect("write site");
    let conf = common::nginx_main(work, &site);
    let out = Command::new(common::binary("nginx", "nginx-light"))
        .arg("-t")
        .arg("-p")
        .arg(work)
        .args(["-e", "stderr", "-c"])
        .arg(&conf)
        .output()
        .expect("run nginx -t");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{NGINX_CONF}: nginx -t: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `haproxy -c` of the deploy config under `dir`, TLS lines included.
fn check_haproxy(dir: &Path, work: &Path) -> Result<(), String> {
    let lb = loopback_for_checks(work);
    let cfg = work.join("haproxy.cfg");
    let rendered =
        render(&read(&dir.join(HAPROXY_CFG)), &lb).map_err(|e| format!("{HAPROXY_CFG}: {e}"))?;
    std::fs::write(&cfg, rendered).expect("write haproxy.cfg");
    let out = Command::new(common::binary("haproxy", "haproxy"))
        .args(["-c", "-f"])
        .arg(&cfg)
        .output()
        .expect("run haproxy -c");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{HAPROXY_CFG}: haproxy -c: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Every check on the deploy tree at `dir`: the problems found.
fn check_all(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(p) = check_data_files(dir) {
        problems.extend(p);
    }
    if let Err(p) = check_dockerfile(dir) {
        problems.extend(p);
    }
    let work = TempDir::new("check");
    let nginx_work = work.path().join("nginx");
    let haproxy_work = work.path().join("haproxy");
    std::fs::create_dir_all(&nginx_work).expect("mkdir");
    std::fs::create_dir_all(&haproxy_work).expect("mkdir");
    if let Err(p) = check_nginx(dir, &nginx_work) {
        problems.push(p);
    }
    if let Err(p) = check_haproxy(dir, &haproxy_work) {
        problems.push(p);
    }
    problems
}

#[test]
fn every_deploy_file_parses_and_nginx_and_haproxy_accept_their_configs() {
    let dir = Path::new(DEPLOY);
    let problems = check_all(dir);
    assert!(
        problems.is_empty(),
        "deploy/ has problems:\n{}",
        problems.join("\n")
    );
    // The walk found the files it is meant to check: compose, the k8s
    // objects (redis-dev.yaml holds two) and the Grafana dashboard.
    let documents = check_data_files(dir).expect("checked above");
    assert!(
        documents >= 10,
        "only {documents} YAML/JSON documents under deploy/"
    );
    assert_eq!(check_dockerfile(dir), Ok(2), "ENTRYPOINT and CMD");
}

#[test]
fn a_broken_deploy_file_fails_the_checks() {
    // One file broken per copy of deploy/, and the problem it must cause.
    type Break = fn(String) -> String;
    let cases: [(&str, Break, &str); 7] = [
        (
            "k8s/service.yaml",
            |s| s + "  extra: [unclosed\n",
            "k8s/service.yaml",
        ),
        ("k8s/pdb.yaml", |s| s.replace("kind:", "kidn:"), "no `kind`"),
        (
            "docker/compose.yaml",
            |s| s.replace("\nservices:\n", "\nservice:\n"),
            "no `services`",
        ),
        (
            "grafana/roomcast-dashboard.json",
            |s| s.trim_end()[..s.trim_end().len() - 1].to_owned(),
            "grafana/roomcast-dashboard.json",
        ),
        (
            DOCKERFILE,
            |s| s.replace("CMD [\"serve\"]", "CMD [\"serve\""),
            "CMD is not a JSON array",
        ),
        (
            NGINX_CONF,
            |s| s.replace("proxy_buffering off;", "proxy_buffering off"),
            "nginx -t",
        ),
        (
            HAPROXY_CFG,
            |s| s.replace("balance leastconn", "balance leastconnection"),
            "haproxy -c",
        ),
    ];
    for (file, break_it, expect) in cases {
        let copy = TempDir::new("broken");
        copy_tree(Path::new(DEPLOY), copy.path());
        let path = copy.path().join(file);
        let original = read(&path);
        let broken = break_it(original.clone());
        assert_ne!(broken, original, "the case for {file} changed nothing");
        std::fs::write(&path, broken).expect("write broken file");
        let problems = check_all(copy.path());
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "breaking {file} was not caught (wanted {expect:?}); problems: {problems:#?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Proxies on real processes

/// A proxy process this test started, killed (by its PID) when dropped.
struct Proxy {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Proxy {
    /// nginx with the deploy config rendered for local use (no TLS), in
    /// front of `upstreams`.
    fn nginx(upstreams: &[String]) -> Proxy {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let lb = Loopback {
            upstreams: upstreams.to_vec(),
            listen: format!("127.0.0.1:{port}"),
            tls: None,
            dir: dir.path().to_path_buf(),
        };
        let site = dir.path().join("roomcast.conf");
        let rendered = render(&read(&Path::new(DEPLOY).join(NGINX_CONF)), &lb).expect("render");
        std::fs::write(&site, rendered).expect("write site");
        let conf = common::nginx_main(dir.path(), &site);
        let mut cmd = Command::new(common::binary("nginx", "nginx-light"));
        cmd.arg("-p")
            .arg(dir.path())
            .args(["-e", "stderr", "-c"])
            .arg(&conf)
            .args(["-g", "daemon off;"]);
        Proxy::spawn(cmd, port, dir)
    }

    /// HAProxy with the deploy config rendered for local use (no TLS), in
    /// front of `upstreams`, started by `sh` after `limits` (shell `ulimit`
    /// commands, may be empty).
    fn haproxy(upstreams: &[String], limits: &str) -> Proxy {
        let dir = TempDir::new("haproxy");
        let port = free_port();
        let lb = Loopback {
            upstreams: upstreams.to_vec(),
            listen: format!("127.0.0.1:{port}"),
            tls: None,
            dir: dir.path().to_path_buf(),
        };
        let cfg = dir.path().join("haproxy.cfg");
        let rendered = render(&read(&Path::new(DEPLOY).join(HAPROXY_CFG)), &lb).expect("render");
        std::fs::write(&cfg, rendered).expect("write haproxy.cfg");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{limits} exec \"$0\" -db -f \"$1\""))
            .arg(common::binary("haproxy", "haproxy"))
            .arg(&cfg);
        Proxy::spawn(cmd, port, dir)
    }

    fn spawn(mut cmd: Command, port: u16, dir: TempDir) -> Proxy {
        let log = dir.path().join("proxy.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("spawn proxy");
        let mut proxy = Proxy {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = proxy.child.try_wait().expect("try_wait") {
                panic!("the proxy exited ({status}):\n{}", proxy.log());
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The soft and hard open-file limits of the proxy's process.
    fn nofile(&self) -> (u64, u64) {
        let limits = read(Path::new(&format!("/proc/{}/limits", self.child.id())));
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("open files line");
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (nums[0], nums[1])
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new("kill")
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

/// An HTTP request through a proxy on `port`; the answer's status and its
/// `Set-Cookie` values. The connection is dropped after the header block.
async fn exchange(port: u16, request: String) -> (u16, Vec<String>) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the proxy");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the header block ended");
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer in time");
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let cookies = text
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().to_owned())
        })
        .collect();
    (status, cookies)
}

fn upgrade(token: &str, cookie: Option<&str>) -> String {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {}\r\n{cookie}\r\n",
        Codec::Json.subprotocol()
    )
}

fn plain_get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

/// The proxy's affinity cookie goes out on a 101 only: not on a refused
/// upgrade, a plain request to /ws, /health, or an upgrade that already
/// carries the cookie.
async fn cookie_on_upgrades_only(port: u16, cookie: &str) {
    let (status, set) = exchange(port, upgrade(&token("alice"), None)).await;
    assert_eq!(status, 101);
    assert!(
        set.len() == 1 && set[0].starts_with(&format!("{cookie}=")),
        "a first upgrade sets {cookie}: {set:?}"
    );
    let pair = set[0].split(';').next().expect("name=value").to_owned();

    let refusals = [
        (
            "a refused upgrade (bad token)",
            upgrade("not-a-token", None),
            401,
        ),
        ("a plain GET of /ws", plain_get("/ws"), 400),
        ("/health", plain_get("/health"), 200),
        (
            "an upgrade that carries the cookie",
            upgrade(&token("alice"), Some(&pair)),
            101,
        ),
    ];
    for (what, request, want) in refusals {
        let (status, set) = exchange(port, request).await;
        assert_eq!(status, want, "{what}");
        assert!(set.is_empty(), "{what} got {set:?}");
    }
}

#[tokio::test]
async fn nginx_sets_the_affinity_cookie_on_upgrades_only() {
    tokio::time::timeout(BUDGET, async {
        let server = Server::start(&[]).await;
        let nginx = Proxy::nginx(std::slice::from_ref(&server.addr));
        cookie_on_upgrades_only(nginx.port, "roomcast_affinity").await;
    })
    .await
    .expect("within the budget");
}

#[tokio::test]
async fn haproxy_sets_its_cookie_on_upgrades_only() {
    tokio::time::timeout(BUDGET, async {
        let server = Server::start(&[]).await;
        let haproxy = Proxy::haproxy(std::slice::from_ref(&server.addr), "");
        cookie_on_upgrades_only(haproxy.port, "roomcast_lb").await;
    })
    .await
    .expect("within the budget");
}

/// A limit far below what 100,000 connections need (a hard limit under
/// 200,000 is common: systemd's 524288 is above it, this machine's 20,000
/// and many containers' are below). HAProxy must start, raise its own soft
/// limit and proxy.
#[tokio::test]
async fn haproxy_starts_under_a_common_open_file_limit() {
    tokio::time::timeout(BUDGET, async {
        let server = Server::start(&[]).await;
        let haproxy = Proxy::haproxy(
            std::slice::from_ref(&server.addr),
            "ulimit -Sn 1024 && ulimit -Hn 16384 &&",
        );
        let (soft, hard) = haproxy.nofile();
        assert_eq!(hard, 16384);
        assert!(soft > 1024, "HAProxy kept a soft limit of {soft}");
        let (status, _) = exchange(haproxy.port, upgrade(&token("bob"), None)).await;
        assert_eq!(status, 101, "log:\n{}", haproxy.log());
    })
    .await
    .expect("within the budget");
}

/// The image's ENTRYPOINT, with the test binary in place of the image's,
/// started at 1024 soft / 16384 hard: the server runs with 16384.
#[tokio::test]
async fn the_image_entrypoint_raises_the_soft_open_file_limit() {
    use tokio::io::AsyncBufReadExt;
    let bin = env!("CARGO_BIN_EXE_roomcast");
    let entry: Vec<String> = entrypoint()
        .iter()
        .map(|a| a.replace("/usr/local/bin/roomcast", bin))
        .collect();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 1024 && ulimit -Hn 16384 && exec \"$@\"")
        .arg("sh")
        .args(&entry)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .env("ROOMCAST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the entrypoint");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.starts_with("listening ") {
                return;
            }
        }
        panic!("the entrypoint exited before the server listened");
    })
    .await
    .expect("the server listens in time");
    let pid = child.id().expect("running");
    let limits = read(Path::new(&format!("/proc/{pid}/limits")));
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums[..2], [16384, 16384], "{line}");
    let cmdline = read(Path::new(&format!("/proc/{pid}/cmdline")));
    assert!(
        cmdline.starts_with(bin),
        "the server runs as the entrypoint's process (exec), not under a shell: {cmdline:?}"
    );
    let _ = child.kill().await;
}
