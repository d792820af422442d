//! The report: JSON (`--json`) or a human table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{Latency, Tally};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// "load" or "idle".
    pub mode: &'static str,
    pub url: String,
    pub rooms: usize,
    pub clients_per_room: usize,
    /// Wall time of the measured phase (load + drain, or the hold) that
    /// the CPU figures cover, seconds.
    pub measured_phase_s: f64,
    pub sessions: Sessions,
    pub load: Option<LoadReport>,
    pub idle: Option<IdleReport>,
    pub server: Option<ServerReport>,
    pub tool: ToolReport,
    pub notes: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Sessions {
    pub requested: usize,
    pub joined: usize,
    pub connect_failures: u64,
    pub failures_by_kind: BTreeMap<String, u64>,
    /// Wall time of the whole connect + join phase.
    pub connect_phase_s: f64,
    /// One session's TCP + TLS + WebSocket + login → joined, µs.
    pub join_latency: Latency,
    /// Room-mate links (ordered pairs of joined sessions in one room).
    pub membership_links: u64,
    /// Of those, learned from the protocol (`login` notices, `joined.members`).
    pub membership_links_learned: u64,
    /// Sessions the server closed (or that failed) before the tool was done.
    pub closed_early: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct LoadReport {
    pub duration_s: f64,
    pub warmup_s: f64,
    /// duration − warmup: the window throughput and latency are taken over.
    pub measured_s: f64,
    /// Messages/s per client; 0 = as fast as in-flight allows.
    pub rate_per_client: f64,
    pub inflight: usize,
    pub mix: String,
    pub offer_fanout: f64,
    pub sdp_bytes: usize,
    pub candidate_bytes: usize,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_sent_per_s: f64,
    /// Deliveries (one message to one receiver) sent in the window and received.
    pub delivered_in_window: u64,
    pub delivered_per_s: f64,
    /// All deliveries over the whole run (warmup and drain included).
    pub tally: Tally,
    pub latency: Latency,
    pub stalls: u64,
    pub send_failures: u64,
    /// `error` frames received, by errorType.
    pub error_frames: BTreeMap<String, u64>,
    /// Forwarded frames without the tool's marker or from unknown senders.
    pub foreign_frames: u64,
    /// Frames whose `from` named another client than the one that wrote them.
    pub misattributed: u64,
    /// All sent messages arrived before --drain-timeout.
    pub drained: bool,
    pub drain_s: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct IdleReport {
    pub hold_s: f64,
    pub server_rss_before_kb: Option<u64>,
    pub server_rss_after_kb: Option<u64>,
    pub server_rss_per_session_kb: Option<f64>,
    pub tool_rss_per_session_kb: f64,
    pub frames_received: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct ServerReport {
    pub pid: u32,
    /// CPU time (user + system) over the measured phase (load + drain, or the hold).
    pub cpu_s: f64,
    /// cpu_s / wall time × 100 (100 = one core busy).
    pub cpu_pct: f64,
    pub cores_allowed: Option<usize>,
    /// Time its threads waited for a CPU over the same phase (other processes competing).
    pub runq_wait_s: f64,
    /// CPU time other processes used on the CPUs it may run on, same phase
    /// (includes the tool when both share CPUs).
    pub others_cpu_s: f64,
    pub cpu_us_per_delivered: Option<f64>,
    pub rss_start_kb: u64,
    /// Highest VmRSS sampled (every 100 ms) during this run.
    pub rss_peak_kb: u64,
    pub rss_end_kb: u64,
    /// VmHWM: the peak over the server's whole life.
    pub hwm_kb: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct ToolReport {
    pub cpu_s: f64,
    pub cpu_pct: f64,
    pub cores_allowed: usize,
    /// Time its threads waited for a CPU over the measured phase.
    pub runq_wait_s: f64,
    /// CPU time other processes used on the CPUs it may run on.
    pub others_cpu_s: f64,
    pub threads: usize,
    pub rss_peak_kb: u64,
    pub nofile_limit: u64,
}

fn f(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

impl Report {
    pub fn table(&self) -> String {
        let mut o = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(o, "  {k:<34} {v}");
        };
        row("mode", format!("{} against {}", self.mode, self.url));
        let s = &self.sessions;
        row(
            "sessions joined",
            format!(
                "{} of {} ({} rooms x {})",
                s.joined, s.requested, self.rooms, self.clients_per_room
            ),
        );
        let fails = if s.failures_by_kind.is_empty() {
            "0".to_string()
        } else {
            format!("{} {:?}", s.connect_failures, s.failures_by_kind)
        };
        row("connect failures", fails);
        row(
            "connect phase",
            format!(
                "{} s; join p50 {} p99 {} max {}",
                f(s.connect_phase_s),
                ms(s.join_latency.p50_us),
                ms(s.join_latency.p99_us),
                ms(s.join_latency.max_us)
            ),
        );
        row(
            "room-mates learned via protocol",
            format!(
                "{} of {} links",
                s.membership_links_learned, s.membership_links
            ),
        );
        row("closed early", s.closed_early.to_string());
        if let Some(l) = &self.load {
            let load = if l.rate_per_client > 0.0 {
                format!(
                    "{}/s per client, in flight <= {}",
                    f(l.rate_per_client),
                    l.inflight
                )
            } else {
                format!("as fast as possible, in flight <= {}", l.inflight)
            };
            row("load", load);
            row(
                "mix",
                format!(
                    "{} (offer fan-out {}), SDP {} B, candidate {} B",
                    l.mix, l.offer_fanout, l.sdp_bytes, l.candidate_bytes
                ),
            );
            row(
                "window",
                format!("{} s (after {} s warmup)", f(l.measured_s), f(l.warmup_s)),
            );
            row(
                "frames sent",
                format!(
                    "{} ({}/s, {} MB)",
                    l.frames_sent,
                    f(l.frames_sent_per_s),
                    f(l.bytes_sent as f64 / 1e6)
                ),
            );
            row("DELIVERED msgs/s", f(l.delivered_per_s));
            let lat = &l.latency;
            row(
                "latency p50 / p90 / p99 / max",
                format!(
                    "{} / {} / {} / {}",
                    ms(lat.p50_us),
                    ms(lat.p90_us),
                    ms(lat.p99_us),
                    ms(lat.max_us)
                ),
            );
            let t = &l.tally;
            row(
                "deliveries expected / received",
                format!(
                    "{} / {} (drained: {}, {} s)",
                    t.expected,
                    t.delivered,
                    l.drained,
                    f(l.drain_s)
                ),
            );
            row(
                "lost / duplicated / reordered",
                format!("{} / {} / {}", t.lost, t.duplicated, t.reordered),
            );
            if t.phantom + l.foreign_frames + l.misattributed > 0 {
                row(
                    "phantom / foreign / misattributed",
                    format!("{} / {} / {}", t.phantom, l.foreign_frames, l.misattributed),
                );
            }
            if !l.error_frames.is_empty() {
                row("error frames", format!("{:?}", l.error_frames));
            }
            if l.stalls + l.send_failures > 0 {
                row(
                    "stalls / send failures",
                    format!("{} / {}", l.stalls, l.send_failures),
                );
            }
        }
        if let Some(i) = &self.idle {
            row("held", format!("{} s", f(i.hold_s)));
            if let (Some(b), Some(a)) = (i.server_rss_before_kb, i.server_rss_after_kb) {
                row(
                    "server RSS before / after",
                    format!("{} / {} MiB", f(b as f64 / 1024.0), f(a as f64 / 1024.0)),
                );
            }
            if let Some(p) = i.server_rss_per_session_kb {
                row("SERVER RSS per session", format!("{} KiB", f(p)));
            }
            row(
                "tool RSS per session",
                format!("{} KiB", f(i.tool_rss_per_session_kb)),
            );
        }
        if let Some(sv) = &self.server {
            row(
                "server CPU",
                format!(
                    "{} s = {}% (of {} cores allowed); others on them {} s",
                    f(sv.cpu_s),
                    f(sv.cpu_pct),
                    sv.cores_allowed.map_or("?".into(), |c| c.to_string()),
                    f(sv.others_cpu_s)
                ),
            );
            if let Some(c) = sv.cpu_us_per_delivered {
                row("server CPU per delivered msg", format!("{} us", f(c)));
            }
            row(
                "server RSS start / peak / end",
                format!(
                    "{} / {} / {} MiB (lifetime peak {})",
                    f(sv.rss_start_kb as f64 / 1024.0),
                    f(sv.rss_peak_kb as f64 / 1024.0),
                    f(sv.rss_end_kb as f64 / 1024.0),
                    f(sv.hwm_kb as f64 / 1024.0)
                ),
            );
        }
        let t = &self.tool;
        row(
            "tool CPU",
            format!(
                "{} s = {}% (of {} cores, {} threads); others on them {} s",
                f(t.cpu_s),
                f(t.cpu_pct),
                t.cores_allowed,
                t.threads,
                f(t.others_cpu_s)
            ),
        );
        row(
            "tool RSS peak",
            format!("{} MiB", f(t.rss_peak_kb as f64 / 1024.0)),
        );
        for n in &self.notes {
            let _ = writeln!(o, "  note: {n}");
        }
        o
    }
}
