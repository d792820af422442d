//! Command line.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

use crate::payload::Kind;

/// Load generator for the WebRTC Chat signaling protocol
/// (docs/protocol.md in this repository) against any wss:// server on this machine.
///
/// ROOMS x CLIENTS sessions join (`login`, wait for `joined`), then each
/// sends offers/answers/candidates to its room-mates for --duration
/// seconds, at --rate per client or as fast as --inflight allows, and the
/// tool reports delivered messages/s, latency, loss/duplicates, connect
/// failures and (with --server-pid) the server's CPU and memory.
#[derive(Debug, Parser)]
#[command(name = "sigload", version)]
pub struct Args {
    /// Signaling URL, e.g. wss://127.0.0.1:8443/ws (loopback addresses only).
    /// Give it more than once to spread the clients over several hosts (a
    /// cluster): client i of every room connects to URL number i modulo the
    /// count, so each room has members on different hosts.
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// Accept any server certificate (the host's self-signed one).
    #[arg(long)]
    pub insecure: bool,
    /// PEM file of CA certificates to verify the server with (default: the system's).
    #[arg(long)]
    pub ca_file: Option<String>,
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 5)]
    pub clients: usize,
    /// Seconds of load (in --idle mode: seconds to hold the sessions after they joined).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds at the start of the load not counted in latency and throughput.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Messages per second per client; 0 = as fast as --inflight allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Deliveries one client may have outstanding (sent, not yet received).
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// Message mix as kind=weight, e.g. "offer=1,answer=1,candidate=6" or "candidate".
    #[arg(long, default_value = "offer=1,answer=1,candidate=6")]
    pub mix: String,
    /// Fraction of offers sent without `to` (to every room-mate).
    #[arg(long, default_value_t = 0.0)]
    pub offer_fanout: f64,
    /// Frame size of offers and answers, bytes.
    #[arg(long, default_value_t = 4000)]
    pub sdp_bytes: usize,
    /// Frame size of candidates, bytes.
    #[arg(long, default_value_t = 300)]
    pub candidate_bytes: usize,
    /// TLS+WebSocket handshakes (and joins) in progress at once.
    #[arg(long, default_value_t = 32)]
    pub connect_concurrency: usize,
    /// Seconds allowed for one connect + join.
    #[arg(long, default_value_t = 15.0)]
    pub connect_timeout: f64,
    /// Seconds to wait, after the load, for messages still in flight.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// A client waiting this many seconds for its in-flight deliveries counts a stall.
    #[arg(long, default_value_t = 5.0)]
    pub stall_timeout: f64,
    /// PID of the server (on this machine) to measure CPU time and memory of.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Only open the sessions, join them and hold them; report memory per session.
    #[arg(long)]
    pub idle: bool,
    /// Seconds to let the server settle after the last join before reading its memory (--idle).
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Room names are PREFIX0, PREFIX1, … (default: sigload-<pid>-<time>-).
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// Worker threads of the tool (default: CPUs it may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the message/target choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Signaling URLs; client (slot) i of every room uses `urls[i % len]`.
    pub urls: Vec<String>,
    pub rooms: usize,
    pub clients: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub rate: f64,
    pub inflight: usize,
    pub mix: Vec<(Kind, u32)>,
    pub mix_text: String,
    pub offer_fanout: f64,
    pub sdp_bytes: usize,
    pub candidate_bytes: usize,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub stall_timeout: Duration,
    pub server_pid: Option<u32>,
    pub idle: bool,
    pub settle: Duration,
    pub room_prefix: String,
    pub seed: u64,
}

impl Config {
    /// Index into `urls` of the URL client `slot` of a room connects to.
    pub fn url_index(&self, slot: usize) -> usize {
        slot % self.urls.len()
    }

    /// The URLs as shown in reports: the URL itself when there is one.
    pub fn url_text(&self) -> String {
        self.urls.join(" ")
    }

    pub fn period(&self) -> Option<Duration> {
        (self.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.rate))
    }
}

pub fn parse_mix(text: &str) -> Result<Vec<(Kind, u32)>> {
    let mut mix = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = match part.split_once('=') {
            Some((n, w)) => (
                n.trim(),
                w.trim()
                    .parse::<u32>()
                    .map_err(|_| anyhow::anyhow!("bad weight in {part:?}"))?,
            ),
            None => (part, 1),
        };
        let kind = match name {
            "offer" => Kind::Offer,
            "answer" => Kind::Answer,
            "candidate" => Kind::Candidate,
            _ => bail!("unknown message kind {name:?} in --mix (offer, answer, candidate)"),
        };
        if w > 0 {
            mix.push((kind, w));
        }
    }
    if mix.is_empty() {
        bail!("--mix has no kind with a weight above 0");
    }
    Ok(mix)
}

fn secs(name: &str, v: f64, max: f64) -> Result<Duration> {
    if !(v.is_finite() && v >= 0.0 && v <= max) {
        bail!("--{name} must be between 0 and {max} seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

impl Args {
    pub fn config(&self) -> Result<Config> {
        if self.rooms == 0 || self.clients == 0 {
            bail!("--rooms and --clients must be at least 1");
        }
        if self.rooms.saturating_mul(self.clients) > 100_000 {
            bail!("at most 100000 sessions");
        }
        if self.url.is_empty() {
            bail!("--url is required");
        }
        if self.inflight == 0 {
            bail!("--inflight must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.offer_fanout) {
            bail!("--offer-fanout is a fraction between 0 and 1");
        }
        if !(self.rate.is_finite() && (0.0..=100_000.0).contains(&self.rate)) {
            bail!("--rate must be between 0 and 100000 per client");
        }
        if self.sdp_bytes > 1 << 20 || self.candidate_bytes > 1 << 20 {
            bail!("message sizes are at most 1 MiB");
        }
        let duration = secs("duration", self.duration, 3600.0)?;
        let warmup = secs("warmup", self.warmup, 3600.0)?;
        if !self.idle && warmup >= duration {
            bail!("--warmup must be shorter than --duration");
        }
        let prefix = self.room_prefix.clone().unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("sigload-{}-{t}-", std::process::id())
        });
        Ok(Config {
            urls: self.url.clone(),
            rooms: self.rooms,
            clients: self.clients,
            duration,
            warmup,
            rate: self.rate,
            inflight: self.inflight,
            mix: parse_mix(&self.mix)?,
            mix_text: self.mix.clone(),
            offer_fanout: self.offer_fanout,
            sdp_bytes: self.sdp_bytes,
            candidate_bytes: self.candidate_bytes,
            connect_concurrency: self.connect_concurrency.max(1),
            connect_timeout: secs("connect-timeout", self.connect_timeout, 600.0)?,
            drain_timeout: secs("drain-timeout", self.drain_timeout, 600.0)?,
            stall_timeout: secs("stall-timeout", self.stall_timeout, 600.0)?
                .max(Duration::from_millis(10)),
            server_pid: self.server_pid,
            idle: self.idle,
            settle: secs("settle", self.settle, 600.0)?,
            room_prefix: prefix,
            seed: self.seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes() {
        assert_eq!(parse_mix("candidate").unwrap(), vec![(Kind::Candidate, 1)]);
        assert_eq!(
            parse_mix("offer=1, answer=2,candidate=0").unwrap(),
            vec![(Kind::Offer, 1), (Kind::Answer, 2)]
        );
        assert!(parse_mix("offer=0").is_err());
        assert!(parse_mix("kick").is_err());
        assert!(parse_mix("offer=x").is_err());
    }

    #[test]
    fn arg_checks() {
        let a = Args::try_parse_from(["sigload", "--url", "wss://127.0.0.1:1/ws", "--rooms", "0"])
            .unwrap();
        assert!(a.config().is_err());
        let a = Args::try_parse_from(["sigload", "--url", "wss://127.0.0.1:1/ws", "--rate", "10"])
            .unwrap();
        let c = a.config().unwrap();
        assert_eq!(c.period(), Some(Duration::from_millis(100)));
        assert_eq!((c.rooms, c.clients, c.inflight), (10, 5, 8));
        assert_eq!(c.urls, ["wss://127.0.0.1:1/ws"]);
        assert_eq!(c.url_text(), "wss://127.0.0.1:1/ws");
        assert!((0..5).all(|slot| c.url_index(slot) == 0));
    }

    #[test]
    fn urls_spread_round_robin() {
        let a = Args::try_parse_from([
            "sigload",
            "--url",
            "wss://127.0.0.1:1/ws",
            "--url",
            "wss://127.0.0.1:2/ws",
            "--clients",
            "5",
        ])
        .unwrap();
        let c = a.config().unwrap();
        assert_eq!(c.urls, ["wss://127.0.0.1:1/ws", "wss://127.0.0.1:2/ws"]);
        let hosts: Vec<&str> = (0..c.clients)
            .map(|slot| c.urls[c.url_index(slot)].as_str())
            .collect();
        assert_eq!(
            hosts,
            [
                "wss://127.0.0.1:1/ws",
                "wss://127.0.0.1:2/ws",
                "wss://127.0.0.1:1/ws",
                "wss://127.0.0.1:2/ws",
                "wss://127.0.0.1:1/ws",
            ]
        );
        assert_eq!(c.url_text(), "wss://127.0.0.1:1/ws wss://127.0.0.1:2/ws");
        assert!(Args::try_parse_from(["sigload"]).is_err());
    }
}
