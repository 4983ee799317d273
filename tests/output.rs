//! What the server writes on stderr: plain or JSON log lines, a one-line
//! message and status 2 for a bad setting, and an unreachable Redis named
//! (password hidden) as soon as it fails.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// Runs `roomcast serve` with `args` to completion, with RUST_BACKTRACE
/// set as a developer's shell may have it.
fn run_serve(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run roomcast")
}

#[test]
fn a_configuration_error_is_one_line_and_status_2() {
    for (args, message) in [
        (
            &["--burst", "0"][..],
            "error: invalid setting: burst must be greater than 0\n",
        ),
        (
            &["--log", "roomcast=loud"][..],
            "error: invalid setting: log filter \"roomcast=loud\"",
        ),
        (&["--redis", "redis://"][..], "error: invalid redis url"),
    ] {
        let out = run_serve(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(message), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("backtrace"), "{args:?}: {stderr}");
    }
}

/// Starts a server whose stderr is a pipe (never a terminal), with
/// NO_COLOR unset so that only the terminal check can turn colours off.
async fn start_piped(args: &[&str]) -> (tokio::process::Child, Log) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut cmd = Server::command("127.0.0.1:0", &args, &[]);
    cmd.env_remove("NO_COLOR");
    let mut child = cmd.spawn().expect("spawn roomcast");
    let log = Log::default();
    log.capture(child.stderr.take().expect("stderr"));
    (child, log)
}

#[tokio::test]
async fn human_logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let (_child, log) = start_piped(&[]).await;
    let line = log.wait_for("listening", WAIT).await;
    let text = log.text();
    assert!(line.is_some(), "{text}");
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\x1b'), "colour codes in a pipe: {text:?}");
}

#[tokio::test]
async fn json_logs_are_one_flat_object_per_line() {
    let (_child, log) = start_piped(&["--log-format", "json"]).await;
    let line = log
        .wait_for("listening", WAIT)
        .await
        .expect("a listening line");
    let event: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["message"], "listening", "{line}");
    assert_eq!(event["mode"], "standalone", "{line}");
    assert!(
        event["addr"].is_string() && event["timestamp"].is_string(),
        "{line}"
    );
    for line in log.text().lines() {
        serde_json::from_str::<serde_json::Value>(line).expect(line);
    }
}

/// Redis down at start: a WARN line with the URL (password hidden) and
/// the error within two seconds, long before the ten-second start-up wait
/// ends; the instance keeps retrying and becomes ready once Redis answers.
/// Redis lost later: the same at once.
#[tokio::test]
async fn unreachable_redis_is_reported_at_once_and_retried() {
    let port = free_port();
    let url = format!("redis://bob:hunter2@127.0.0.1:{port}/0");
    let (mut child, log) = start_piped(&[
        "--redis",
        &url,
        "--redis-reconnect-max-ms",
        "300",
        "--redis-startup-wait-ms",
        "10000",
    ])
    .await;
    // Timed from the bus's start, so that a slow process start on a busy
    // machine does not count.
    log.wait_for("connecting to redis", WAIT)
        .await
        .unwrap_or_else(|| panic!("no start:\n{}", log.text()));
    let started = Instant::now();
    let line = log
        .wait_for("cannot connect to redis", Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("no report within 2 s:\n{}", log.text()));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(&format!("redis://bob:***@127.0.0.1:{port}/0")),
        "{line}"
    );
    assert!(line.contains("error="), "{line}");

    // Redis comes up with the user the URL names: the instance connects
    // on its own and starts listening, ready.
    let mut redis = Redis::spawn(
        port,
        &[
            "--appendonly",
            "no",
            "--user",
            "bob",
            "on",
            ">hunter2",
            "~*",
            "&*",
            "+@all",
        ],
    )
    .await;
    log.wait_for("redis reachable again", WAIT)
        .await
        .unwrap_or_else(|| panic!("no recovery:\n{}", log.text()));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let addr = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("listening ") {
                return addr.to_owned();
            }
        }
        panic!("exited:\n{}", log.text());
    })
    .await
    .expect("listening in time");
    let (status, _) = http_get(&format!("http://{addr}/ready")).await;
    assert_eq!(status, 200, "{}", log.text());

    // Lost later: said at once too, with the URL and the error.
    redis.kill().await;
    let lost = Instant::now();
    let line = log
        .wait_for("lost the connection to redis", Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("no report within 2 s:\n{}", log.text()));
    assert!(lost.elapsed() < Duration::from_secs(3));
    assert!(line.contains("WARN") && line.contains("error="), "{line}");
    assert!(
        line.contains(&format!("redis://bob:***@127.0.0.1:{port}/0")),
        "{line}"
    );
    assert!(!log.text().contains("hunter2"), "{}", log.text());
}
