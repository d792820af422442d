//! Connect, join, load, drain, and report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::payload::{self, Incoming, Joined, Kind, Seq};
use crate::proc;
use crate::report::*;
use crate::stats::{self, PairRecv, Tally};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

/// Shared by every task of a run.
struct Shared {
    cfg: Config,
    /// Resolved address of each of `cfg.urls`, same order.
    addrs: Vec<SocketAddr>,
    connector: Connector,
    epoch: Instant,
    /// Session ids by (room, slot), set once every client has joined.
    table: OnceLock<Table>,
    /// Per client (global index): deliveries it may still have in flight.
    permits: Vec<Arc<Semaphore>>,
    expected: AtomicU64,
    delivered: AtomicU64,
    frames_received: AtomicU64,
    cancel: CancellationToken,
    /// Load window in µs since `epoch`: [window_start, window_end).
    window: OnceLock<(u64, u64)>,
}

struct Table {
    ids: Vec<Vec<Option<String>>>,
    by_id: HashMap<String, (usize, usize)>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// Why a session did not get into its room.
#[derive(Debug)]
enum Fail {
    Tcp,
    Handshake,
    Refused(String),
    Closed,
    Timeout,
}

impl Fail {
    fn key(&self) -> String {
        match self {
            Fail::Tcp => "tcp".into(),
            Fail::Handshake => "tls_ws_handshake".into(),
            Fail::Refused(t) => format!("refused_{t}"),
            Fail::Closed => "closed_before_joined".into(),
            Fail::Timeout => "timeout".into(),
        }
    }
}

struct Joiner {
    sink: Sink,
    stream: Stream,
    own_id: String,
    learned: HashSet<String>,
    join_us: u64,
}

async fn connect_one(sh: &Shared, room: &str, slot: usize, user: &str) -> Result<Joiner, Fail> {
    let t0 = Instant::now();
    let target = sh.cfg.url_index(slot);
    let fut = async {
        let tcp = TcpStream::connect(sh.addrs[target])
            .await
            .map_err(|_| Fail::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
            sh.cfg.urls[target].as_str(),
            tcp,
            // Small buffers: 10k idle sessions should not cost the tool 128 KiB each.
            Some(
                WebSocketConfig::default()
                    .read_buffer_size(16 * 1024)
                    .write_buffer_size(0),
            ),
            Some(sh.connector.clone()),
        )
        .await
        .map_err(|_| Fail::Handshake)?;
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::text(payload::login_frame(room, user)))
            .await
            .map_err(|_| Fail::Closed)?;
        let mut learned = HashSet::new();
        loop {
            let text = match stream.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Fail::Closed),
                Some(Ok(_)) => continue,
            };
            let Ok(inc) = serde_json::from_str::<Incoming>(text.as_str()) else {
                continue;
            };
            match inc.kind.as_ref() {
                "joined" => {
                    let Ok(j) = serde_json::from_str::<Joined>(text.as_str()) else {
                        return Err(Fail::Refused("joined_without_id".into()));
                    };
                    for m in j.members.unwrap_or_default() {
                        if !m.session_id.is_empty() && m.session_id != j.data {
                            learned.insert(m.session_id);
                        }
                    }
                    return Ok(Joiner {
                        sink,
                        stream,
                        own_id: j.data,
                        learned,
                        join_us: t0.elapsed().as_micros() as u64,
                    });
                }
                "login" => {
                    if let Some(f) = inc.from {
                        learned.insert(f.into_owned());
                    }
                }
                "error" => {
                    let t = inc.message.map(|m| m.error_type).unwrap_or_default();
                    return Err(Fail::Refused(if t.is_empty() { "error".into() } else { t }));
                }
                _ => {}
            }
        }
    };
    match tokio::time::timeout(sh.cfg.connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Fail::Timeout),
    }
}

/// What one client's reader saw.
struct ReaderOut {
    /// By sender's room slot.
    recv: Vec<PairRecv>,
    hist: Histogram<u64>,
    in_window: u64,
    learned: HashSet<String>,
    errors: BTreeMap<String, u64>,
    foreign: u64,
    misattributed: u64,
    logouts: u64,
    closed_early: bool,
}

async fn reader(
    sh: Arc<Shared>,
    room: usize,
    slot: usize,
    mut stream: Stream,
    learned: HashSet<String>,
) -> ReaderOut {
    let m = sh.cfg.clients;
    let mut out = ReaderOut {
        recv: vec![PairRecv::default(); m],
        hist: stats::new_histogram(),
        in_window: 0,
        learned,
        errors: BTreeMap::new(),
        foreign: 0,
        misattributed: 0,
        logouts: 0,
        closed_early: false,
    };
    loop {
        let msg = tokio::select! {
            biased;
            _ = sh.cancel.cancelled() => break,
            m = stream.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                out.closed_early = !sh.cancel.is_cancelled();
                break;
            }
            Some(Ok(_)) => continue,
        };
        sh.frames_received.fetch_add(1, Relaxed);
        let Ok(inc) = serde_json::from_str::<Incoming>(text.as_str()) else {
            *out.errors.entry("unparsable_frame".into()).or_default() += 1;
            continue;
        };
        match inc.kind.as_ref() {
            "offer" | "answer" | "candidate" => {
                let now = sh.now_us();
                let (Some(data), Some(from)) = (inc.data, inc.from.as_deref()) else {
                    out.foreign += 1;
                    continue;
                };
                let Some(mk) = payload::marker(data) else {
                    out.foreign += 1;
                    continue;
                };
                let Some(&(s_room, s_slot)) = sh.table.get().and_then(|t| t.by_id.get(from)) else {
                    out.foreign += 1;
                    continue;
                };
                if s_room != room || s_room * m + s_slot != mk.s {
                    // `from` does not name the client that wrote it.
                    out.misattributed += 1;
                    continue;
                }
                let Some(seq) = mk.seq_for(slot) else {
                    out.foreign += 1;
                    continue;
                };
                match out.recv[s_slot].record(seq) {
                    stats::Seen::New | stats::Seen::NewReordered => {
                        sh.delivered.fetch_add(1, Relaxed);
                        sh.permits[mk.s].add_permits(1);
                        if let Some(&(ws, we)) = sh.window.get()
                            && mk.t >= ws
                            && mk.t < we
                        {
                            out.hist.saturating_record(now.saturating_sub(mk.t).max(1));
                            out.in_window += 1;
                        }
                    }
                    stats::Seen::Duplicate | stats::Seen::Invalid => {}
                }
            }
            "login" => {
                if let Some(f) = inc.from {
                    out.learned.insert(f.into_owned());
                }
            }
            "logout" => out.logouts += 1,
            "error" => {
                let t = inc.message.map(|m| m.error_type).unwrap_or_default();
                *out.errors
                    .entry(if t.is_empty() { "error".into() } else { t })
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    out
}

/// What one client's writer did.
struct WriterOut {
    /// By receiver's room slot: messages written to it (= last seq used).
    sent: Vec<u64>,
    frames: u64,
    bytes: u64,
    stalls: u64,
    send_failed: bool,
}

/// splitmix64: a small, seedable generator (no need for a crate).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn pick_kind(rng: &mut Rng, mix: &[(Kind, u32)]) -> Kind {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(u64::from(total)) as u32;
    for &(k, w) in mix {
        if x < w {
            return k;
        }
        x -= w;
    }
    mix[0].0
}

async fn writer(sh: Arc<Shared>, room: usize, slot: usize, mut sink: Sink) -> (WriterOut, Sink) {
    let cfg = &sh.cfg;
    let m = cfg.clients;
    let g = room * m + slot;
    let mut out = WriterOut {
        sent: vec![0; m],
        frames: 0,
        bytes: 0,
        stalls: 0,
        send_failed: false,
    };
    let (_, end) = *sh.window.get().expect("window set before writers start");
    let table = sh.table.get().expect("table set before writers start");
    let peers: Vec<(usize, &str)> = table.ids[room]
        .iter()
        .enumerate()
        .filter(|&(s, id)| s != slot && id.is_some())
        .map(|(s, id)| (s, id.as_deref().unwrap_or_default()))
        .collect();
    if peers.is_empty() {
        return (out, sink);
    }
    let mut rng = Rng(cfg.seed ^ (g as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let sem = &sh.permits[g];
    let mut next_tick = Instant::now()
        + Duration::from_secs_f64(rng.unit() * cfg.period().map_or(0.0, |p| p.as_secs_f64()));
    let end_at = sh.epoch + Duration::from_micros(end);
    let mut qs = vec![0u64; m];
    loop {
        if Instant::now() >= end_at {
            break;
        }
        if let Some(p) = cfg.period() {
            if next_tick >= end_at {
                break;
            }
            tokio::time::sleep_until(next_tick.into()).await;
            next_tick += p;
            // Behind schedule (blocked on in-flight): do not burst to catch up.
            let now = Instant::now();
            if next_tick < now {
                next_tick = now;
            }
        }
        let kind = pick_kind(&mut rng, &cfg.mix);
        let fanout = kind == Kind::Offer && cfg.offer_fanout > 0.0 && rng.unit() < cfg.offer_fanout;
        let target = peers[rng.below(peers.len() as u64) as usize];
        let n = if fanout { peers.len() } else { 1 };
        // Bounded in flight: wait for earlier deliveries, but not past the end.
        let wait_start = Instant::now();
        let mut stalled = false;
        let got = loop {
            let left = end_at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            match tokio::time::timeout(left.min(cfg.stall_timeout), sem.acquire_many(n as u32))
                .await
            {
                Ok(Ok(p)) => {
                    p.forget();
                    break true;
                }
                Ok(Err(_)) => break false,
                Err(_) => {
                    if !stalled && wait_start.elapsed() >= cfg.stall_timeout {
                        stalled = true;
                        out.stalls += 1;
                    }
                }
            }
        };
        if !got {
            break;
        }
        let ts = sh.now_us();
        let (to, seq) = if fanout {
            for &(s, _) in &peers {
                qs[s] = out.sent[s] + 1;
            }
            (None, Seq::PerSlot(&qs))
        } else {
            (Some(target.1), Seq::One(out.sent[target.0] + 1))
        };
        let size = if kind == Kind::Candidate {
            cfg.candidate_bytes
        } else {
            cfg.sdp_bytes
        };
        let frame = payload::build_frame(kind, to, g, seq, ts, size);
        let len = frame.len() as u64;
        sh.expected.fetch_add(n as u64, Relaxed);
        if sink.send(Message::text(frame)).await.is_err() {
            sh.expected.fetch_sub(n as u64, Relaxed);
            out.send_failed = true;
            break;
        }
        if fanout {
            for &(s, _) in &peers {
                out.sent[s] += 1;
            }
        } else {
            out.sent[target.0] += 1;
        }
        out.frames += 1;
        out.bytes += len;
    }
    (out, sink)
}

/// Highest RSS of the server and the tool, sampled every 100 ms.
struct Peaks {
    server: AtomicU64,
    tool: AtomicU64,
}

fn spawn_sampler(
    pid: Option<u32>,
    peaks: Arc<Peaks>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Some(p) = pid
                && let Some(s) = proc::sample(Some(p))
            {
                peaks.server.fetch_max(s.rss_kb, Relaxed);
            }
            if let Some(s) = proc::sample(None) {
                peaks.tool.fetch_max(s.rss_kb, Relaxed);
            }
        }
    })
}

/// Resolves the URL's host to loopback addresses and picks the first that accepts.
pub async fn resolve_loopback(url: &str) -> Result<SocketAddr> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let req = url.into_client_request().context("parsing --url")?;
    let uri = req.uri();
    match uri.scheme_str() {
        Some("wss") | Some("ws") => {}
        _ => bail!("--url must be a ws:// or wss:// URL"),
    }
    let host = uri
        .host()
        .context("--url has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .context("resolving --url host")?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        bail!(
            "sigload only loads servers on this machine: {host} must resolve to loopback addresses only ({addrs:?})"
        );
    }
    // A server that was just started may not listen yet: retry for 5 s.
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for a in &addrs {
            match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(a)).await {
                Ok(Ok(_)) => return Ok(*a),
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("timed out".into()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "cannot connect to {host}:{port} ({addrs:?}): {}",
        last.unwrap_or_default()
    )
}

struct Joined1 {
    room: usize,
    slot: usize,
    own_id: String,
    sink: Option<Sink>,
    reader: Option<tokio::task::JoinHandle<ReaderOut>>,
}

pub async fn run(
    cfg: Config,
    connector: Connector,
    addrs: Vec<SocketAddr>,
    threads: usize,
    nofile: u64,
) -> Result<Report> {
    let n = cfg.rooms * cfg.clients;
    let server_pid = cfg.server_pid;
    if let Some(p) = server_pid
        && proc::sample(Some(p)).is_none()
    {
        bail!("--server-pid {p}: cannot read /proc/{p}/stat and status");
    }
    let fanout_need = if cfg.offer_fanout > 0.0 {
        cfg.clients.saturating_sub(1)
    } else {
        1
    };
    let permits_each = cfg.inflight.max(fanout_need);
    let sh = Arc::new(Shared {
        addrs,
        connector,
        epoch: Instant::now(),
        table: OnceLock::new(),
        permits: (0..n)
            .map(|_| Arc::new(Semaphore::new(permits_each)))
            .collect(),
        expected: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        frames_received: AtomicU64::new(0),
        cancel: CancellationToken::new(),
        window: OnceLock::new(),
        cfg,
    });
    let cfg = &sh.cfg;
    let mut report = Report {
        mode: if cfg.idle { "idle" } else { "load" },
        url: cfg.url_text(),
        rooms: cfg.rooms,
        clients_per_room: cfg.clients,
        ..Default::default()
    };
    if permits_each > cfg.inflight {
        report.notes.push(format!(
            "in-flight limit raised to {permits_each} per client so a fan-out offer fits"
        ));
    }
    let peaks = Arc::new(Peaks {
        server: AtomicU64::new(0),
        tool: AtomicU64::new(0),
    });
    let stop_sampler = CancellationToken::new();
    let sampler = spawn_sampler(server_pid, peaks.clone(), stop_sampler.clone());
    let server_before = server_pid.and_then(|p| proc::sample(Some(p)));

    // ---- connect + join, a bounded number of handshakes at a time ----
    let t_connect = Instant::now();
    let gate = Arc::new(Semaphore::new(cfg.connect_concurrency));
    let mut joins = Vec::with_capacity(n);
    for slot in 0..cfg.clients {
        for room in 0..cfg.rooms {
            let sh = sh.clone();
            let gate = gate.clone();
            joins.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.ok();
                let room_name = format!("{}{room}", sh.cfg.room_prefix);
                let user = format!("sl-r{room}-c{slot}");
                match connect_one(&sh, &room_name, slot, &user).await {
                    Ok(j) => {
                        let reader =
                            tokio::spawn(reader(sh.clone(), room, slot, j.stream, j.learned));
                        Ok((
                            Joined1 {
                                room,
                                slot,
                                own_id: j.own_id,
                                sink: Some(j.sink),
                                reader: Some(reader),
                            },
                            j.join_us,
                        ))
                    }
                    Err(e) => Err(e),
                }
            }));
        }
    }
    let mut clients: Vec<Joined1> = Vec::with_capacity(n);
    let mut join_hist = stats::new_histogram();
    for j in joins {
        match j.await {
            Ok(Ok((c, us))) => {
                join_hist.saturating_record(us.max(1));
                clients.push(c);
            }
            Ok(Err(e)) => {
                report.sessions.connect_failures += 1;
                *report.sessions.failures_by_kind.entry(e.key()).or_default() += 1;
            }
            Err(_) => {
                report.sessions.connect_failures += 1;
                *report
                    .sessions
                    .failures_by_kind
                    .entry("task_failed".into())
                    .or_default() += 1;
            }
        }
    }
    report.sessions.requested = n;
    report.sessions.joined = clients.len();
    report.sessions.connect_phase_s = t_connect.elapsed().as_secs_f64();
    report.sessions.join_latency = stats::summarize(&join_hist);
    let mut ids = vec![vec![None; cfg.clients]; cfg.rooms];
    let mut by_id = HashMap::with_capacity(clients.len());
    for c in &clients {
        ids[c.room][c.slot] = Some(c.own_id.clone());
        if by_id.insert(c.own_id.clone(), (c.room, c.slot)).is_some() {
            report
                .notes
                .push(format!("the server gave session id {} twice", c.own_id));
        }
    }
    let _ = sh.table.set(Table { ids, by_id });
    // Let the last `login` notices arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let tool_before = proc::sample(None).unwrap_or_default();
    let server_t0 = server_pid.and_then(|p| proc::sample(Some(p)));
    let wall0 = Instant::now();
    let mut delivered_for_cpu = 0u64;

    if cfg.idle {
        let settle_end = Instant::now() + cfg.settle.min(cfg.duration);
        tokio::time::sleep_until(settle_end.into()).await;
        let server_after = server_pid.and_then(|p| proc::sample(Some(p)));
        let tool_now = proc::sample(None).unwrap_or_default();
        tokio::time::sleep_until((wall0 + cfg.duration.max(cfg.settle)).into()).await;
        let joined = clients.len().max(1) as f64;
        report.idle = Some(IdleReport {
            hold_s: wall0.elapsed().as_secs_f64(),
            server_rss_before_kb: server_before.map(|s| s.rss_kb),
            server_rss_after_kb: server_after.map(|s| s.rss_kb),
            server_rss_per_session_kb: match (server_before, server_after) {
                (Some(b), Some(a)) if !clients.is_empty() => {
                    Some(((a.rss_kb as f64 - b.rss_kb as f64) / joined * 100.0).round() / 100.0)
                }
                _ => None,
            },
            tool_rss_per_session_kb: (tool_now.rss_kb as f64 / joined * 100.0).round() / 100.0,
            frames_received: sh.frames_received.load(Relaxed),
        });
    } else {
        // ---- load ----
        let start = sh.now_us();
        let (ws, we) = (
            start + cfg.warmup.as_micros() as u64,
            start + cfg.duration.as_micros() as u64,
        );
        let _ = sh.window.set((ws, we));
        let mut writers = Vec::with_capacity(clients.len());
        for c in clients.iter_mut() {
            // The sink moves into the writer and comes back with its result.
            let sink = c.sink.take().expect("joined clients have a sink");
            writers.push(tokio::spawn(writer(sh.clone(), c.room, c.slot, sink)));
        }
        let mut sent_rows: Vec<Vec<Vec<u64>>> =
            vec![vec![vec![0; cfg.clients]; cfg.clients]; cfg.rooms];
        let mut l = LoadReport {
            duration_s: cfg.duration.as_secs_f64(),
            warmup_s: cfg.warmup.as_secs_f64(),
            measured_s: (cfg.duration - cfg.warmup).as_secs_f64(),
            rate_per_client: cfg.rate,
            inflight: cfg.inflight,
            mix: cfg.mix_text.clone(),
            offer_fanout: cfg.offer_fanout,
            sdp_bytes: cfg.sdp_bytes,
            candidate_bytes: cfg.candidate_bytes,
            ..Default::default()
        };
        for (c, w) in clients.iter_mut().zip(writers) {
            let (out, sink) = w.await.context("writer task")?;
            c.sink = Some(sink);
            sent_rows[c.room][c.slot] = out.sent;
            l.frames_sent += out.frames;
            l.bytes_sent += out.bytes;
            l.stalls += out.stalls;
            l.send_failures += u64::from(out.send_failed);
        }
        // ---- drain ----
        let t_drain = Instant::now();
        let drain_end = t_drain + cfg.drain_timeout;
        // Until everything arrived, --drain-timeout passed, or nothing came for 2 s
        // (what is still missing then is lost, not slow).
        let (mut last, mut last_change) = (sh.delivered.load(Relaxed), Instant::now());
        while sh.delivered.load(Relaxed) < sh.expected.load(Relaxed) && Instant::now() < drain_end {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = sh.delivered.load(Relaxed);
            if now != last {
                (last, last_change) = (now, Instant::now());
            } else if last_change.elapsed() >= Duration::from_secs(2) {
                break;
            }
        }
        l.drained = sh.delivered.load(Relaxed) >= sh.expected.load(Relaxed);
        l.drain_s = t_drain.elapsed().as_secs_f64();
        // Stop the readers; tally what they saw.
        sh.cancel.cancel();
        let mut recv_rows: Vec<Vec<Vec<PairRecv>>> = vec![vec![Vec::new(); cfg.clients]; cfg.rooms];
        let mut hist = stats::new_histogram();
        let mut learned_links = 0u64;
        let table = sh.table.get().expect("set above");
        for c in clients.iter_mut() {
            let Some(handle) = c.reader.take() else {
                continue;
            };
            let r = handle.await.context("reader task")?;
            hist.add(&r.hist).ok();
            l.delivered_in_window += r.in_window;
            l.foreign_frames += r.foreign;
            l.misattributed += r.misattributed;
            for (k, v) in r.errors {
                *l.error_frames.entry(k).or_default() += v;
            }
            report.sessions.closed_early += u64::from(r.closed_early);
            learned_links += count_learned(table, c.room, c.slot, &r.learned);
            recv_rows[c.room][c.slot] = r.recv;
        }
        report.sessions.membership_links_learned = learned_links;
        let mut tally = Tally::default();
        for room in 0..cfg.rooms {
            tally += stats::tally(&sent_rows[room], &recv_rows[room]);
        }
        l.tally = tally;
        l.latency = stats::summarize(&hist);
        l.delivered_per_s = round2(l.delivered_in_window as f64 / l.measured_s.max(1e-9));
        l.frames_sent_per_s = round2(l.frames_sent as f64 / cfg.duration.as_secs_f64().max(1e-9));
        delivered_for_cpu = l.tally.delivered;
        report.load = Some(l);
    }
    let wall = wall0.elapsed().as_secs_f64();
    report.measured_phase_s = round2(wall);
    let tool_after = proc::sample(None).unwrap_or_default();
    let server_t1 = server_pid.and_then(|p| proc::sample(Some(p)));

    // Membership links (ordered pairs of joined room-mates).
    let table = sh.table.get().expect("set above");
    report.sessions.membership_links = table
        .ids
        .iter()
        .map(|r| {
            let k = r.iter().filter(|x| x.is_some()).count() as u64;
            k * k.saturating_sub(1)
        })
        .sum();

    // ---- close: stop the readers (idle mode: collect them), then close the sockets ----
    sh.cancel.cancel();
    for c in clients.iter_mut() {
        let Some(handle) = c.reader.take() else {
            continue;
        };
        if let Ok(r) = handle.await {
            report.sessions.closed_early += u64::from(r.closed_early);
            report.sessions.membership_links_learned +=
                count_learned(table, c.room, c.slot, &r.learned);
        }
    }
    let mut closers = Vec::with_capacity(clients.len());
    for c in clients {
        if let Some(mut sink) = c.sink {
            closers.push(tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
            }));
        }
    }
    for c in closers {
        let _ = c.await;
    }
    stop_sampler.cancel();
    let _ = sampler.await;

    if let (Some(pid), Some(a), Some(b)) = (server_pid, server_t0, server_t1) {
        let cpu = (b.cpu_s - a.cpu_s).max(0.0);
        report.server = Some(ServerReport {
            pid,
            cpu_s: round2(cpu),
            cpu_pct: round2(cpu / wall.max(1e-9) * 100.0),
            cores_allowed: proc::allowed_cpus(Some(pid)),
            runq_wait_s: round2((b.runq_wait_s - a.runq_wait_s).max(0.0)),
            others_cpu_s: round2(((b.cpus_busy_s - a.cpus_busy_s) - cpu).max(0.0)),
            cpu_us_per_delivered: (delivered_for_cpu > 0)
                .then(|| round2(cpu * 1e6 / delivered_for_cpu as f64)),
            rss_start_kb: server_before.map_or(a.rss_kb, |s| s.rss_kb),
            rss_peak_kb: peaks.server.load(Relaxed).max(b.rss_kb),
            rss_end_kb: b.rss_kb,
            hwm_kb: b.hwm_kb,
        });
    }
    let tool_cpu = (tool_after.cpu_s - tool_before.cpu_s).max(0.0);
    let cores = proc::allowed_cpus(None).unwrap_or(threads);
    report.tool = ToolReport {
        cpu_s: round2(tool_cpu),
        cpu_pct: round2(tool_cpu / wall.max(1e-9) * 100.0),
        cores_allowed: cores,
        runq_wait_s: round2((tool_after.runq_wait_s - tool_before.runq_wait_s).max(0.0)),
        others_cpu_s: round2(
            ((tool_after.cpus_busy_s - tool_before.cpus_busy_s) - tool_cpu).max(0.0),
        ),
        threads,
        rss_peak_kb: peaks.tool.load(Relaxed).max(tool_after.rss_kb),
        nofile_limit: nofile,
    };
    add_notes(&mut report);
    Ok(report)
}

fn count_learned(table: &Table, room: usize, slot: usize, learned: &HashSet<String>) -> u64 {
    table.ids[room]
        .iter()
        .enumerate()
        .filter(|&(s, id)| s != slot && id.as_ref().is_some_and(|id| learned.contains(id)))
        .count() as u64
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn add_notes(r: &mut Report) {
    let tool_full = r.tool.cpu_pct >= 85.0 * r.tool.cores_allowed as f64;
    if r.mode == "load" && tool_full {
        r.notes.push(format!(
            "the tool used {:.0}% of its {} CPU(s): it is likely the bottleneck, so throughput is a lower bound for the server",
            r.tool.cpu_pct, r.tool.cores_allowed
        ));
    }
    if let Some(s) = &r.server
        && let Some(c) = s.cores_allowed
        && s.cpu_pct >= 85.0 * c as f64
    {
        r.notes.push(format!(
            "the server used {:.0}% of its {c} CPU(s): it is CPU-bound",
            s.cpu_pct
        ));
    }
    let wall = r.measured_phase_s.max(0.1);
    let others = [
        (
            "server",
            r.server.as_ref().map_or(0.0, |s| s.others_cpu_s),
            r.server.as_ref().and_then(|s| s.cores_allowed).unwrap_or(1),
        ),
        ("tool", r.tool.others_cpu_s, r.tool.cores_allowed),
    ];
    for (who, o, cores) in others {
        let share = o / (wall * cores.max(1) as f64) * 100.0;
        if r.mode == "load" && share >= 10.0 {
            r.notes.push(format!(
                "other processes used {o:.1} s (~{share:.0}%) of the CPU(s) the {who} runs on (including the {} if they share CPUs): its numbers are pessimistic",
                if who == "tool" { "server" } else { "tool" }
            ));
        }
    }
    if let Some(l) = &r.load {
        if l.tally.lost > 0 {
            r.notes
                .push(format!("{} deliveries were lost", l.tally.lost));
        }
        if let Some(n) = l.error_frames.get("rateLimited") {
            r.notes.push(format!(
                "the server rate-limited {n} messages: turn its limit off for a capacity test (our host: --rate-limit 0) or use --rate"
            ));
        }
        if !l.drained {
            r.notes
                .push("not every message arrived before --drain-timeout".into());
        }
    }
    if r.sessions.connect_failures > 0 {
        r.notes.push(format!(
            "{} sessions did not join",
            r.sessions.connect_failures
        ));
    }
}
