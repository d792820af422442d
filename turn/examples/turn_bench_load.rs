//! Load generator for scripts/turn-bench.sh's saturation part:
//! `turn-bench-load SERVER SECRET USER PID RATES SECS [PAIRS] [LEN] [BURST]`.
//!
//! Makes PAIRS pairs of UDP clients on the TURN server at SERVER (TURN
//! REST credential `<expiry>:USER` from SECRET, realm taken from the
//! server's 401: the same scheme for chat-turn and coturn's
//! use-auth-secret). Each client allocates and binds channel 0x4000 to its
//! twin's relayed address, so every packet crosses two allocations of the
//! server (relay to relay, as `turnutils_uclient -y`). Then, for each rate
//! of RATES (comma-separated, relayed packets per second offered), it
//! sends LEN-byte ChannelData for SECS seconds, in bursts of BURST packets
//! per client (as a video frame's packets leave), and counts what the
//! twins receive. Sending costs the generator little (a burst is one
//! segmented datagram, UDP GSO, when the kernel offers it), so one core of
//! it can drive a server core into saturation.
//!
//! Per rate it prints one line: `load offered=.. sent=.. received=..
//! secs=.. delivered_pps=.. loss_pct=.. server_cpu_pct=.. cpu_us_per_pkt=..
//! client_drops=..`: the server's CPU (all threads of PID, from schedstat)
//! as a share of one core while sending, and per delivered packet over the
//! step and a 300 ms drain; `client_drops`, datagrams the kernel dropped
//! at the generator's own sockets (full receive buffers: loss that is the
//! generator's, not the server's). `sent` below `offered × secs` means the
//! generator itself could not keep up. Not a test: it measures.

use std::io::{Error, ErrorKind};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stun::agent::TransactionId;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE, METHOD_CHANNEL_BIND,
    METHOD_REFRESH, Message, MessageType, Setter,
};
use stun::textattrs::{Nonce, Realm, Username};
use turn::proto::PROTO_UDP;
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CHANNEL: u16 = 0x4000;

/// One TURN client: its socket (connected to the server) and what signs
/// its requests.
struct Client {
    sock: UdpSocket,
    user: String,
    realm: Realm,
    nonce: Nonce,
    mi: MessageIntegrity,
    relayed: SocketAddr,
}

fn exchange(sock: &UdpSocket, setters: &[Box<dyn Setter>]) -> Result<Message> {
    let mut m = Message::new();
    m.build(setters)?;
    let mut buf = vec![0u8; 1500];
    for _ in 0..5 {
        sock.send(&m.raw)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            let mut r = Message {
                raw: buf[..n].to_vec(),
                ..Default::default()
            };
            if r.decode().is_ok() && r.transaction_id == m.transaction_id {
                return Ok(r);
            }
        }
    }
    Err(Error::new(ErrorKind::TimedOut, "no answer from the TURN server").into())
}

fn check(r: &Message, what: &str) -> Result<()> {
    if r.typ.class == CLASS_SUCCESS_RESPONSE {
        return Ok(());
    }
    let mut code = ErrorCodeAttribute::default();
    let _ = code.get_from(r);
    Err(format!(
        "{what} refused: {} {}",
        code.code.0,
        String::from_utf8_lossy(&code.reason)
    )
    .into())
}

impl Client {
    fn new(server: SocketAddr, secret: &str, user: &str) -> Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        let user = format!("{expiry}:{user}");
        let pass = chat_turn::creds::rest_password(secret.as_bytes(), &user);
        let r = exchange(
            &sock,
            &[
                Box::new(TransactionId::new()),
                Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
                Box::new(RequestedTransport {
                    protocol: PROTO_UDP,
                }),
            ],
        )?;
        let mut nonce = Nonce::new(stun::attributes::ATTR_NONCE, String::new());
        nonce.get_from(&r)?;
        let mut realm = Realm::new(stun::attributes::ATTR_REALM, String::new());
        realm.get_from(&r)?;
        let mi = MessageIntegrity::new_long_term_integrity(user.clone(), realm.text.clone(), pass);
        let mut c = Self {
            sock,
            user,
            realm,
            nonce,
            mi,
            relayed: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let r = c.signed(
            METHOD_ALLOCATE,
            vec![Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })],
        )?;
        check(&r, "Allocate")?;
        let mut relayed = RelayedAddress::default();
        relayed.get_from(&r)?;
        c.relayed = SocketAddr::new(relayed.ip, relayed.port);
        Ok(c)
    }

    fn signed(
        &self,
        method: stun::message::Method,
        extra: Vec<Box<dyn Setter>>,
    ) -> Result<Message> {
        let mut s: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        s.extend(extra);
        s.push(Box::new(Username::new(
            stun::attributes::ATTR_USERNAME,
            self.user.clone(),
        )));
        s.push(Box::new(self.realm.clone()));
        s.push(Box::new(self.nonce.clone()));
        s.push(Box::new(self.mi.clone()));
        exchange(&self.sock, &s)
    }

    fn bind(&self, peer: SocketAddr) -> Result<()> {
        let r = self.signed(
            METHOD_CHANNEL_BIND,
            vec![
                Box::new(ChannelNumber(CHANNEL)),
                Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
            ],
        )?;
        check(&r, "ChannelBind")
    }

    /// Deletes the allocation (Refresh with lifetime 0); best effort.
    fn release(&self) {
        let _ = self.signed(
            METHOD_REFRESH,
            vec![Box::new(Lifetime(Duration::from_secs(0)))],
        );
    }
}

/// CPU time of every thread of `pid`, in ns (schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Datagrams the kernel dropped at the sockets bound to `ports` (the
/// `drops` column of /proc/net/udp and udp6).
fn drops(ports: &[u16]) -> u64 {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            ports
                .contains(&port)
                .then(|| cols.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// True when the kernel takes UDP_SEGMENT (GSO) on `sock`.
fn gso_supported(sock: &UdpSocket) -> bool {
    let size: libc::c_int = 1500;
    // SAFETY: a valid socket and option value.
    let on = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if on {
        let off: libc::c_int = 0;
        // SAFETY: as above.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&raw const off).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    on
}

/// Sends `burst` frames of `frame` bytes each from `buf` on connected
/// `sock`: one segmented datagram with GSO, else one `sendmmsg`. Returns
/// how many frames the kernel took.
fn send_burst(sock: &UdpSocket, buf: &[u8], frame: usize, burst: usize, gso: bool) -> usize {
    let fd = sock.as_raw_fd();
    if gso && burst > 1 {
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: frame * burst,
        };
        let mut control = [0u64; 4];
        // SAFETY: msghdr is plain old data, for which all zeroes is valid.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_* on a header whose control buffer (32 bytes,
        // aligned) holds one u16 control message.
        unsafe {
            h.msg_controllen = libc::CMSG_SPACE(2) as _;
            let c = libc::CMSG_FIRSTHDR(&h);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(2) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), frame as u16);
        }
        // SAFETY: the header points at live buffers for the call.
        let r = unsafe { libc::sendmsg(fd, &h, 0) };
        return if r > 0 { burst } else { 0 };
    }
    let mut iovs: Vec<libc::iovec> = (0..burst)
        .map(|k| libc::iovec {
            iov_base: buf[k * frame..].as_ptr() as *mut libc::c_void,
            iov_len: frame,
        })
        .collect();
    // SAFETY: as above.
    let mut hdrs: Vec<libc::mmsghdr> = (0..burst).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the headers point at live buffers for the call.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), burst as libc::c_uint, 0) };
    r.max(0) as usize
}

/// Counts the datagrams arriving on `socks` until `stop`.
fn receive(socks: Vec<UdpSocket>, received: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    const BATCH: usize = 64;
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut bufs = vec![[0u8; 2048]; BATCH];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: fds is a live array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        for p in fds.iter_mut().filter(|p| p.revents != 0) {
            p.revents = 0;
            loop {
                let mut iovs: Vec<libc::iovec> = bufs
                    .iter_mut()
                    .map(|b| libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.len(),
                    })
                    .collect();
                // SAFETY: as above.
                let mut hdrs: Vec<libc::mmsghdr> =
                    (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
                for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
                    h.msg_hdr.msg_iov = iov;
                    h.msg_hdr.msg_iovlen = 1;
                }
                // SAFETY: the headers point at live buffers for the call.
                let r = unsafe {
                    libc::recvmmsg(
                        p.fd,
                        hdrs.as_mut_ptr(),
                        BATCH as libc::c_uint,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if r <= 0 {
                    break;
                }
                // ChannelData from the server: count the frames.
                let frames = hdrs[..r as usize]
                    .iter()
                    .zip(&bufs)
                    .filter(|(h, b)| h.msg_len >= 4 && (0x40..0x80).contains(&b[0]))
                    .count();
                received.fetch_add(frames as u64, Ordering::Relaxed);
                if (r as usize) < BATCH {
                    break;
                }
            }
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        return Err(
            "usage: turn-bench-load SERVER SECRET USER PID RATES SECS [PAIRS] [LEN] [BURST]".into(),
        );
    }
    let server: SocketAddr = args[0].parse()?;
    let (secret, user) = (&args[1], &args[2]);
    let pid: u32 = args[3].parse()?;
    let rates: Vec<u64> = args[4]
        .split(',')
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    let secs: f64 = args[5].parse()?;
    let pairs: usize = args.get(6).map_or(Ok(8), |a| a.parse())?;
    let len: usize = args.get(7).map_or(Ok(500), |a| a.parse())?;
    let burst: usize = args.get(8).map_or(Ok(8), |a| a.parse())?;
    if !(1..=64).contains(&burst) || len == 0 || len > 1400 {
        return Err("BURST must be 1..=64 and LEN 1..=1400".into());
    }
    if (4 + len) * burst > 65_000 {
        return Err(
            "BURST x (LEN + 4) must stay under 65,000 bytes (one segmented datagram)".into(),
        );
    }

    let mut clients = Vec::new();
    for _ in 0..2 * pairs {
        clients.push(Client::new(server, secret, user)?);
    }
    for p in 0..pairs {
        let (a, b) = (&clients[2 * p], &clients[2 * p + 1]);
        a.bind(b.relayed)?;
        b.bind(a.relayed)?;
    }
    // ChannelData: channel, length, payload (a multiple of 4: no padding).
    let frame = 4 + len.div_ceil(4) * 4;
    let mut burst_buf = vec![0u8; frame * burst];
    for f in burst_buf.chunks_mut(frame) {
        f[..2].copy_from_slice(&CHANNEL.to_be_bytes());
        f[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    }
    let gso = gso_supported(&clients[0].sock);
    let ports: Vec<u16> = clients
        .iter()
        .map(|c| c.sock.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    let senders: Vec<UdpSocket> = clients
        .iter()
        .map(|c| c.sock.try_clone())
        .collect::<std::io::Result<_>>()?;
    for s in &senders {
        s.set_nonblocking(true)?;
    }
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let socks = senders
            .iter()
            .map(UdpSocket::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
        std::thread::spawn(move || receive(socks, received, stop))
    };
    eprintln!(
        "turn-bench-load: {} allocations in {pairs} pairs, {len}-byte payloads, bursts of {burst}, GSO {}",
        2 * pairs,
        if gso { "on" } else { "off" }
    );
    for rate in rates {
        let r0 = received.load(Ordering::Relaxed);
        let d0 = drops(&ports);
        let c0 = cpu_ns(pid);
        let start = Instant::now();
        let (mut sent, mut next) = (0u64, 0usize);
        loop {
            let elapsed = start.elapsed().as_secs_f64();
            if elapsed >= secs {
                break;
            }
            let due = (rate as f64 * elapsed) as u64;
            if sent + burst as u64 > due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            while sent + burst as u64 <= due {
                sent += send_burst(&senders[next], &burst_buf, frame, burst, gso) as u64;
                next = (next + 1) % senders.len();
                if start.elapsed().as_secs_f64() >= secs {
                    break;
                }
            }
        }
        let wall = start.elapsed().as_secs_f64();
        // A thread that ended takes its schedstat with it: never below 0.
        let sending = cpu_ns(pid).saturating_sub(c0);
        std::thread::sleep(Duration::from_millis(300));
        let cpu = cpu_ns(pid).saturating_sub(c0);
        let got = received.load(Ordering::Relaxed) - r0;
        let loss = if sent == 0 {
            0.0
        } else {
            sent.saturating_sub(got) as f64 * 100.0 / sent as f64
        };
        let per_pkt = if got == 0 {
            0.0
        } else {
            cpu as f64 / 1e3 / got as f64
        };
        println!(
            "load offered={rate} sent={sent} received={got} secs={wall:.2} delivered_pps={:.0} loss_pct={loss:.2} server_cpu_pct={:.1} cpu_us_per_pkt={per_pkt:.2} client_drops={}",
            got as f64 / wall,
            sending as f64 / 1e7 / wall,
            drops(&ports).saturating_sub(d0),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    for c in &clients {
        let _ = c.sock.set_nonblocking(false);
        c.release();
    }
    Ok(())
}
