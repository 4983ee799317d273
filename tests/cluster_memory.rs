//! Memory of an idle cluster instance: what the Redis side allocates at
//! start-up, measured against a standalone instance of the same build.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Resident memory of a process this test started, from `/proc`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// With default settings the Redis side of an idle instance costs a few
/// megabytes, not a preallocated buffer per event channel of each Redis
/// client (80 MB with fred's channels all sized 65,536).
#[tokio::test]
async fn an_idle_cluster_instance_holds_little_more_than_a_standalone_one() {
    let standalone = Server::start(&[]).await;
    let redis = Redis::start().await;
    let url = redis.url();
    let cluster = Server::start(&["--redis", &url]).await;
    let deadline = Instant::now() + WAIT;
    while http_get(&cluster.http("/ready")).await.0 != 200 {
        assert!(Instant::now() < deadline, "cluster instance not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alone = rss_kib(standalone.pid());
    let clustered = rss_kib(cluster.pid());
    // The default subscriber buffer is about 5 MB; the rest is headroom
    // for the Redis clients' own state.
    assert!(
        clustered < alone + 16 * 1024,
        "idle RSS: cluster {clustered} KiB, standalone {alone} KiB"
    );
}
