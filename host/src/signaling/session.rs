//! One WebSocket, one session: a reader that handles the client's frames one
//! at a time, in order, and a writer that drains the session's bounded queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::dispatch::{self, Sender};
use super::queue::OutboundQueue;
use super::rate::{Flooding, TokenBucket};
use super::rooms::{Outbound, SessionHandle};

/// Close codes the host itself uses.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// The close reason of shutdown.
pub const SHUTTING_DOWN: &str = "server shutting down";
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Frames written to the socket before one flush.
const WRITE_BATCH: usize = 64;
/// Frames refused by the rate limit are answered (`error rateLimited`) at
/// most once in this long; the others are dropped without a word.
const REFUSAL_TOLD_EVERY: Duration = Duration::from_secs(1);
/// A socket that accepts nothing this long while frames wait for it is
/// closed: its receiver stopped reading (a ping answerer can look alive).
pub const WRITE_STALL: Duration = Duration::from_secs(15);

pub async fn run(socket: WebSocket, hub: Arc<Hub>, peer: SocketAddr, host: String) {
    let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let (handle, queue) = SessionHandle::new(&hub.limits.send);
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write_loop(sink, queue, handle.kill.clone(), id.clone()));

    hub.registry.register(id.clone(), handle.clone(), peer);
    hub.metrics
        .sessions_opened
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(session = %id, %peer, "session opened");
    let sender = Sender {
        id: &id,
        handle: &handle,
        host: &host,
    };

    // Shutdown tells the sessions it finds; one registered after that (its
    // upgrade was under way) sees the flag, which is set before the search.
    if hub.draining.load(std::sync::atomic::Ordering::SeqCst) {
        handle.deliver(Outbound::Close(
            CLOSE_GOING_AWAY,
            Utf8Bytes::from_static(SHUTTING_DOWN),
        ));
    } else {
        match hub
            .chain
            .load_full()
            .on_connect(&id, &peer.to_string())
            .await
        {
            Err(reason) => {
                tracing::info!(session = %id, %peer, "connection refused by policy: {reason}");
                handle.deliver(Outbound::Close(CLOSE_POLICY, close_reason(&reason)));
            }
            Ok(actions) => {
                dispatch::handle_connect_actions(&hub, &sender, actions);
                read_loop(&hub, &sender, &mut stream).await;
            }
        }
    }

    dispatch::handle_disconnect(&hub, &sender).await;
    tracing::debug!(session = %id, "session closed");
    // The writer flushes what is queued, then closes.
    handle.deliver(Outbound::Close(CLOSE_NORMAL, Utf8Bytes::default()));
    drop(handle);
    // Bounded: a peer that stopped reading must not keep this task (and its
    // socket) alive.
    let mut writer = writer;
    if tokio::time::timeout(WRITER_DRAIN, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    // Briefly read (and drop) what the client still sends, until it answers
    // the close frame: closing a socket with unread data resets the
    // connection, which can destroy the close frame before the client reads it.
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// Longest close reason: a close frame's payload is at most 125 bytes, two
/// of them the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// `reason`, cut at a character boundary to fit a close frame.
pub fn close_reason(reason: &str) -> Utf8Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Utf8Bytes::from(&reason[..end])
}

/// How long a closing session waits for the client's side of the close.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// How long a closing session's queued frames may take to reach the client.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// Pings go out this often; a socket silent for `IDLE_LIMIT` (no frame, no
/// pong) is dead and is reaped, which frees its room slot within 30 s.
const PING_EVERY: Duration = Duration::from_secs(10);
const IDLE_LIMIT: Duration = Duration::from_secs(25);

/// Reads the client's frames one at a time, in order, until the socket
/// ends, dies, floods or is killed.
async fn read_loop(hub: &Hub, sender: &Sender<'_>, stream: &mut SplitStream<WebSocket>) {
    let handle = sender.handle;
    let mut bucket = TokenBucket::new(
        hub.limits.rate_per_sec,
        hub.limits.rate_burst,
        hub.limits.rate_burst,
    );
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    let mut last_refusal_told: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            biased;
            _ = handle.kill.cancelled() => return,
            next = stream.next() => next,
            _ = ping.tick() => {
                if last_heard.elapsed() >= IDLE_LIMIT {
                    tracing::debug!(session = %sender.id, "no sign of life for {IDLE_LIMIT:?}: reaped");
                    return;
                }
                handle.deliver(Outbound::Ping);
                continue;
            }
        };
        last_heard = Instant::now();
        let text = match next {
            Some(Ok(Message::Text(text))) => Some(text),
            // Refused, but it takes a token like any frame: a stream of
            // binary frames is a flood too.
            Some(Ok(Message::Binary(_))) => None,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return,
            Some(Err(e)) => {
                if is_too_big(e) {
                    handle.deliver(Outbound::Close(
                        CLOSE_TOO_BIG,
                        Utf8Bytes::from(format!(
                            "frame larger than {} bytes",
                            hub.limits.max_frame_bytes
                        )),
                    ));
                }
                return;
            }
        };
        match bucket.take() {
            Ok(()) => match text {
                Some(text) => dispatch::handle_text(hub, sender, &text).await,
                None => dispatch::reject(
                    hub,
                    sender,
                    "Binary frames are not accepted; send JSON text.",
                ),
            },
            // One answer a second: a flood must not be answered frame for
            // frame (each answer costs the host a send and its TLS).
            Err(Flooding::Warn) => {
                if last_refusal_told.is_none_or(|t| t.elapsed() >= REFUSAL_TOLD_EVERY) {
                    last_refusal_told = Some(Instant::now());
                    dispatch::rate_limited(hub, sender);
                } else {
                    hub.metrics.frame_in("other"); // counted, not answered
                }
            }
            Err(Flooding::Persisting) => {
                tracing::info!(session = %sender.id, "closed: kept sending past its rate limit");
                handle.deliver(Outbound::Close(
                    CLOSE_POLICY,
                    Utf8Bytes::from_static("rate limit exceeded"),
                ));
                return;
            }
        }
    }
}

fn is_too_big(e: axum::Error) -> bool {
    let inner = e.into_inner();
    matches!(
        inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>(),
        Some(tokio_tungstenite::tungstenite::Error::Capacity(_))
    )
}

/// One write to the socket, bounded by `WRITE_STALL` and given up when the
/// session is killed (its queue is then dropped at once, not after the
/// stall); false ends the writer.
async fn written<E>(
    session: &str,
    kill: &CancellationToken,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    let write = tokio::select! {
        biased;
        _ = kill.cancelled() => return false,
        w = tokio::time::timeout(WRITE_STALL, write) => w,
    };
    match write {
        Ok(r) => r.is_ok(),
        Err(_) => {
            tracing::info!(session = %session, "closed: its socket accepted nothing for {WRITE_STALL:?} while frames waited");
            false
        }
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: OutboundQueue,
    kill: CancellationToken,
    session: Arc<str>,
) {
    let close = |code: u16, reason: Utf8Bytes| Message::Close(Some(CloseFrame { code, reason }));
    'outer: loop {
        let first = tokio::select! {
            biased;
            _ = kill.cancelled() => {
                // The peer is not reading: the close frame may never fit.
                let bye = close(CLOSE_POLICY, Utf8Bytes::from_static("too slow: send queue full"));
                let _ = tokio::time::timeout(CLOSE_LINGER, sink.send(bye)).await;
                break;
            }
            first = rx.recv() => first,
        };
        let mut next = first;
        let mut batched = 0;
        let mut yielded = false;
        loop {
            match next {
                Some(Outbound::Frame(text)) => {
                    if !written(&session, &kill, sink.feed(Message::Text(text))).await {
                        break 'outer;
                    }
                }
                Some(Outbound::Ping) => {
                    if !written(
                        &session,
                        &kill,
                        sink.feed(Message::Ping(Default::default())),
                    )
                    .await
                    {
                        break 'outer;
                    }
                }
                Some(Outbound::Close(code, reason)) => {
                    let _ =
                        tokio::time::timeout(CLOSE_LINGER, sink.send(close(code, reason))).await;
                    break 'outer;
                }
                None => {
                    let _ = tokio::time::timeout(CLOSE_LINGER, sink.close()).await;
                    break 'outer;
                }
            }
            batched += 1;
            if batched == WRITE_BATCH {
                break;
            }
            let mut more = rx.try_recv();
            if more.is_none() && !yielded {
                // Let the other ready sockets be read first: frames they
                // carry for this session then share this flush (one write,
                // one TLS flight) instead of each costing a syscall of its
                // own. A yield, not a timer: nothing waits when nothing
                // else is ready.
                yielded = true;
                tokio::task::yield_now().await;
                more = rx.try_recv();
            }
            match more {
                Some(o) => next = Some(o),
                None => break,
            }
        }
        if !written(&session, &kill, sink.flush()).await {
            break;
        }
    }
    // Tell the reader, if it is still reading, that this socket is done.
    kill.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        // 100 characters of 3 bytes each: 300 bytes, which no close frame holds.
        let long = "가".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON, "{} bytes", cut.len());
        assert_eq!(cut.as_str(), "가".repeat(41));
        assert_eq!(close_reason("short").as_str(), "short");
        let emoji = "😀".repeat(40);
        assert_eq!(close_reason(&emoji).len(), 120);
    }
}
