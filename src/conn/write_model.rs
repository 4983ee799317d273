//! An exhaustive model test of the write side's hand-over: every
//! interleaving, up to a bounded depth, of pushers writing directly (the
//! socket taking all, part or none of a write), the task taking, claiming
//! and writing, client pings, the task ending (killed or after a queued
//! close), room messages held by a write delay and latest-wins messages
//! replacing unsent ones of the same key, and the final shut and close,
//! run on the real [`Outbox`] and
//! [`WriteSide`] against a simulated socket. After every step the bytes on
//! the wire must be whole frames (the last one possibly still being
//! written), data frames in push order, and at the end at most one close
//! frame, after whole frames only. A replaced keyed frame never reaches
//! the wire, and the data frames that do are a subsequence of the pushes.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::WriteSide;
use crate::conn::handle::{Delivery, DirectWrite, Outbound, Outbox, PushError, Take};
use crate::protocol::Codec;
use crate::ws;

/// How much of the next write the simulated socket takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accept {
    All,
    Part,
    Zero,
}

impl Accept {
    fn of(self, len: usize) -> usize {
        match self {
            Accept::All => len,
            // Cuts a frame inside: its header or its payload.
            Accept::Part => len.div_ceil(2).min(len.saturating_sub(1)).max(1),
            Accept::Zero => 0,
        }
    }
}

#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
    accept: Option<Accept>,
}

/// The socket: what it was given, and how much it takes of the next write.
#[derive(Default)]
struct Sim(Mutex<Wire>);

impl Sim {
    fn wire(&self) -> std::sync::MutexGuard<'_, Wire> {
        self.0.lock().expect("one thread")
    }

    fn write(&self, buf: &[u8], accept: Accept) -> io::Result<usize> {
        let n = accept.of(buf.len());
        let mut w = self.wire();
        w.bytes.extend_from_slice(&buf[..n]);
        match n {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

impl DirectWrite for Sim {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let accept = self.wire().accept.take().expect("accept set");
        self.write(buf, accept)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// A pusher pushes the next data frame; a direct write meets `Accept`.
    Push(Accept),
    /// A pusher pushes the next data frame with the latest-wins key `k`
    /// and no delay; a direct write meets `Accept`.
    PushKeyed(Accept),
    /// A pusher pushes the next data frame, keyed `k`, with a write delay.
    PushHeld,
    /// The keepalive sweep pushes a ping.
    PushPing,
    /// A queued close (`close_after_queue`).
    PushClose,
    /// The task makes one vectored write of what it took.
    TaskWrite(Accept),
    /// The task takes the queue (only once what it took is written).
    TaskTake,
    /// The task looks at the queue before held messages are due: it takes
    /// everything, or nothing while only held messages wait.
    TaskTakeEarly,
    /// A client ping reaches the task, which answers it.
    ClientPing,
    /// The task is killed and stops.
    Kill,
    /// The outbox is shut and the socket closed; the peer reads the rest
    /// of a started frame in time, or does not (a reset).
    Shut { reads: bool },
}

const ACTIONS: [Action; 16] = [
    Action::Push(Accept::All),
    Action::Push(Accept::Part),
    Action::Push(Accept::Zero),
    Action::PushKeyed(Accept::Part),
    Action::PushHeld,
    Action::PushPing,
    Action::PushClose,
    Action::TaskWrite(Accept::All),
    Action::TaskWrite(Accept::Part),
    Action::TaskWrite(Accept::Zero),
    Action::TaskTake,
    Action::TaskTakeEarly,
    Action::ClientPing,
    Action::Kill,
    Action::Shut { reads: true },
    Action::Shut { reads: false },
];

/// Queue capacity in the model: small, so a full queue is reached.
const CAPACITY: usize = 2;
const KILL_CODE: u16 = 4000;
/// A write delay no model run outlasts.
const HELD_US: u64 = 60_000_000;

/// The one latest-wins key of the model.
fn key() -> Arc<str> {
    Arc::from("room\0k")
}
const QUEUED_CODE: u16 = 1001;

struct Model {
    sim: Arc<Sim>,
    outbox: Outbox<Sim>,
    task: WriteSide,
    /// Data frames accepted by the outbox, in push order.
    pushed: Vec<Bytes>,
    /// Keyed frames that a newer one replaced: never on the wire.
    replaced: Vec<Bytes>,
    pongs: Vec<Bytes>,
    next: u8,
    /// The task stopped: killed, or its queued close came up.
    ended: Option<u16>,
    shut: bool,
    reset: bool,
}

impl Model {
    fn new() -> Model {
        let sim = Arc::new(Sim::default());
        let outbox = Outbox::with_direct_gap(CAPACITY, 0);
        outbox.set_stream(sim.clone());
        Model {
            sim,
            outbox,
            task: WriteSide::new(Codec::Json, false),
            pushed: Vec::new(),
            replaced: Vec::new(),
            pongs: Vec::new(),
            next: 0,
            ended: None,
            shut: false,
            reset: false,
        }
    }

    fn next_frame(&mut self) -> Bytes {
        let frame = ws::frame(ws::OP_TEXT, format!("data-{:02}", self.next).as_bytes());
        self.next += 1;
        frame
    }

    /// Whether `action` can happen now.
    fn allowed(&self, action: Action) -> bool {
        let running = self.ended.is_none();
        match action {
            _ if self.shut => false,
            Action::Push(_)
            | Action::PushKeyed(_)
            | Action::PushHeld
            | Action::PushPing
            | Action::PushClose => true,
            Action::TaskWrite(_) => running && !self.task.is_flushed(),
            Action::TaskTake | Action::TaskTakeEarly => running && self.task.is_flushed(),
            Action::ClientPing | Action::Kill => running,
            Action::Shut { .. } => !running,
        }
    }

    fn push(&mut self, item: Outbound, accept: Accept) {
        self.push_with(item, accept, 0);
    }

    fn push_with(&mut self, item: Outbound, accept: Accept, delay_us: u64) {
        self.sim.wire().accept = Some(accept);
        let data = match &item {
            Outbound::Frame(f) | Outbound::Keyed { frame: f, .. } => Some(f.clone()),
            _ => None,
        };
        let before = self.outbox.queued_keyed();
        let result = match item {
            Outbound::Keyed { frame, key } => self.outbox.push_room(
                frame,
                &Delivery {
                    delay_us,
                    key: Some(key),
                },
            ),
            item => self.outbox.push(item),
        };
        match result {
            Ok(_) => self.pushed.extend(data),
            // A full queue drops the item (the `drop` policy; a kill is
            // its own action).
            Err(PushError::Full) => {}
            Err(PushError::Closed) => panic!("a push failed before the shut"),
        }
        // A keyed frame queued before a push and gone after it was replaced.
        let after = self.outbox.queued_keyed();
        self.replaced
            .extend(before.into_iter().filter(|f| !after.contains(f)));
        // A push that made no direct write leaves `accept` unused.
        self.sim.wire().accept = None;
    }

    fn step(&mut self, action: Action) {
        match action {
            Action::Push(accept) => {
                let frame = self.next_frame();
                self.push(Outbound::Frame(frame), accept);
            }
            Action::PushKeyed(accept) => {
                let frame = self.next_frame();
                self.push_with(Outbound::Keyed { frame, key: key() }, accept, 0);
            }
            Action::PushHeld => {
                let frame = self.next_frame();
                // Never due in the model: only a take that must take
                // everything takes it.
                self.push_with(Outbound::Keyed { frame, key: key() }, Accept::All, HELD_US);
            }
            Action::PushPing => self.push(Outbound::Ping, Accept::All),
            Action::PushClose => self.push(
                Outbound::Close(crate::protocol::CloseCode::GoingAway),
                Accept::All,
            ),
            Action::TaskWrite(accept) => {
                let mut slices = [io::IoSlice::new(&[]); super::WRITE_SLICES];
                let count = self.task.slices(&mut slices);
                let joined: Vec<u8> = slices[..count].iter().flat_map(|s| s.to_vec()).collect();
                if let Ok(n) = self.sim.write(&joined, accept) {
                    self.task.advance(n);
                }
            }
            Action::TaskTake => {
                self.outbox.take_all(&mut self.task.items);
                self.task.enqueue();
            }
            Action::TaskTakeEarly => {
                let queued = self.outbox.queued_keyed().len();
                if let Take::HeldUntil(_) = self.outbox.take(&mut self.task.items, false) {
                    assert_eq!(self.outbox.queued_keyed().len(), queued, "held, not taken");
                }
                self.task.enqueue();
            }
            Action::ClientPing => {
                let payload = format!("pong-{}", self.pongs.len());
                self.pongs.push(ws::frame(ws::OP_PONG, payload.as_bytes()));
                self.task.answer_ping(payload.as_bytes(), &self.outbox);
            }
            Action::Kill => self.ended = Some(KILL_CODE),
            Action::Shut { reads } => {
                self.shut = true;
                let rest = self.outbox.shut();
                let mut wire = self.sim.wire();
                if let Some(started) = self.task.started(rest) {
                    if !reads {
                        self.reset = true;
                        return;
                    }
                    wire.bytes.extend_from_slice(&started);
                }
                let code = self.ended.expect("shut after the end");
                wire.bytes.extend_from_slice(&ws::close_frame(code, "bye"));
            }
        }
        // The task ends once its queued close comes up.
        if self.ended.is_none() && self.task.is_flushed() && self.task.close_after.is_some() {
            self.ended = Some(QUEUED_CODE);
        }
    }

    /// Checks the wire; `trace` names the steps that led here.
    fn check(&self, trace: &[Action]) {
        let wire = self.sim.wire().bytes.clone();
        let mut at = 0;
        let mut data = self.pushed.iter();
        let mut pongs = self.pongs.iter();
        let mut closed = false;
        while at < wire.len() {
            let Some(len) = frame_len(&wire[at..]) else {
                break;
            };
            if at + len > wire.len() {
                break;
            }
            let frame = &wire[at..at + len];
            assert!(!closed, "a frame after the close frame: {trace:?}");
            match ws::opcode(frame) {
                ws::OP_TEXT if self.replaced.iter().any(|r| r.as_ref() == frame) => {
                    panic!("a replaced keyed frame was written: {frame:?} after {trace:?}")
                }
                ws::OP_TEXT => assert!(
                    data.any(|d| d.as_ref() == frame),
                    "not a pushed data frame, or out of order: {frame:?} after {trace:?}"
                ),
                ws::OP_PONG => assert!(
                    pongs.any(|p| p.as_ref() == frame),
                    "not an answered ping: {frame:?} after {trace:?}"
                ),
                ws::OP_PING => assert_eq!(frame, &ws::PING[..], "{trace:?}"),
                ws::OP_CLOSE => closed = true,
                op => panic!("opcode {op:#x}: bytes of two frames mixed, after {trace:?}"),
            }
            at += len;
        }
        if self.shut && !self.reset {
            assert_eq!(at, wire.len(), "a frame cut off: {trace:?}");
            assert!(closed, "no close frame: {trace:?}");
        }
        if !self.shut {
            assert!(!closed, "a close frame before the close: {trace:?}");
        }
    }
}

/// The length of the frame `bytes` starts with, once its header is there.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 2 {
        return None;
    }
    let len = (bytes[1] & 0x7f) as usize;
    assert!(len < 126, "model frames are short");
    Some(2 + len)
}

/// Runs every sequence of allowed actions up to `depth`, checking after
/// every step; returns how many states were checked.
fn explore(trace: &mut Vec<Action>, depth: usize) -> u64 {
    let mut model = Model::new();
    for (i, &action) in trace.iter().enumerate() {
        model.step(action);
        if i + 1 == trace.len() {
            model.check(trace);
        }
    }
    let mut states = 1;
    if trace.len() == depth {
        return states;
    }
    for action in ACTIONS {
        if model.allowed(action) {
            trace.push(action);
            states += explore(trace, depth);
            trace.pop();
        }
    }
    states
}

/// Depth 6 checks about 330,000 states in seconds; `ROOMCAST_MODEL_DEPTH=7`
/// (some millions, half a minute in a debug build) goes deeper.
#[test]
fn every_interleaving_keeps_whole_frames_and_one_close_at_the_end() {
    let depth = std::env::var("ROOMCAST_MODEL_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(6);
    let states = explore(&mut Vec::new(), depth);
    assert!(states > 100_000, "{states}");
}

/// The sequences that broke before the hand-over was one state machine.
#[test]
fn known_bad_interleavings_are_covered() {
    use Action::*;
    let cases: [&[Action]; 4] = [
        // A pong claimed past the rest of a frame a pusher began.
        &[
            TaskTake,
            Push(Accept::Part),
            ClientPing,
            TaskWrite(Accept::All),
        ],
        // A kill while a pusher's frame is half written.
        &[TaskTake, Push(Accept::Part), Kill, Shut { reads: true }],
        // A kill while the task's frame is half written.
        &[
            Push(Accept::All),
            TaskTake,
            TaskWrite(Accept::Part),
            Kill,
            Shut { reads: true },
        ],
        // A kill while the rest of a pusher's frame, taken by the task,
        // waits to be written.
        &[
            TaskTake,
            Push(Accept::Part),
            TaskTake,
            Kill,
            Shut { reads: true },
        ],
    ];
    for case in cases {
        let mut model = Model::new();
        for (i, &action) in case.iter().enumerate() {
            assert!(model.allowed(action), "{case:?}");
            model.step(action);
            model.check(&case[..=i]);
        }
    }
}
