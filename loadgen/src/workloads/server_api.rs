//! W8, the server API: `rooms` rooms of `members` WebSocket listeners
//! (split over the instances), and `drivers` HTTP connections that POST
//! batches of `batch` publishes to `/api/batch`, alternating between
//! instances. Each room belongs to one driver, whose batches run one after
//! the other, so per-room order is the server's to keep; the listeners'
//! order tracker checks it (publisher = room). Latency is from the POST
//! (the stamp in `data`) to receipt.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::timed::Timing;
use super::{Ctx, put_cpu, put_totals, round1, round3, sleep_until_ns};
use crate::engine::{self, ClientSpec, Plan, Role, Shared, new_hist, now_ns};
use crate::procstat::{CpuSnapshot, CpuUsed};
use crate::report::{Latency, Report, loss_pct};

/// The shape of a W8 run.
#[derive(Debug, Clone)]
pub struct ApiShape {
    pub rooms: usize,
    pub members: usize,
    /// Publishes per batch request.
    pub batch: usize,
    /// Concurrent HTTP connections, each owning `rooms / drivers` rooms.
    pub drivers: usize,
    /// Target publishes/s over all drivers; 0 = each driver as fast as it
    /// gets answers.
    pub rate: f64,
    pub api_key: String,
}

/// What one driver did.
#[derive(Default)]
struct DriverTotals {
    batches: u64,
    accepted: u64,
    accepted_window: u64,
    refused_items: u64,
    http_errors: u64,
    late: u64,
    first_error: Option<String>,
    /// POST to answer, µs.
    answer_us: Vec<u64>,
}

pub async fn server_api(
    ctx: &Ctx,
    id: &str,
    shape: &ApiShape,
    timing: Timing,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        shape.rooms > 0 && shape.members > 0,
        "need rooms and members"
    );
    anyhow::ensure!(
        shape.batch > 0 && shape.drivers > 0,
        "need a batch size and drivers"
    );
    let n = ctx.targets.len();
    let clients = shape.rooms * shape.members;
    // Client i is on instance i mod n, in room i / members: with an even
    // member count every room has members on every instance.
    let specs: Vec<ClientSpec> = (0..clients)
        .map(|i| {
            let r = i / shape.members;
            ClientSpec {
                user: ctx.user("m", i),
                target: i % n,
                rooms: vec![ctx.room(r)],
                groups: vec![r as u32],
                role: Role::Listen,
                expect: 0,
            }
        })
        .collect();
    let (sh, plan_tx) = Shared::new(
        ctx.settings.clone(),
        ctx.targets.clone(),
        shape.rooms,
        shape.rooms,
    );
    let mut set = JoinSet::new();
    let t0 = now_ns();
    let wall0 = Instant::now();
    engine::spawn_all(&mut set, specs, &sh);
    let ready = engine::wait_ready(&sh, clients, ctx.connect_deadline(clients), "connect").await;
    let mut report = ctx.report(id, clients, shape.rooms);
    report.target_rate = Some(shape.rate);
    let last_ready = sh.last_ready_ns.load(Relaxed);
    report.detail.insert(
        "connect_s".into(),
        json!(round3(last_ready.saturating_sub(t0) as f64 / 1e9)),
    );
    if ready == 0 {
        drop(plan_tx);
        engine::join_all(&mut set, Duration::from_secs(5)).await;
        bail!(
            "no client connected: {}",
            sh.first_error().unwrap_or_default()
        );
    }

    let s = |x: f64| (x * 1e9) as u64;
    let send_start = now_ns() + s(0.5);
    let window_start = send_start + s(timing.warmup_s);
    let window_end = window_start + s(timing.duration_s);
    let stop = window_end + s(timing.drain_s);
    // Drivers stop a little before the listeners, so the last batches'
    // deliveries arrive before the listeners stop reading.
    let send_end = stop.saturating_sub(s(timing.drain_s.min(1.0)));
    let plan = Plan {
        send_start_ns: send_start,
        window_start_ns: window_start,
        window_end_ns: window_end,
        send_end_ns: send_end,
        stop_ns: stop,
    };
    let _ = plan_tx.send(plan);

    let room_names: Arc<Vec<Arc<str>>> = Arc::new((0..shape.rooms).map(|r| ctx.room(r)).collect());
    let mut drivers = JoinSet::new();
    for d in 0..shape.drivers {
        let owned: Vec<usize> = (d..shape.rooms).step_by(shape.drivers).collect();
        if owned.is_empty() {
            continue;
        }
        drivers.spawn(drive(
            ctx.targets[d % n].addr,
            shape.clone(),
            d,
            owned,
            Arc::clone(&room_names),
            ctx.settings.pad.clone(),
            plan,
            Arc::clone(&sh),
        ));
    }

    let extra: Vec<_> = ctx.extra.iter().map(|(_, p)| *p).collect();
    sleep_until_ns(window_start).await;
    let before = CpuSnapshot::take(&ctx.servers, &extra);
    sleep_until_ns(window_end).await;
    let after = CpuSnapshot::take(&ctx.servers, &extra);
    report.rss_bytes = ctx.server_rss();
    sleep_until_ns(stop).await;
    let mut dt = DriverTotals::default();
    let mut answer_hist = new_hist();
    while let Some(done) = drivers.join_next().await {
        let Ok(t) = done else { continue };
        dt.batches += t.batches;
        dt.accepted += t.accepted;
        dt.accepted_window += t.accepted_window;
        dt.refused_items += t.refused_items;
        dt.http_errors += t.http_errors;
        dt.late += t.late;
        if dt.first_error.is_none() {
            dt.first_error = t.first_error;
        }
        for us in t.answer_us {
            answer_hist.saturating_record(us.max(1));
        }
    }
    let aborted = engine::join_all(&mut set, Duration::from_secs(15)).await;
    drop(plan_tx);
    report
        .detail
        .insert("run_s".into(), json!(round1(wall0.elapsed().as_secs_f64())));

    let totals = sh.totals();
    let lat = Latency::of(&sh.latency());
    let used = CpuUsed::between(&before, &after);
    let window_s = timing.duration_s;
    let group_of: Vec<u32> = (0..shape.rooms as u32).collect();
    let expected = sh.expected(&group_of);
    report.duration_s = window_s;
    report.published = dt.accepted_window;
    report.expected = expected;
    report.received = totals.received_window;
    report.loss_pct = loss_pct(expected, totals.received_window);
    report.deliveries_per_s = Some(round1(totals.received_window as f64 / window_s));
    report.p50_ms = lat.p50;
    report.p99_ms = lat.p99;
    report.max_ms = lat.max;
    put_cpu(&mut report, ctx, &used, window_s);
    report.server_cpu_us_per_delivery = used
        .servers_total()
        .filter(|_| totals.received_window > 0)
        .map(|cpu| round3(cpu * 1e6 / totals.received_window as f64));
    put_totals(&mut report, &sh, &totals, aborted);
    let accepted_per_s = dt.accepted_window as f64 / window_s;
    let behind = shape.rate > 0.0 && accepted_per_s < 0.99 * shape.rate;
    let lg_busy = used.loadgen.is_some_and(|c| c / window_s > 0.9);
    report.loadgen_bottleneck = lg_busy;
    let answer = Latency::of(&answer_hist);
    let d = &mut report.detail;
    d.insert("members_per_room".into(), json!(shape.members));
    d.insert("batch_items".into(), json!(shape.batch));
    d.insert("drivers".into(), json!(shape.drivers));
    d.insert(
        "accepted_publishes_per_s".into(),
        json!(round1(accepted_per_s)),
    );
    d.insert("batches".into(), json!(dt.batches));
    d.insert("accepted_total".into(), json!(dt.accepted));
    d.insert("refused_items".into(), json!(dt.refused_items));
    d.insert("http_errors".into(), json!(dt.http_errors));
    d.insert("late_batches".into(), json!(dt.late));
    d.insert("first_http_error".into(), json!(dt.first_error));
    d.insert("batch_answer_ms".into(), answer.detail());
    d.insert("latency_ms".into(), lat.detail());
    d.insert("schedule_behind".into(), json!(behind));
    let sustainable = ready == clients
        && totals.disconnects == 0
        && dt.http_errors == 0
        && dt.refused_items == 0
        && expected > 0
        && totals.received_window == expected
        && totals.out_of_order == 0
        && totals.duplicates == 0
        && totals.malformed == 0
        && lat.p99.is_some_and(|p| p < 100.0)
        && !behind;
    d.insert("sustainable".into(), json!(sustainable));
    Ok(report)
}

/// One HTTP connection posting batches for its rooms until the plan's
/// send end.
#[allow(clippy::too_many_arguments)]
async fn drive(
    addr: SocketAddr,
    shape: ApiShape,
    index: usize,
    rooms: Vec<usize>,
    names: Arc<Vec<Arc<str>>>,
    pad: String,
    plan: Plan,
    sh: Arc<Shared>,
) -> DriverTotals {
    let mut t = DriverTotals::default();
    let mut seq = vec![0u64; rooms.len()];
    let mut next_room = 0usize;
    // Batches/s of this driver, and its phase among the drivers.
    let period_ns = if shape.rate > 0.0 {
        (1e9 * shape.batch as f64 * shape.drivers as f64 / shape.rate) as u64
    } else {
        0
    };
    let mut due = plan.send_start_ns + period_ns * index as u64 / shape.drivers as u64;
    let mut conn: Option<TcpStream> = None;
    let auth = format!("Bearer {}", shape.api_key);
    loop {
        if period_ns > 0 {
            if now_ns() < due {
                sleep_until_ns(due).await;
            } else if now_ns() > due + period_ns {
                t.late += 1;
            }
            due += period_ns;
        } else if now_ns() < plan.send_start_ns {
            sleep_until_ns(plan.send_start_ns).await;
        }
        let sent_at = now_ns();
        if sent_at >= plan.send_end_ns {
            break;
        }
        let mut items = Vec::with_capacity(shape.batch);
        let mut batch_rooms = Vec::with_capacity(shape.batch);
        for _ in 0..shape.batch {
            let k = next_room;
            next_room = (next_room + 1) % rooms.len();
            let r = rooms[k];
            items.push(json!({
                "op": "publish",
                "room": &*names[r],
                "data": {"t": sent_at, "p": r, "s": seq[k], "x": &pad},
            }));
            seq[k] += 1;
            batch_rooms.push(r);
        }
        let body = json!({ "items": items }).to_string();
        let answer = match conn.as_mut() {
            Some(c) => post(c, addr, &auth, &body).await,
            None => match TcpStream::connect(addr).await {
                Ok(c) => {
                    let _ = c.set_nodelay(true);
                    post(conn.insert(c), addr, &auth, &body).await
                }
                Err(e) => Err(anyhow::anyhow!("connect {addr}: {e}")),
            },
        };
        t.batches += 1;
        t.answer_us.push(now_ns().saturating_sub(sent_at) / 1000);
        let in_window = sent_at >= plan.window_start_ns && sent_at < plan.window_end_ns;
        match answer {
            Ok((200, body)) => {
                let results: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let results = results["results"].as_array().cloned().unwrap_or_default();
                for (i, r) in batch_rooms.iter().enumerate() {
                    if results.get(i).is_some_and(|x| x["status"] == "published") {
                        t.accepted += 1;
                        if in_window {
                            t.accepted_window += 1;
                            if let Some(c) = sh.published_window.get(*r) {
                                c.fetch_add(1, Relaxed);
                            }
                        }
                    } else {
                        t.refused_items += 1;
                    }
                }
            }
            Ok((status, body)) => {
                t.http_errors += 1;
                t.first_error.get_or_insert_with(|| {
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&body))
                });
            }
            Err(e) => {
                t.http_errors += 1;
                t.first_error.get_or_insert_with(|| e.to_string());
                conn = None;
            }
        }
    }
    t
}

/// One POST /api/batch on a kept-alive connection: status and body.
async fn post(
    c: &mut TcpStream,
    addr: SocketAddr,
    auth: &str,
    body: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let head = format!(
        "POST /api/batch HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await?;
    c.write_all(body.as_bytes()).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let (head_len, content_length, status) = loop {
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the answer");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("answer head")?;
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("status")?;
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .context("no content-length")?;
            break (end + 4, len, status);
        }
    };
    while buf.len() < head_len + content_length {
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed inside the answer");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, buf[head_len..head_len + content_length].to_vec()))
}
