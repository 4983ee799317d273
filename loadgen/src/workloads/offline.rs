//! W4: offline queue. `senders` online clients on the first instance send
//! `messages` direct messages to each of `users` users who have never
//! connected, round by round, as fast as the server takes them; each
//! sender then pings, and the pong (answered in order) marks its sends as
//! taken. Then the users connect to the second instance (the same one when
//! there is only one) and each must get all its messages, queued, in
//! order. Enqueue rate = messages / time until the last pong; drain rate =
//! messages / time from the first user connecting until the last user has
//! all its messages.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

use super::{Ctx, put_cpu, put_totals, round1, round3};
use crate::engine::{self, ClientSpec, NEVER, Plan, Role, Shared, now_ns};
use crate::procstat::{CpuSnapshot, CpuUsed};
use crate::report::{Latency, Report, loss_pct};

pub struct OfflineShape {
    pub users: usize,
    pub messages: u32,
    pub senders: usize,
    /// Longest wait for the enqueue phase, and again for the drain phase.
    pub phase_timeout_s: f64,
}

pub async fn offline(ctx: &Ctx, id: &str, shape: &OfflineShape) -> anyhow::Result<Report> {
    anyhow::ensure!(
        shape.users > 0 && shape.senders > 0 && shape.messages > 0,
        "need users, senders and messages"
    );
    let n = ctx.targets.len();
    let senders = shape.senders.min(shape.users);
    let users: Vec<Arc<str>> = (0..shape.users).map(|j| ctx.user("q", j)).collect();
    let sender_specs: Vec<ClientSpec> = (0..senders)
        .map(|k| ClientSpec {
            user: ctx.user("w", k),
            target: 0,
            rooms: vec![],
            groups: vec![],
            role: Role::Burst {
                to: users.iter().skip(k).step_by(senders).cloned().collect(),
                publisher: k as u32,
                rounds: shape.messages,
            },
            expect: 0,
        })
        .collect();
    let user_specs: Vec<ClientSpec> = users
        .iter()
        .map(|u| ClientSpec {
            user: Arc::clone(u),
            target: 1 % n,
            rooms: vec![],
            groups: vec![],
            role: Role::Listen,
            expect: u64::from(shape.messages),
        })
        .collect();

    let mut report = ctx.report(id, senders + shape.users, 0);
    let (sh, plan_tx) = Shared::new(ctx.settings.clone(), ctx.targets.clone(), 0, senders);
    let mut set = JoinSet::new();
    engine::spawn_all(&mut set, sender_specs, &sh);
    let ready_senders =
        engine::wait_ready(&sh, senders, ctx.connect_deadline(senders), "senders").await;
    anyhow::ensure!(
        ready_senders > 0,
        "no sender connected: {}",
        sh.first_error().unwrap_or_default()
    );

    let extra: Vec<_> = ctx.extra.iter().map(|(_, p)| *p).collect();
    let before = CpuSnapshot::take(&ctx.servers, &extra);
    let wall0 = Instant::now();
    // Bursts start as soon as the plan reaches the senders.
    let send_start = now_ns();
    let _ = plan_tx.send(Plan {
        send_start_ns: send_start,
        window_start_ns: 0,
        window_end_ns: NEVER,
        send_end_ns: NEVER,
        stop_ns: NEVER,
    });
    let phase_limit = Duration::from_secs_f64(shape.phase_timeout_s);
    let t = Instant::now();
    while sh.bursts_done.load(Relaxed) < ready_senders && t.elapsed() < phase_limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bursts_done = sh.bursts_done.load(Relaxed);
    let enqueue_s = sh
        .last_burst_done_ns
        .load(Relaxed)
        .saturating_sub(send_start) as f64
        / 1e9;
    let enqueued: u64 = sh.published_window.iter().map(|c| c.load(Relaxed)).sum();
    eprintln!(
        "loadgen: enqueue: {enqueued} messages, {bursts_done}/{ready_senders} senders done in {enqueue_s:.2} s"
    );

    let drain_t0 = now_ns();
    let users_n = user_specs.len();
    engine::spawn_all(&mut set, user_specs, &sh);
    let t = Instant::now();
    let mut last_print = Instant::now();
    let failed_senders = senders - ready_senders;
    while sh.done.load(Relaxed) + sh.failed.load(Relaxed).saturating_sub(failed_senders) < users_n
        && t.elapsed() < phase_limit
    {
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "loadgen: drain: {}/{users_n} users complete, {} connected",
                sh.done.load(Relaxed),
                sh.ready.load(Relaxed).saturating_sub(ready_senders)
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let users_done = sh.done.load(Relaxed);
    let drain_end = if users_done == users_n {
        sh.last_done_ns.load(Relaxed)
    } else {
        now_ns()
    };
    let drain_s = drain_end.saturating_sub(drain_t0) as f64 / 1e9;
    // A short grace so that duplicates or stragglers are seen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = CpuSnapshot::take(&ctx.servers, &extra);
    report.rss_bytes = ctx.server_rss();
    let wall_s = wall0.elapsed().as_secs_f64();
    let _ = plan_tx.send(Plan {
        stop_ns: now_ns(),
        send_start_ns: send_start,
        window_start_ns: 0,
        window_end_ns: NEVER,
        send_end_ns: NEVER,
    });
    let aborted = engine::join_all(&mut set, Duration::from_secs(30)).await;
    drop(plan_tx);

    let totals = sh.totals();
    let lat = Latency::of(&sh.latency());
    let used = CpuUsed::between(&before, &after);
    let expected = enqueued;
    report.duration_s = round3(enqueue_s + drain_s);
    report.published = enqueued;
    report.expected = expected;
    report.received = totals.received_window;
    report.loss_pct = loss_pct(expected, totals.received_window);
    report.deliveries_per_s =
        (drain_s > 0.0).then(|| round1(totals.received_window as f64 / drain_s));
    report.p50_ms = lat.p50;
    report.p99_ms = lat.p99;
    report.max_ms = lat.max;
    put_cpu(&mut report, ctx, &used, wall_s);
    report.server_cpu_us_per_delivery = used
        .servers_total()
        .filter(|_| totals.received_window > 0)
        .map(|cpu| round3(cpu * 1e6 / totals.received_window as f64));
    put_totals(&mut report, &sh, &totals, aborted);
    report.loadgen_bottleneck = used.loadgen.is_some_and(|c| c / wall_s > 0.9);
    let d = &mut report.detail;
    d.insert("latency_ms".into(), lat.detail());
    d.insert("users".into(), json!(shape.users));
    d.insert("messages_per_user".into(), json!(shape.messages));
    d.insert("senders".into(), json!(senders));
    d.insert("enqueue_s".into(), json!(round3(enqueue_s)));
    d.insert(
        "enqueue_rate_per_s".into(),
        json!((enqueue_s > 0.0).then(|| round1(enqueued as f64 / enqueue_s))),
    );
    d.insert("bursts_done".into(), json!(bursts_done));
    d.insert("drain_s".into(), json!(round3(drain_s)));
    d.insert(
        "drain_rate_per_s".into(),
        json!((drain_s > 0.0).then(|| round1(totals.received_window as f64 / drain_s))),
    );
    d.insert("users_complete".into(), json!(users_done));
    let order_kept = totals.out_of_order == 0 && totals.duplicates == 0;
    d.insert("order_kept".into(), json!(order_kept));
    let sustainable = bursts_done == senders
        && users_done == users_n
        && expected > 0
        && totals.received_window == expected
        && order_kept
        && totals.live_deliveries == 0
        && totals.malformed == 0
        && totals.disconnects == 0;
    d.insert("sustainable".into(), json!(sustainable));
    Ok(report)
}
