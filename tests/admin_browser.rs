//! The `/admin` dashboard in a real browser: Debian's `chromium`, driven
//! by `tests/browser/admin.mjs` (playwright-core, installed by
//! `npm ci --prefix tests/browser`; scripts/test installs both when
//! missing). Two cluster instances and their own `redis-server`: the page
//! on A signs in, sees the connection count grow, drains B with its
//! button, and saves a screenshot under `target/`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn dashboard_in_chromium_signs_in_counts_and_drains() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = binary("chromium", "chromium");
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed: `npm ci --prefix tests/browser` (scripts/test does)"
    );
    let redis = Redis::start().await;
    let url = redis.url();
    let common_args = [
        "--redis",
        url.as_str(),
        "--redis-prefix",
        "rcb",
        "--admin-stats-interval-ms",
        "500",
    ];
    let mut a_args = common_args.to_vec();
    a_args.extend(["--instance-id", "dash-a"]);
    let mut b_args = common_args.to_vec();
    b_args.extend(["--instance-id", "dash-b"]);
    let a = Server::start(&a_args).await;
    let b = Server::start(&b_args).await;

    let shot = root.join("target").join("admin-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let admin = token_with(json!({"sub": "dashboard", "roles": ["admin"]}));
    let run = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/admin.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("ROOMCAST_URL", format!("http://{}", a.addr))
        .env("ROOMCAST_ADMIN_TOKEN", &admin)
        .env("ROOMCAST_USER_TOKEN", token("browser-user"))
        .env("ROOMCAST_DRAIN_ID", "dash-b")
        .env("ROOMCAST_DRAIN_URL", format!("http://{}", b.addr))
        .env("ROOMCAST_SCREENSHOT", &shot)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser test did not finish in 90 s")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "ok"),
        "browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // What the page saw agrees with the servers: B is draining, A serves.
    assert_eq!(http_get(&b.http("/ready")).await.0, 503);
    assert_eq!(http_get(&a.http("/ready")).await.0, 200);
    let png = std::fs::read(&shot).expect("screenshot saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
