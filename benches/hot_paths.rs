//! Micro-benchmarks of the hot paths: codec encode/decode for both codecs,
//! local fan-out to 1,000 recipients, and registry join/leave under
//! contention. `cargo bench --bench hot_paths`.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use roomcast::config::SlowConsumerPolicy;
use roomcast::conn::handle::ConnHandle;
use roomcast::fanout;
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, Data, ServerEvent};
use roomcast::registry::{Registry, scoped};
use serde_json::json;

fn main() {
    divan::main();
}

fn payload() -> Data {
    Data::from(json!({"t": 123_456_789u64, "p": 17, "s": 4242, "x": "x".repeat(64)}))
}

fn message_event(data: &Data) -> ServerEvent<'_> {
    ServerEvent::Message {
        room: Cow::Borrowed("encounter:42"),
        from: Cow::Borrowed("user-17"),
        data: Cow::Borrowed(data),
        ts: 1_763_000_000_000,
        mid: Cow::Borrowed("a1b2c3d4-1f2e"),
        offset: None,
        epoch: None,
        key: None,
    }
}

const CODECS: [Codec; 2] = [Codec::Json, Codec::MsgPack];

#[divan::bench(args = CODECS)]
fn encode_message(bencher: divan::Bencher, codec: Codec) {
    let data = payload();
    let event = message_event(&data);
    bencher.bench(|| codec.encode(divan::black_box(&event)));
}

#[divan::bench(args = CODECS)]
fn decode_publish(bencher: divan::Bencher, codec: Codec) {
    let frame = ClientFrame::new("publish")
        .id(7u64)
        .room("encounter:42")
        .data(payload());
    let bytes = codec.encode(&frame).expect("encode");
    bencher.bench(|| codec.decode_request(divan::black_box(&bytes)));
}

struct Room {
    registry: Registry,
    members: Vec<Arc<ConnHandle>>,
}

fn room_of(n: usize) -> Room {
    let registry = Registry::new();
    let room = scoped("", "big");
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        let codec = if i % 2 == 0 {
            Codec::Json
        } else {
            Codec::MsgPack
        };
        let handle = ConnHandle::new(
            i as u64,
            scoped("", &format!("u{i}")),
            codec,
            64,
            SlowConsumerPolicy::Drop,
        );
        registry.add_conn(&handle);
        registry.join(&handle, &room, 10).expect("join");
        members.push(handle);
    }
    Room { registry, members }
}

/// One event to 1,000 local members (half JSON, half MessagePack): two
/// encodes and 1,000 queue pushes, plus draining the queues as the writers
/// would.
#[divan::bench]
fn fanout_1k(bencher: divan::Bencher) {
    let room = room_of(1000);
    let data = payload();
    let event = message_event(&data);
    let mut drained = VecDeque::new();
    let members = room.registry.room_members("/big").expect("members");
    bencher.bench_local(|| {
        let sent = fanout::deliver_members(&members, &event);
        for member in &room.members {
            member.outbox.take_all(&mut drained);
            drained.clear();
        }
        sent
    });
}

/// Join and leave of random rooms on a shared registry, from 1 and 2 threads.
#[divan::bench(threads = [1, 2])]
fn registry_join_leave(bencher: divan::Bencher) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    let registry = REGISTRY.get_or_init(Registry::new);
    let rooms: Vec<Arc<str>> = (0..64).map(|i| scoped("", &format!("room{i}"))).collect();
    bencher.bench(|| {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let handle = ConnHandle::new(
            id,
            scoped("", "u"),
            Codec::Json,
            1,
            SlowConsumerPolicy::Drop,
        );
        registry.add_conn(&handle);
        let room = &rooms[(id % 64) as usize];
        let _ = registry.join(&handle, room, 10);
        registry.remove_conn(&handle)
    });
}
