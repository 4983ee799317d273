//! W2: idle connections. N clients connect (in waves), each joins one of
//! `rooms` rooms and then only reads (answering the server's pings). The
//! server's RSS before the first client is the base; after a settle time
//! the connections are held, with RSS sampled every second, for longer
//! than one ping interval. bytes per connection = (RSS at the end of the
//! hold - base) / connected clients, summed over the instances.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

use super::{Ctx, put_cpu, put_totals, round1, round3};
use crate::engine::{self, ClientSpec, Plan, Role, Shared, now_ns};
use crate::procstat::{CpuSnapshot, CpuUsed, Proc};
use crate::report::Report;

pub async fn idle(
    ctx: &Ctx,
    id: &str,
    clients: usize,
    rooms: usize,
    settle_s: f64,
    hold_s: f64,
) -> anyhow::Result<Report> {
    anyhow::ensure!(clients > 0 && rooms > 0, "need clients and rooms");
    let n = ctx.targets.len();
    let room_names: Vec<Arc<str>> = (0..rooms).map(|r| ctx.room(r)).collect();
    let specs: Vec<ClientSpec> = (0..clients)
        .map(|i| ClientSpec {
            user: ctx.user("i", i),
            target: i % n,
            rooms: vec![Arc::clone(&room_names[i % rooms])],
            groups: vec![],
            role: Role::Listen,
            expect: 0,
        })
        .collect();
    if let Some(limit) = Proc::Myself.nofile_soft()
        && (limit as usize) < clients + 64
    {
        eprintln!(
            "loadgen: warning: open-file soft limit {limit} is below {clients} clients; \
             raise it with `ulimit -n`"
        );
    }

    let mut report = ctx.report(id, clients, rooms);
    let base = ctx.server_rss();
    let loadgen_base = Proc::Myself.rss_bytes();
    let (sh, plan_tx) = Shared::new(ctx.settings.clone(), ctx.targets.clone(), 0, 0);
    let mut set = JoinSet::new();
    let t0 = now_ns();
    engine::spawn_all(&mut set, specs, &sh);
    let ready = engine::wait_ready(&sh, clients, ctx.connect_deadline(clients), "connect").await;
    let connect_s = sh.last_ready_ns.load(Relaxed).saturating_sub(t0) as f64 / 1e9;

    tokio::time::sleep(Duration::from_secs_f64(settle_s)).await;
    let settled = ctx.server_rss();
    let extra: Vec<_> = ctx.extra.iter().map(|(_, p)| *p).collect();
    let before = CpuSnapshot::take(&ctx.servers, &extra);
    let hold_start = Instant::now();
    let mut peak = settled.clone();
    let hold = Duration::from_secs_f64(hold_s);
    while hold_start.elapsed() < hold {
        let left = hold.saturating_sub(hold_start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        for (p, now) in peak.iter_mut().zip(ctx.server_rss()) {
            *p = (*p).max(now);
        }
    }
    let end = ctx.server_rss();
    let after = CpuSnapshot::take(&ctx.servers, &extra);
    let loadgen_end = Proc::Myself.rss_bytes();
    let _ = plan_tx.send(Plan {
        stop_ns: now_ns(),
        ..Plan::IDLE
    });
    let aborted = engine::join_all(&mut set, Duration::from_secs(30)).await;
    drop(plan_tx);

    let totals = sh.totals();
    let used = CpuUsed::between(&before, &after);
    let per_conn = |to: &[Option<u64>]| -> Option<f64> {
        let growth: Option<i64> = base
            .iter()
            .zip(to)
            .map(|(b, e)| Some(e.as_ref()?.cast_signed() - b.as_ref()?.cast_signed()))
            .sum();
        growth
            .filter(|_| ready > 0)
            .map(|g| round1(g as f64 / ready as f64))
    };
    report.duration_s = hold_s;
    report.rss_bytes = end.clone();
    report.bytes_per_conn = per_conn(&end);
    put_cpu(&mut report, ctx, &used, hold_s);
    put_totals(&mut report, &sh, &totals, aborted);
    report.loadgen_bottleneck = used.loadgen.is_some_and(|c| c / hold_s > 0.9);
    let d = &mut report.detail;
    d.insert("connect_s".into(), json!(round3(connect_s)));
    d.insert(
        "connect_rate_per_s".into(),
        json!((connect_s > 0.0).then(|| round1(ready as f64 / connect_s))),
    );
    d.insert("settle_s".into(), json!(settle_s));
    d.insert("rss_base_bytes".into(), json!(base));
    d.insert("rss_settled_bytes".into(), json!(settled));
    d.insert("rss_peak_bytes".into(), json!(peak));
    d.insert("bytes_per_conn_settled".into(), json!(per_conn(&settled)));
    d.insert("bytes_per_conn_peak".into(), json!(per_conn(&peak)));
    d.insert(
        "loadgen_bytes_per_conn".into(),
        json!(
            loadgen_base
                .zip(loadgen_end)
                .filter(|_| ready > 0)
                .map(|(b, e)| round1((e.cast_signed() - b.cast_signed()) as f64 / ready as f64))
        ),
    );
    let sustainable = ready == clients && totals.disconnects == 0 && totals.malformed == 0;
    d.insert("sustainable".into(), json!(sustainable));
    Ok(report)
}
