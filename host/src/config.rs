//! Operator configuration: every flag has an environment fallback and shows
//! in `--help`. Flag names are a stable interface: add, never rename.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "host",
    version,
    about = "WebRTC Chat: HTTPS web app, WSS signaling, STUN/TURN and WebAssembly policies in one binary"
)]
pub struct Config {
    /// TOML file of options (keys are the flag names without "--", e.g.
    /// https-port = 443); flags and environment variables override it.
    #[arg(long, env = "WEBRTC_CHAT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on for HTTPS/WSS.
    #[arg(long, env = "WEBRTC_CHAT_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// Port for HTTPS and WSS signaling (443 needs root or CAP_NET_BIND_SERVICE).
    #[arg(long, env = "WEBRTC_CHAT_HTTPS_PORT", default_value_t = 8443)]
    pub https_port: u16,

    /// Directory watched for drop-in policy components (*.wasm).
    #[arg(long, env = "WEBRTC_CHAT_PLUGINS_DIR", default_value = "plugins")]
    pub plugins_dir: PathBuf,

    /// Room capacity the default policy applies (policies read it as "room-max").
    #[arg(long, env = "WEBRTC_CHAT_ROOM_MAX", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub room_max: u32,

    /// Directory with fullchain.pem + privkey.pem (certbot live/), or cert1.pem,
    /// chain1.pem and privkey1.pem; a self-signed certificate is used when they are absent.
    #[arg(long, env = "WEBRTC_CHAT_SSL_DIR", default_value = "ssl")]
    pub ssl_dir: PathBuf,

    /// Directory served at /.well-known/ (e.g. ACME http-01 challenges, assetlinks.json).
    #[arg(
        long,
        env = "WEBRTC_CHAT_WELL_KNOWN_DIR",
        default_value = ".well-known"
    )]
    pub well_known_dir: PathBuf,

    /// Largest accepted signaling frame in bytes; larger frames close the socket with 1009.
    #[arg(long, env = "WEBRTC_CHAT_MAX_FRAME_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u32).range(256..=16 * 1024 * 1024))]
    pub max_frame_bytes: u32,

    /// Frames queued for one slow receiver before it is disconnected.
    #[arg(long, env = "WEBRTC_CHAT_SEND_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub send_queue: u32,

    /// Bytes queued for one slow receiver before it is disconnected (at least twice --max-frame-bytes).
    #[arg(long, env = "WEBRTC_CHAT_SEND_QUEUE_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(512..=1024 * 1024 * 1024))]
    pub send_queue_bytes: u32,

    /// MiB queued for all receivers together; past it, the receivers with the largest backlogs are disconnected.
    #[arg(long, env = "WEBRTC_CHAT_SEND_QUEUE_TOTAL_MIB", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1024 * 1024))]
    pub send_queue_total_mib: u32,

    /// Messages per second one session may send (token bucket); 0 turns the limit off.
    #[arg(long, env = "WEBRTC_CHAT_RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,

    /// Burst of the per-session rate limit: messages a session may send at once.
    #[arg(long, env = "WEBRTC_CHAT_RATE_BURST", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: u32,

    /// Bytes per second one session's frames may deliver to others, counted once per
    /// recipient (an offer to 9 members costs 9 times its size); the burst is half of
    /// --send-queue-bytes. Over it → error rateLimited, persisting → close 1008; 0 turns the limit off.
    #[arg(long, env = "WEBRTC_CHAT_RATE_LIMIT_BYTES", default_value_t = 256 * 1024)]
    pub rate_limit_bytes: u32,

    /// Simultaneous connections from one IP address; 0 turns the limit off.
    #[arg(long, env = "WEBRTC_CHAT_MAX_CONNS_PER_IP", default_value_t = 50)]
    pub max_conns_per_ip: u32,

    /// Open connections in total (HTTP and WebSocket); 0 turns the limit off.
    #[arg(long, env = "WEBRTC_CHAT_MAX_CONNS", default_value_t = 60_000)]
    pub max_conns: u32,

    /// Signaling sessions in total; 0 turns the limit off.
    #[arg(long, env = "WEBRTC_CHAT_MAX_SESSIONS", default_value_t = 50_000)]
    pub max_sessions: u32,

    /// Rooms in total; 0 turns the limit off.
    #[arg(long, env = "WEBRTC_CHAT_MAX_ROOMS", default_value_t = 20_000)]
    pub max_rooms: u32,

    /// Origins allowed to open the signaling socket, comma-separated
    /// (e.g. https://chat.example.com), or * for any. Default: the page's own origin only.
    #[arg(long, env = "WEBRTC_CHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Address for /metrics (Prometheus text) and /healthz over plain HTTP; "off" disables it.
    #[arg(
        long,
        env = "WEBRTC_CHAT_METRICS_ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_addr: String,

    /// Reverse proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed;
    /// from anyone else the header is ignored.
    #[arg(long, env = "WEBRTC_CHAT_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<ipnet::IpNet>,

    /// Also listen for plain HTTP on this port (e.g. 80): redirects to HTTPS and serves
    /// /.well-known/ (ACME http-01 challenges). Off by default.
    #[arg(long, env = "WEBRTC_CHAT_HTTP_PORT")]
    pub http_port: Option<u16>,

    /// STUN/TURN port, UDP and TCP.
    #[arg(long, env = "WEBRTC_CHAT_TURN_PORT", default_value_t = 3478)]
    pub turn_port: u16,

    /// TURN-over-TLS port, used when a real certificate is in --ssl-dir.
    #[arg(long, env = "WEBRTC_CHAT_TURN_TLS_PORT", default_value_t = 5349)]
    pub turn_tls_port: u16,

    /// Address TURN listens on and opens relay sockets on (default: --bind).
    #[arg(long, env = "WEBRTC_CHAT_TURN_LISTEN")]
    pub turn_listen: Option<IpAddr>,

    /// Shared secret of the short-lived TURN credentials (TURN REST API, as
    /// coturn's use-auth-secret); a random one is made at start when unset.
    #[arg(long, env = "WEBRTC_CHAT_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// Allow relaying to loopback peers (tests and single-machine setups only).
    #[arg(long, env = "WEBRTC_CHAT_TURN_ALLOW_LOOPBACK")]
    pub turn_allow_loopback: bool,

    /// Private networks TURN may relay to, comma-separated CIDRs (e.g. 192.168.1.0/24 for a LAN).
    #[arg(long, env = "WEBRTC_CHAT_TURN_ALLOW_PEERS", value_delimiter = ',')]
    pub turn_allow_peers: Vec<ipnet::IpNet>,

    /// TURN realm.
    #[arg(long, env = "WEBRTC_CHAT_TURN_REALM", default_value = "webrtc-chat")]
    pub turn_realm: String,

    /// Public address to advertise for relays, for hosts behind NAT.
    #[arg(long, env = "WEBRTC_CHAT_TURN_PUBLIC_IP")]
    pub turn_public_ip: Option<IpAddr>,

    /// Relay port range MIN-MAX (open it in the firewall); default any.
    #[arg(long, env = "WEBRTC_CHAT_TURN_RELAY_PORTS", value_parser = parse_port_range)]
    pub turn_relay_ports: Option<(u16, u16)>,

    /// Host name put in ICE server URLs (default: the name the browser used to reach the page).
    #[arg(long, env = "WEBRTC_CHAT_TURN_HOST")]
    pub turn_host: Option<String>,

    /// Seconds a session's TURN credential stays valid after its signaling socket ends (reconnects).
    #[arg(long, env = "WEBRTC_CHAT_TURN_GRACE_SECS", default_value_t = 30)]
    pub turn_grace_secs: u64,

    /// TURN allocations one signaling session may hold, whatever credential it uses.
    #[arg(long, env = "WEBRTC_CHAT_TURN_QUOTA_PER_SESSION", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub turn_quota_per_session: u32,

    /// TURN allocations one client IPv4 address or IPv6 /64 may hold.
    #[arg(long, env = "WEBRTC_CHAT_TURN_QUOTA_PER_IP", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub turn_quota_per_ip: u32,

    /// TURN allocations in total.
    #[arg(long, env = "WEBRTC_CHAT_TURN_QUOTA_TOTAL", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub turn_quota_total: u32,

    /// Kbit/s one TURN allocation may relay, both directions together; 0 turns the cap off.
    #[arg(long, env = "WEBRTC_CHAT_TURN_BANDWIDTH_KBPS", default_value_t = 8000)]
    pub turn_bandwidth_kbps: u32,

    /// UDP sockets on the TURN port, each read by its own task (SO_REUSEPORT spreads clients across them); 0 = one per CPU core.
    #[arg(long, env = "WEBRTC_CHAT_TURN_UDP_SOCKETS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=256))]
    pub turn_udp_sockets: u16,

    /// Do not run the built-in STUN/TURN server (e.g. with an external coturn, see --turn-external).
    #[arg(long, env = "WEBRTC_CHAT_NO_TURN")]
    pub no_turn: bool,

    /// With --no-turn: an external TURN server HOST:PORT using --turn-secret (coturn use-auth-secret).
    #[arg(
        long,
        env = "WEBRTC_CHAT_TURN_EXTERNAL",
        requires = "no_turn",
        requires = "turn_secret"
    )]
    pub turn_external: Option<String>,

    /// Deadline of one policy call in milliseconds of CPU time; a policy that computes longer is stopped and fails closed.
    #[arg(long, env = "WEBRTC_CHAT_POLICY_DEADLINE_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub policy_deadline_ms: u32,

    /// Linear memory cap of one policy instance in MiB.
    #[arg(long, env = "WEBRTC_CHAT_POLICY_MEMORY_MIB", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub policy_memory_mib: u32,

    /// Directory for precompiled policy components (default: $XDG_CACHE_HOME/webrtc-chat or ~/.cache/webrtc-chat).
    #[arg(long, env = "WEBRTC_CHAT_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Redis of a cluster, redis://HOST:PORT[/DB]: hosts given the same one serve
    /// as one (any client on any host; see docs/cluster.md). Off by default: one host.
    #[arg(long, env = "WEBRTC_CHAT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Log filter (tracing syntax), e.g. "info" or "host=debug".
    #[arg(long, env = "WEBRTC_CHAT_LOG", default_value = "info,turn=off")]
    pub log: String,
}

impl Config {
    /// Flags, then environment, then the `--config` file (if any): the file
    /// fills in what neither of the others set. Errors say which key of
    /// which file is wrong.
    pub fn load() -> Result<Self, String> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let first = Config::try_parse_from(&args).map_err(|e| e.to_string());
        let Ok(first) = first else {
            // --help, --version and bad flags: clap's own message and exit.
            Config::parse_from(&args);
            unreachable!("clap exits on a parse error");
        };
        let Some(path) = first.config.clone() else {
            return Ok(first);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        let defaults = file_as_env(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (env, value) in defaults {
            if std::env::var_os(&env).is_none() {
                // SAFETY: start-up, before any thread is spawned.
                unsafe { std::env::set_var(&env, value) };
            }
        }
        Config::try_parse_from(&args).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Where precompiled components are kept, if anywhere.
    pub fn policy_cache_dir(&self) -> Option<PathBuf> {
        self.cache_dir.clone().or_else(default_cache_dir)
    }
}

/// `$XDG_CACHE_HOME/webrtc-chat`, else `~/.cache/webrtc-chat`: where
/// precompiled policy components are kept unless `--cache-dir` says.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("webrtc-chat"))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| "expected MIN-MAX, e.g. 49152-65535".to_string())?;
    let lo: u16 = lo.trim().parse().map_err(|e| format!("{e}"))?;
    let hi: u16 = hi.trim().parse().map_err(|e| format!("{e}"))?;
    if lo == 0 || lo > hi {
        return Err("expected 1 <= MIN <= MAX".into());
    }
    Ok((lo, hi))
}

/// Maps a TOML config file to the environment variables of the flags it
/// names, validating the keys (unknown keys are errors, not ignored).
fn file_as_env(text: &str) -> Result<Vec<(String, String)>, String> {
    use clap::CommandFactory;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message()))?;
    let command = Config::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| format!("unknown option \"{key}\" (the keys are the flag names of --help, without \"--\")"))?;
        let env = arg
            .get_env()
            .and_then(|e| e.to_str())
            .ok_or_else(|| format!("option \"{key}\" cannot be set from a file"))?;
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            _ => Err(format!(
                "option \"{key}\" needs a string, number or boolean"
            )),
        };
        let value = match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => scalar(other)?,
        };
        out.push((env.to_string(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_map_to_flag_envs() {
        let env = file_as_env(
            "https-port = 443\nturn-allow-loopback = true\nallowed-origins = [\"https://a\", \"https://b\"]\n",
        )
        .unwrap();
        assert!(env.contains(&("WEBRTC_CHAT_HTTPS_PORT".into(), "443".into())));
        assert!(env.contains(&("WEBRTC_CHAT_TURN_ALLOW_LOOPBACK".into(), "true".into())));
        let cluster = file_as_env("redis-url = \"redis://10.0.0.5:6379/1\"\n").unwrap();
        assert!(cluster.contains(&(
            "WEBRTC_CHAT_REDIS_URL".into(),
            "redis://10.0.0.5:6379/1".into()
        )));
        assert!(env.contains(&(
            "WEBRTC_CHAT_ALLOWED_ORIGINS".into(),
            "https://a,https://b".into()
        )));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(
            file_as_env("htps-port = 1")
                .unwrap_err()
                .contains("unknown option \"htps-port\"")
        );
        assert!(
            file_as_env("https-port = ")
                .unwrap_err()
                .contains("not valid TOML")
        );
        assert!(
            file_as_env("room-max = { a = 1 }")
                .unwrap_err()
                .contains("room-max")
        );
    }
}
