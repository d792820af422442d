//! Latency probe for scripts/turn-bench.sh:
//! `turn-bench-probe SERVER SECRET USER COUNT INTERVAL_MS`.
//!
//! Allocates on the TURN server at SERVER (UDP) with a TURN REST credential
//! (`<expiry>:USER`, password from SECRET, realm "bench": the same scheme
//! for chat-turn and coturn's use-auth-secret), relays COUNT small packets
//! to an echo socket on 127.0.0.1 and back, one every INTERVAL_MS, and the
//! same COUNT directly to the echo socket (no relay). Prints one line:
//! `probe relay_p50_us=.. relay_p99_us=.. direct_p50_us=.. direct_p99_us=..
//! added_p99_us=.. lost=..`. Not a test: it measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

type Replies = Arc<std::sync::Mutex<Vec<(usize, Instant)>>>;

/// Reads probe replies (stamped with their index) from `conn` into `got`.
fn read_replies(conn: Arc<dyn Conn + Send + Sync>, got: Replies) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, _)) = conn.recv_from(&mut buf).await {
            if n >= 8 {
                let i = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                let now = Instant::now();
                got.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((i as usize, now));
            }
        }
    })
}

/// Sorted round-trip times (µs) of the replies, and how many were lost.
fn rtts(replies: &Replies, sent_at: &[Instant]) -> (Vec<u64>, usize) {
    let got = replies.lock().unwrap_or_else(|e| e.into_inner());
    let mut rtts: Vec<u64> = got
        .iter()
        .filter(|(i, _)| *i < sent_at.len())
        .map(|(i, t)| t.duration_since(sent_at[*i]).as_micros() as u64)
        .collect();
    rtts.sort_unstable();
    let lost = sent_at.len().saturating_sub(rtts.len());
    (rtts, lost)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 5 {
        return Err("usage: turn-bench-probe SERVER SECRET USER COUNT INTERVAL_MS".into());
    }
    let server: SocketAddr = args[0].parse()?;
    let secret = args[1].as_bytes();
    let count: usize = args[3].parse()?;
    let interval = Duration::from_millis(args[4].parse()?);
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let username = format!("{expiry}:{}", args[2]);
    let password = chat_turn::creds::rest_password(secret, &username);

    // The echo peer: sends every datagram back to where it came from.
    let echo = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let echo_addr = echo.local_addr()?;
    tokio::spawn({
        let echo = Arc::clone(&echo);
        async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        }
    });

    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username,
        password,
        realm: "bench".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(sock),
        vnet: None,
    })
    .await?;
    client.listen().await?;
    let relay = Arc::new(tokio::time::timeout(Duration::from_secs(10), client.allocate()).await??);
    // Permission and channel first (the first packets go as Send
    // indications while the client binds its channel).
    for _ in 0..5 {
        relay.send_to(b"warm-up", echo_addr).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = [0u8; 1500];
    while tokio::time::timeout(Duration::from_millis(200), relay.recv_from(&mut buf))
        .await
        .is_ok()
    {}

    // Each tick sends one probe through the relay and one directly, so
    // both see the same load.
    let direct = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let (via_relay, via_direct): (Replies, Replies) = (Arc::default(), Arc::default());
    let readers = [
        read_replies(relay.clone(), Arc::clone(&via_relay)),
        read_replies(direct.clone(), Arc::clone(&via_direct)),
    ];
    let (mut relay_sent, mut direct_sent) = (Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(interval);
    for i in 0..count {
        tick.tick().await;
        let mut pkt = (i as u64).to_be_bytes().to_vec();
        pkt.resize(100, 0);
        relay_sent.push(Instant::now());
        let _ = relay.send_to(&pkt, echo_addr).await;
        direct_sent.push(Instant::now());
        let _ = direct.send_to(&pkt, echo_addr).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in readers {
        r.abort();
    }
    let (relayed, lost) = rtts(&via_relay, &relay_sent);
    let (direct_rtts, _) = rtts(&via_direct, &direct_sent);

    let (r50, r99) = (percentile(&relayed, 0.5), percentile(&relayed, 0.99));
    let (d50, d99) = (
        percentile(&direct_rtts, 0.5),
        percentile(&direct_rtts, 0.99),
    );
    println!(
        "probe relay_p50_us={r50} relay_p99_us={r99} direct_p50_us={d50} direct_p99_us={d99} added_p99_us={} lost={lost}",
        r99.saturating_sub(d99)
    );
    client.close().await?;
    Ok(())
}
