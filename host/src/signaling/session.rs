//! One WebSocket, one session: a reader that handles the client's frames one
//! at a time, in order, and a writer that drains the session's bounded queue.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dispatch::{self, Sender};
use super::rooms::{Outbound, SessionHandle};
use super::{Hub, frame};

/// Close codes the host itself uses.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Frames written to the socket before one flush.
const WRITE_BATCH: usize = 64;

pub async fn run(socket: WebSocket, hub: Arc<Hub>, peer: SocketAddr, host: String) {
    let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let (tx, rx) = mpsc::channel(hub.limits.send_queue);
    let handle = SessionHandle {
        tx,
        kill: CancellationToken::new(),
    };
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write_loop(sink, rx, handle.kill.clone()));

    hub.registry.register(id.clone(), handle.clone(), peer);
    tracing::debug!(session = %id, %peer, "session opened");
    let sender = Sender {
        id: &id,
        handle: &handle,
        host: &host,
    };

    let admitted = hub
        .chain
        .load_full()
        .on_connect(&id, &peer.to_string())
        .await;
    if let Err(reason) = admitted {
        tracing::info!(session = %id, %peer, "connection refused by policy: {reason}");
        handle.deliver(Outbound::Close(
            CLOSE_POLICY,
            Utf8Bytes::from(reason.chars().take(100).collect::<String>()),
        ));
    } else {
        loop {
            let next = tokio::select! {
                biased;
                _ = handle.kill.cancelled() => break,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(Message::Text(text))) => dispatch::handle_text(&hub, &sender, &text).await,
                Some(Ok(Message::Binary(_))) => {
                    handle.deliver(Outbound::Frame(Utf8Bytes::from(frame::error(
                        "badRequest",
                        "Binary frames are not accepted; send JSON text.",
                    ))))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
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
                    break;
                }
            }
        }
    }

    dispatch::handle_disconnect(&hub, &sender).await;
    tracing::debug!(session = %id, "session closed");
    // The writer flushes what is queued, then closes.
    handle.deliver(Outbound::Close(CLOSE_NORMAL, Utf8Bytes::default()));
    drop(handle);
    let _ = writer.await;
}

fn is_too_big(e: axum::Error) -> bool {
    let inner = e.into_inner();
    matches!(
        inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>(),
        Some(tokio_tungstenite::tungstenite::Error::Capacity(_))
    )
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    kill: CancellationToken,
) {
    let close = |code: u16, reason: Utf8Bytes| Message::Close(Some(CloseFrame { code, reason }));
    'outer: loop {
        let first = tokio::select! {
            biased;
            _ = kill.cancelled() => {
                let _ = sink
                    .send(close(CLOSE_POLICY, Utf8Bytes::from_static("too slow: send queue full")))
                    .await;
                break;
            }
            first = rx.recv() => first,
        };
        let mut next = first;
        let mut batched = 0;
        loop {
            match next {
                Some(Outbound::Frame(text)) => {
                    if sink.feed(Message::Text(text)).await.is_err() {
                        break 'outer;
                    }
                }
                Some(Outbound::Close(code, reason)) => {
                    let _ = sink.send(close(code, reason)).await;
                    break 'outer;
                }
                None => {
                    let _ = sink.close().await;
                    break 'outer;
                }
            }
            batched += 1;
            if batched == WRITE_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(o) => next = Some(o),
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    // Tell the reader, if it is still reading, that this socket is done.
    kill.cancel();
}
