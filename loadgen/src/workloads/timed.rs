//! Scheduled-sender workloads: W1 room fan-out, W5 big room (W1 with one
//! room) and W3 direct messages. Timeline: connect and join everyone,
//! then warm-up, measurement window, drain. Senders keep their rate
//! through the drain, so late window messages arrive under the same load;
//! only messages stamped inside the window are counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

use super::{Ctx, put_cpu, put_totals, round1, round3, sleep_until_ns};
use crate::engine::{self, ClientSpec, Plan, Role, Shared, now_ns};
use crate::procstat::{CpuSnapshot, CpuUsed};
use crate::report::{Latency, Report, loss_pct};

/// Timeline of a measured run, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup_s: f64,
    pub duration_s: f64,
    pub drain_s: f64,
}

/// W1 (and W5 with one room): `clients` split evenly over the instances,
/// `rooms` rooms each with members on every instance, one publisher per
/// room at `rate` messages/s, publishers alternating between instances.
pub async fn fanout(
    ctx: &Ctx,
    id: &str,
    clients: usize,
    rooms: usize,
    rate: f64,
    timing: Timing,
) -> anyhow::Result<Report> {
    anyhow::ensure!(rooms > 0 && clients >= rooms, "need clients >= rooms > 0");
    anyhow::ensure!(rate > 0.0, "rate must be positive");
    let n = ctx.targets.len();
    let room_names: Vec<Arc<str>> = (0..rooms).map(|r| ctx.room(r)).collect();
    // Client i is on instance i mod n and in room (i / n) mod rooms, so
    // every room has members on every instance.
    let room_of = |i: usize| (i / n) % rooms;
    // The publisher of room r is its first member on instance r mod n.
    let mut publisher_of: Vec<Option<usize>> = vec![None; rooms];
    for i in 0..clients {
        let r = room_of(i);
        let slot = &mut publisher_of[r];
        if slot.is_none() && i % n == r % n {
            *slot = Some(i);
        }
    }
    for (r, slot) in publisher_of.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = (0..clients).find(|&i| room_of(i) == r);
        }
    }
    let period_ns = (1e9 / rate) as u64;
    let mut specs: Vec<ClientSpec> = (0..clients)
        .map(|i| ClientSpec {
            user: ctx.user("u", i),
            target: i % n,
            rooms: vec![Arc::clone(&room_names[room_of(i)])],
            groups: vec![room_of(i) as u32],
            role: Role::Listen,
            expect: 0,
        })
        .collect();
    for (r, who) in publisher_of.iter().enumerate() {
        if let Some(i) = *who {
            specs[i].role = Role::Publish {
                room: Arc::clone(&room_names[r]),
                publisher: r as u32,
                period_ns,
                // Spread the rooms' sends evenly over one period.
                phase_ns: period_ns * r as u64 / rooms as u64,
                key: None,
            };
        }
    }
    let group_of: Vec<u32> = (0..rooms as u32).collect();
    let mut report = ctx.report(id, clients, rooms);
    report.target_rate = Some(rate);
    report
        .detail
        .insert("target_delivery_rate".into(), json!(rate * clients as f64));
    run(
        ctx,
        specs,
        rooms,
        &group_of,
        rooms as f64 * rate,
        timing,
        report,
    )
    .await
}

/// W7, the game tick: `clients` split evenly over the instances and over
/// `rooms` rooms (members on every instance), every client publishing its
/// position at `rate` messages/s with the latest-wins key `pos:<client>`.
/// A replaced message counts as expected but not received, so
/// `expected - received` is what latest-wins (and nothing else, with 0
/// loss of unkeyed messages elsewhere) left out.
pub async fn game(
    ctx: &Ctx,
    id: &str,
    clients: usize,
    rooms: usize,
    rate: f64,
    timing: Timing,
) -> anyhow::Result<Report> {
    anyhow::ensure!(rooms > 0 && clients >= rooms, "need clients >= rooms > 0");
    anyhow::ensure!(rate > 0.0, "rate must be positive");
    let n = ctx.targets.len();
    let room_names: Vec<Arc<str>> = (0..rooms).map(|r| ctx.room(r)).collect();
    let room_of = |i: usize| (i / n) % rooms;
    let period_ns = (1e9 / rate) as u64;
    let specs: Vec<ClientSpec> = (0..clients)
        .map(|i| ClientSpec {
            user: ctx.user("g", i),
            target: i % n,
            rooms: vec![Arc::clone(&room_names[room_of(i)])],
            groups: vec![room_of(i) as u32],
            role: Role::Publish {
                room: Arc::clone(&room_names[room_of(i)]),
                publisher: i as u32,
                period_ns,
                // Spread the clients' sends evenly over one period.
                phase_ns: period_ns * i as u64 / clients as u64,
                key: Some(format!("pos:{i}").into()),
            },
            expect: 0,
        })
        .collect();
    let group_of: Vec<u32> = (0..clients).map(|i| room_of(i) as u32).collect();
    let mut report = ctx.report(id, clients, rooms);
    report.target_rate = Some(rate);
    let members = clients as f64 / rooms as f64;
    report.detail.insert(
        "target_delivery_rate".into(),
        json!(rate * clients as f64 * members),
    );
    let before = ctx.server_counter("roomcast_keyed_replaced_total").await;
    let mut report = run(
        ctx,
        specs,
        clients,
        &group_of,
        clients as f64 * rate,
        timing,
        report,
    )
    .await?;
    let after = ctx.server_counter("roomcast_keyed_replaced_total").await;
    let d = &mut report.detail;
    if let (Some(b), Some(a)) = (before, after) {
        d.insert("replaced".into(), json!(a - b));
    }
    let cpu: Option<f64> = report.server_cpu_s.iter().copied().sum();
    if let Some(cpu) = cpu
        && report.expected > 0
    {
        d.insert(
            "server_cpu_us_per_expected_delivery".into(),
            json!(round3(cpu * 1e6 / report.expected as f64)),
        );
    }
    Ok(report)
}

/// W3: `pairs` senders on the first instance, each sending direct messages
/// at `rate`/s to its own receiver on the second instance (the same one
/// when there is only one).
pub async fn direct(
    ctx: &Ctx,
    id: &str,
    pairs: usize,
    rate: f64,
    timing: Timing,
) -> anyhow::Result<Report> {
    anyhow::ensure!(pairs > 0, "need at least one pair");
    anyhow::ensure!(rate > 0.0, "rate must be positive");
    let n = ctx.targets.len();
    let period_ns = (1e9 / rate) as u64;
    let mut specs = Vec::with_capacity(2 * pairs);
    for j in 0..pairs {
        specs.push(ClientSpec {
            user: ctx.user("d", j),
            target: 1 % n,
            rooms: vec![],
            groups: vec![j as u32],
            role: Role::Listen,
            expect: 0,
        });
    }
    for j in 0..pairs {
        specs.push(ClientSpec {
            user: ctx.user("s", j),
            target: 0,
            rooms: vec![],
            groups: vec![],
            role: Role::Direct {
                to: ctx.user("d", j),
                publisher: j as u32,
                period_ns,
                phase_ns: period_ns * j as u64 / pairs as u64,
            },
            expect: 0,
        });
    }
    let group_of: Vec<u32> = (0..pairs as u32).collect();
    let mut report = ctx.report(id, 2 * pairs, 0);
    report.target_rate = Some(rate);
    report
        .detail
        .insert("target_delivery_rate".into(), json!(rate * pairs as f64));
    run(
        ctx,
        specs,
        pairs,
        &group_of,
        pairs as f64 * rate,
        timing,
        report,
    )
    .await
}

async fn run(
    ctx: &Ctx,
    specs: Vec<ClientSpec>,
    publishers: usize,
    group_of: &[u32],
    target_publish_rate: f64,
    timing: Timing,
    mut report: Report,
) -> anyhow::Result<Report> {
    let clients = specs.len();
    let (sh, plan_tx) = Shared::new(
        ctx.settings.clone(),
        ctx.targets.clone(),
        group_of.len(),
        publishers,
    );
    let mut set = JoinSet::new();
    let t0 = now_ns();
    let wall0 = Instant::now();
    engine::spawn_all(&mut set, specs, &sh);
    let ready = engine::wait_ready(&sh, clients, ctx.connect_deadline(clients), "connect").await;
    let last_ready = sh.last_ready_ns.load(std::sync::atomic::Ordering::Relaxed);
    let connect_s = last_ready.saturating_sub(t0) as f64 / 1e9;
    report
        .detail
        .insert("connect_s".into(), json!(round3(connect_s)));
    if ready == 0 {
        drop(plan_tx);
        engine::join_all(&mut set, Duration::from_secs(5)).await;
        anyhow::bail!(
            "no client connected: {}",
            sh.first_error().unwrap_or_default()
        );
    }

    let s = |x: f64| (x * 1e9) as u64;
    let send_start = now_ns() + s(0.5);
    let window_start = send_start + s(timing.warmup_s);
    let window_end = window_start + s(timing.duration_s);
    let stop = window_end + s(timing.drain_s);
    let plan = Plan {
        send_start_ns: send_start,
        window_start_ns: window_start,
        window_end_ns: window_end,
        send_end_ns: stop,
        stop_ns: stop,
    };
    // Receivers hold a plan receiver, so the send cannot fail while any
    // client runs; if none runs there is nothing to tell.
    let _ = plan_tx.send(plan);
    let extra: Vec<_> = ctx.extra.iter().map(|(_, p)| *p).collect();
    sleep_until_ns(window_start).await;
    let before = CpuSnapshot::take(&ctx.servers, &extra);
    sleep_until_ns(window_end).await;
    let after = CpuSnapshot::take(&ctx.servers, &extra);
    report.rss_bytes = ctx.server_rss();
    report.detail.insert(
        "loadgen_rss_bytes".into(),
        json!(crate::procstat::Proc::Myself.rss_bytes()),
    );
    sleep_until_ns(stop).await;
    let aborted = engine::join_all(&mut set, Duration::from_secs(15)).await;
    drop(plan_tx);
    report
        .detail
        .insert("run_s".into(), json!(round1(wall0.elapsed().as_secs_f64())));

    let totals = sh.totals();
    let hist = sh.latency();
    let lat = Latency::of(&hist);
    let used = CpuUsed::between(&before, &after);
    let window_s = timing.duration_s;
    let expected = sh.expected(group_of);

    report.duration_s = window_s;
    report.published = totals.published_window;
    report.expected = expected;
    report.received = totals.received_window;
    report.loss_pct = loss_pct(expected, totals.received_window);
    let deliveries_per_s = totals.received_window as f64 / window_s;
    report.deliveries_per_s = Some(round1(deliveries_per_s));
    report.p50_ms = lat.p50;
    report.p99_ms = lat.p99;
    report.max_ms = lat.max;
    put_cpu(&mut report, ctx, &used, window_s);
    report.server_cpu_us_per_delivery = used
        .servers_total()
        .filter(|_| totals.received_window > 0)
        .map(|cpu| round3(cpu * 1e6 / totals.received_window as f64));
    put_totals(&mut report, &sh, &totals, aborted);
    if totals.delivery_frames > 0 {
        report.detail.insert(
            "messages_per_frame".into(),
            json!(round3(
                totals.received_total as f64 / totals.delivery_frames as f64
            )),
        );
    }

    let achieved = totals.published_window as f64 / window_s;
    let behind = achieved < 0.99 * target_publish_rate
        || totals.late_sends * 100 > totals.published.max(1)
        || totals.skipped_sends > 0;
    let lg_busy = used.loadgen.is_some_and(|c| c / window_s > 0.9);
    report.loadgen_bottleneck = behind || lg_busy;
    let d = &mut report.detail;
    d.insert("latency_ms".into(), lat.detail());
    d.insert(
        "target_publish_rate".into(),
        json!(round1(target_publish_rate)),
    );
    d.insert("achieved_publish_rate".into(), json!(round1(achieved)));
    d.insert("schedule_behind".into(), json!(behind));
    let errors_seen = totals.errors.keys().any(|k| k.starts_with("error:"));
    let sustainable = ready == clients
        && totals.disconnects == 0
        && expected > 0
        && totals.received_window == expected
        && totals.out_of_order == 0
        && totals.duplicates == 0
        && totals.malformed == 0
        && !errors_seen
        && lat.p99.is_some_and(|p| p < 100.0)
        && achieved >= 0.99 * target_publish_rate;
    d.insert("sustainable".into(), json!(sustainable));
    Ok(report)
}
