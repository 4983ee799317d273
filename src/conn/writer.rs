//! The writer task: the only code that writes to a connection's socket.
//! It takes everything ready in the outbound queue, writes it (as one
//! `batch` frame when the client opted in), and flushes once.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use super::handle::{ConnHandle, Outbound};
use crate::fanout;
use crate::metrics;
use crate::node::Node;
use crate::protocol::CloseCode;

/// How long the close frame may take to reach a peer's socket.
const CLOSE_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Buffer capacity (items) a connection keeps between bursts.
const IDLE_CAPACITY: usize = 16;

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

pub async fn run<S>(mut sink: Sink<S>, handle: Arc<ConnHandle>, node: Arc<Node>, batch: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut items: VecDeque<Outbound> = VecDeque::new();
    let mut frames: Vec<Message> = Vec::new();
    // `welcome` is the first item ever queued and is never part of a batch.
    let mut welcomed = false;
    let close = loop {
        if handle.is_killed() {
            break handle.close_code();
        }
        handle.outbox.take_all(&mut items);
        if items.is_empty() {
            // A kill also wakes this wait.
            handle.outbox.ready().await;
            continue;
        }
        let mut acks = Vec::new();
        let mut close = None;
        for item in items.drain(..) {
            match item {
                Outbound::Frame(m) => frames.push(m),
                Outbound::Queued { frames: q, upto } => {
                    frames.extend(q);
                    acks.push(upto);
                }
                Outbound::Ping => frames.push(Message::Ping(Bytes::new())),
                Outbound::Close(code) => {
                    close = Some(code.code());
                    break;
                }
            }
        }
        // A peer that stops reading blocks the write once the socket buffer
        // is full; a kill (slow consumer, shutdown) must still end the task.
        // The write goes first: when it completes at once, the kill future
        // is never polled and costs nothing.
        let written = tokio::select! {
            biased;
            // Boxed for the same reason as requests in the reader: idle
            // connections should not carry the write's state.
            r = Box::pin(write(&mut sink, &mut frames, batch, welcomed, handle.codec)) => r,
            _ = handle.killed() => break handle.close_code(),
        };
        welcomed = true;
        if written.is_err() {
            break None;
        }
        // A burst may have grown the buffers; idle connections keep none.
        if frames.capacity() > IDLE_CAPACITY {
            frames = Vec::new();
        }
        if items.capacity() > IDLE_CAPACITY {
            items = VecDeque::new();
        }
        for upto in acks {
            node.bus.offline_written(&handle.user, upto).await;
        }
        if close.is_some() {
            break close;
        }
    };
    handle.outbox.shut();
    if let Some(code) = close {
        metrics::closed_with(code);
        let frame = CloseFrame {
            code: WsCloseCode::from(code),
            reason: close_reason(code).into(),
        };
        // Bounded: the socket may be full because the peer stopped reading.
        let _ =
            tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.close()).await;
    // Stops the reader too when the writer ended first (write error, close).
    handle.close(CloseCode::GoingAway);
}

/// Writes the frames and flushes once. With `batch`, the data frames
/// become one `batch` frame (except `welcome`, the very first frame).
async fn write<S>(
    sink: &mut Sink<S>,
    frames: &mut Vec<Message>,
    batch: bool,
    welcomed: bool,
    codec: crate::protocol::Codec,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !welcomed && batch && !frames.is_empty() {
        sink.feed(frames.remove(0)).await?;
    }
    let data = frames
        .iter()
        .filter(|m| matches!(m, Message::Text(_) | Message::Binary(_)))
        .count();
    if batch && data > 1 {
        let parts = frames.iter().filter_map(|m| match m {
            Message::Text(t) => Some(t.as_bytes()),
            Message::Binary(b) => Some(&b[..]),
            _ => None,
        });
        let joined = codec.batch(ExactLen(parts, data));
        if let Some(m) = fanout::to_message(codec, joined) {
            sink.feed(m).await?;
        }
        for m in frames.drain(..) {
            if matches!(m, Message::Ping(_)) {
                sink.feed(m).await?;
            }
        }
    } else {
        for m in frames.drain(..) {
            sink.feed(m).await?;
        }
    }
    sink.flush().await
}

/// An iterator with a known length, for `Codec::batch`.
struct ExactLen<I>(I, usize);

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let item = self.0.next();
        if item.is_some() {
            self.1 -= 1;
        }
        item
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}

fn close_reason(code: u16) -> &'static str {
    [
        CloseCode::GoingAway,
        CloseCode::PolicyViolation,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::SlowConsumer,
        CloseCode::KeepaliveTimeout,
        CloseCode::Kicked,
    ]
    .into_iter()
    .find(|c| c.code() == code)
    .map_or("", CloseCode::reason)
}
