//! Owns TURN over byte streams (TCP and TLS, RFC 5766 §2.1 / RFC 6062
//! framing): cutting a stream into whole STUN messages and ChannelData
//! frames, the multiplexing `Conn` that presents all TCP/TLS connections of
//! one listener to the `turn` crate as if they were datagrams, and
//! [`StreamClientConn`], the same adapter for a client (the `turn` crate's
//! client over TCP/TLS, used by the tests).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc_util::Conn;

use crate::relay::lock;

/// Frames queued for one connection before further ones are dropped.
const WRITE_QUEUE: usize = 256;
/// Frames from all connections waiting for the TURN handler.
const READ_QUEUE: usize = 1024;
/// Time allowed for a TLS handshake and for the first frame.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a stream could not be framed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The bytes are neither STUN nor ChannelData: the stream is unusable.
    #[error("not a STUN message or ChannelData frame")]
    Garbage,
    /// The stream failed or ended.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Length of the whole frame that starts with these 4 bytes: a STUN
/// message (20-byte header + attributes) or a ChannelData message (4-byte
/// header + data padded to a multiple of 4, as RFC 5766 §11.5 requires on
/// streams).
pub fn frame_len(head: [u8; 4]) -> Result<usize, FrameError> {
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] >> 6 {
        0b00 => {
            if len % 4 != 0 {
                return Err(FrameError::Garbage);
            }
            Ok(20 + len)
        }
        0b01 => Ok(4 + len.div_ceil(4) * 4),
        _ => Err(FrameError::Garbage),
    }
}

/// Reads one whole frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let total = frame_len(head)?;
    let mut frame = vec![0u8; total];
    frame[..4].copy_from_slice(&head);
    if head[0] >> 6 == 0 {
        // Check the magic cookie before waiting for the rest.
        r.read_exact(&mut frame[4..8]).await?;
        if frame[4..8] != [0x21, 0x12, 0xa4, 0x42] {
            return Err(FrameError::Garbage);
        }
        r.read_exact(&mut frame[8..]).await?;
    } else {
        r.read_exact(&mut frame[4..]).await?;
    }
    Ok(Some(frame))
}

/// Pads a ChannelData frame to a multiple of 4 bytes (streams need it).
fn padded(buf: &[u8]) -> Vec<u8> {
    let mut v = buf.to_vec();
    if buf.first().is_some_and(|b| b >> 6 == 0b01) {
        v.resize(buf.len().div_ceil(4) * 4, 0);
    }
    v
}

type Inbound = (Vec<u8>, SocketAddr);

/// All TCP (or TLS) connections of one listener as one packet `Conn`.
pub(crate) struct StreamMux {
    local: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::Receiver<Inbound>>,
    writers: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    shutdown: CancellationToken,
}

/// Called when a client's connection ends.
pub(crate) type OnClose = Arc<dyn Fn(SocketAddr) + Send + Sync>;
/// Whether a client's connection holds an allocation.
pub(crate) type HasAllocation = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// How often a connection must hold an allocation, from when it opened: one
/// that holds none when checked is closed. A connection slot (of
/// `max_connections`, and of its address's share) is for relaying, not for
/// sitting on. Plenty for a client to allocate (a challenge, then a signed
/// Allocate); a STUN-only client (Binding requests) reconnects when it
/// needs to.
pub(crate) const ALLOCATE_WITHIN: Duration = Duration::from_secs(30);

/// What the accept loop needs.
pub(crate) struct StreamListenerConfig {
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) max_connections: usize,
    /// Most simultaneous connections from one client IP address.
    pub(crate) max_connections_per_ip: usize,
    /// A connection silent for this long is closed (no allocation can be
    /// alive on it without a Refresh in that time).
    pub(crate) idle_timeout: Duration,
    /// See [`ALLOCATE_WITHIN`].
    pub(crate) allocate_within: Duration,
    pub(crate) has_allocation: HasAllocation,
    pub(crate) on_close: OnClose,
    pub(crate) shutdown: CancellationToken,
}

impl StreamMux {
    /// Starts accepting on `listener`; returns the `Conn` and the accept task.
    pub(crate) fn start(
        listener: TcpListener,
        cfg: StreamListenerConfig,
    ) -> std::io::Result<(Arc<Self>, tokio::task::JoinHandle<()>)> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(READ_QUEUE);
        let mux = Arc::new(Self {
            local,
            rx: tokio::sync::Mutex::new(rx),
            writers: Mutex::new(HashMap::new()),
            shutdown: cfg.shutdown.clone(),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&mux), tx, Arc::new(cfg)));
        Ok((mux, task))
    }
}

async fn accept_loop(
    listener: TcpListener,
    mux: Arc<StreamMux>,
    tx: mpsc::Sender<Inbound>,
    cfg: Arc<StreamListenerConfig>,
) {
    let live = Arc::new(AtomicUsize::new(0));
    let per_ip: Arc<Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
    let kind = if cfg.tls.is_some() { "TLS" } else { "TCP" };
    loop {
        let (stream, peer) = tokio::select! {
            _ = cfg.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "TURN {kind} accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        static LOG: crate::stats::LogBudget = crate::stats::LogBudget::new();
        if live.load(Ordering::Acquire) >= cfg.max_connections {
            if let Some(suppressed) = LOG.take() {
                tracing::warn!(%peer, limit = cfg.max_connections, suppressed,
                    "TURN {kind} connection refused: too many connections");
            }
            continue;
        }
        let ip = crate::peer::client_network(peer.ip());
        {
            let mut m = lock(&per_ip);
            let n = m.entry(ip).or_insert(0);
            if *n >= cfg.max_connections_per_ip {
                if let Some(suppressed) = LOG.take() {
                    tracing::warn!(%peer, limit = cfg.max_connections_per_ip, suppressed,
                        "TURN {kind} connection refused: too many connections from this address");
                }
                continue;
            }
            *n += 1;
        }
        let _ = stream.set_nodelay(true);
        live.fetch_add(1, Ordering::AcqRel);
        let (mux, tx, cfg, live, per_ip) = (
            Arc::clone(&mux),
            tx.clone(),
            Arc::clone(&cfg),
            Arc::clone(&live),
            Arc::clone(&per_ip),
        );
        tokio::spawn(async move {
            match cfg.tls.clone() {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(tls, peer, &mux, tx, &cfg).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TURN TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TURN TLS handshake timed out"),
                    }
                }
                None => serve_connection(stream, peer, &mux, tx, &cfg).await,
            }
            live.fetch_sub(1, Ordering::AcqRel);
            let mut m = lock(&per_ip);
            if let Some(n) = m.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    mux: &StreamMux,
    tx: mpsc::Sender<Inbound>,
    cfg: &StreamListenerConfig,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    lock(&mux.writers).insert(peer, wtx);
    let done = CancellationToken::new();
    let writer = {
        let done = done.clone();
        tokio::spawn(async move {
            while let Some(frame) = wrx.recv().await {
                if let Err(e) = wr.write_all(&frame).await {
                    tracing::debug!(%peer, error = %e, "TURN stream write failed");
                    break;
                }
            }
            let _ = wr.shutdown().await;
            done.cancel();
        })
    };
    let mut timeout = HANDSHAKE_TIMEOUT;
    // Every `allocate_within`, a connection must hold an allocation (one
    // deleted with Refresh 0 does not keep the slot either). A task of its
    // own: the read below is not cancel-safe (a frame cut in half would
    // lose the stream's framing); when the check fails the whole
    // connection closes, so no half frame is ever read on.
    let watch = {
        let (done, has, every) = (
            done.clone(),
            cfg.has_allocation.clone(),
            cfg.allocate_within,
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if !has(peer) {
                    tracing::debug!(%peer, "TURN stream holds no allocation: closing");
                    done.cancel();
                    return;
                }
            }
        })
    };
    loop {
        let frame = tokio::select! {
            _ = mux.shutdown.cancelled() => break,
            _ = done.cancelled() => break,
            r = tokio::time::timeout(timeout, read_frame(&mut rd)) => match r {
                Err(_) => {
                    tracing::debug!(%peer, "TURN stream idle: closing");
                    break;
                }
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TURN stream closed");
                    break;
                }
            },
        };
        timeout = cfg.idle_timeout;
        if tx.send((frame, peer)).await.is_err() {
            break;
        }
    }
    lock(&mux.writers).remove(&peer);
    writer.abort();
    watch.abort();
    (cfg.on_close)(peer);
}

#[async_trait]
impl Conn for StreamMux {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("not supported".into()))
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("use recv_from".into()))
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut rx = self.rx.lock().await;
        let got = tokio::select! {
            _ = self.shutdown.cancelled() => None,
            v = rx.recv() => v,
        };
        match got {
            Some((frame, peer)) => {
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                Ok((n, peer))
            }
            None => Err(webrtc_util::Error::ErrAlreadyClosed),
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("use send_to".into()))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let writer = lock(&self.writers).get(&target).cloned();
        let Some(writer) = writer else {
            return Err(webrtc_util::Error::Other(format!(
                "no TCP connection from {target}"
            )));
        };
        match writer.try_send(padded(buf)) {
            Ok(()) => Ok(buf.len()),
            // A slow reader loses frames, like a congested UDP path would.
            Err(mpsc::error::TrySendError::Full(_)) => Ok(buf.len()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(webrtc_util::Error::Other(format!(
                "TCP connection from {target} closed"
            ))),
        }
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A client-side `Conn` over one TCP or TLS stream to a TURN server, for
/// the `turn` crate's `Client` (which only speaks datagrams): `send_to`
/// writes a frame whatever the target, `recv_from` returns whole frames as
/// coming from the server.
pub struct StreamClientConn {
    server: SocketAddr,
    local: SocketAddr,
    reader: tokio::sync::Mutex<tokio::io::ReadHalf<Box<dyn StreamIo>>>,
    writer: tokio::sync::Mutex<tokio::io::WriteHalf<Box<dyn StreamIo>>>,
}

/// A byte stream usable by [`StreamClientConn`].
pub trait StreamIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> StreamIo for T {}

impl StreamClientConn {
    /// Wraps a connected stream; `server` and `local` are its two ends.
    pub fn new(stream: Box<dyn StreamIo>, local: SocketAddr, server: SocketAddr) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self {
            server,
            local,
            reader: tokio::sync::Mutex::new(r),
            writer: tokio::sync::Mutex::new(w),
        }
    }

    /// Connects over plain TCP.
    pub async fn connect_tcp(server: SocketAddr) -> std::io::Result<Self> {
        let s = tokio::net::TcpStream::connect(server).await?;
        s.set_nodelay(true)?;
        let local = s.local_addr()?;
        Ok(Self::new(Box::new(s), local, server))
    }
}

#[async_trait]
impl Conn for StreamClientConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut r = self.reader.lock().await;
        match read_frame(&mut *r).await {
            Ok(Some(frame)) => {
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                Ok((n, self.server))
            }
            Ok(None) => Err(webrtc_util::Error::ErrAlreadyClosed),
            Err(FrameError::Io(e)) => Err(e.into()),
            Err(e) => Err(webrtc_util::Error::Other(e.to_string())),
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        let mut w = self.writer.lock().await;
        w.write_all(&padded(buf)).await?;
        Ok(buf.len())
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        let mut w = self.writer.lock().await;
        let _ = w.shutdown().await;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_stun_and_padded_channel_data() {
        let mut stun = vec![0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]); // transaction id
        stun.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]); // one empty attribute
        let chan = vec![0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        let mut bytes = stun.clone();
        bytes.extend_from_slice(&chan);
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).await.expect("ok"), Some(stun));
        assert_eq!(read_frame(&mut r).await.expect("ok"), Some(chan));
        assert!(read_frame(&mut r).await.expect("eof").is_none());
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        let mut r: &[u8] = &[0xff, 0, 0, 0, 1, 2];
        assert!(matches!(read_frame(&mut r).await, Err(FrameError::Garbage)));
        // a TLS ClientHello sent to the plain TCP port
        let mut r: &[u8] = &[
            0x16, 3, 1, 0, 0xc8, 1, 0, 0, 0xc4, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(matches!(read_frame(&mut r).await, Err(FrameError::Garbage)));
        // STUN-looking header without the magic cookie
        let mut r: &[u8] = &[0, 1, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(read_frame(&mut r).await, Err(FrameError::Garbage)));
        // odd STUN length
        assert!(matches!(frame_len([0, 1, 0, 3]), Err(FrameError::Garbage)));
        assert_eq!(frame_len([0x40, 0, 0, 0]).expect("len"), 4);
        assert_eq!(frame_len([0x7f, 0xff, 0xff, 0xff]).expect("len"), 4 + 65536);
    }

    #[test]
    fn padding_only_for_channel_data() {
        assert_eq!(padded(&[0x40, 0, 0, 1, 9]), vec![0x40, 0, 0, 1, 9, 0, 0, 0]);
        assert_eq!(padded(&[0, 1, 0, 0]), vec![0, 1, 0, 0]);
    }
}
