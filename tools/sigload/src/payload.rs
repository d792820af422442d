//! Frames the tool sends and the parts of incoming frames it reads.
//!
//! Load messages are ordinary `offer` / `answer` / `candidate` frames of
//! realistic shape and size; the tool's own bookkeeping rides inside `data`
//! as `"sl":{"s":<sender>,"q":<seq>|"qs":[<seq per room slot>],"t":<µs>}`,
//! which a server forwards untouched (protocol.md: data is any JSON).

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Offer,
    Answer,
    Candidate,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Offer => "offer",
            Kind::Answer => "answer",
            Kind::Candidate => "candidate",
        }
    }
}

/// Sequence numbers a frame carries.
#[derive(Debug, Clone, Copy)]
pub enum Seq<'a> {
    /// Unicast: the number for the one receiver.
    One(u64),
    /// Fan-out: the number for each room slot (the sender's own is unused).
    PerSlot(&'a [u64]),
}

/// A JSON-escaped SDP body to cut padding from (never cut inside an escape).
fn sdp_filler() -> &'static str {
    static FILLER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILLER.get_or_init(|| {
        let mut s = String::from(
            "v=0\\r\\no=- 4611731400430051336 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\n\
             a=group:BUNDLE 0 1\\r\\na=extmap-allow-mixed\\r\\na=msid-semantic: WMS stream\\r\\n",
        );
        let mut i = 0u32;
        while s.len() < 70_000 {
            let _ = write!(
                s,
                "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\\r\\nc=IN IP4 0.0.0.0\\r\\n\
                 a=rtcp:9 IN IP4 0.0.0.0\\r\\na=ice-ufrag:Xq{i:04}\\r\\na=ice-pwd:Ze7sQk3uWm1pLr9tYb2nVc{i:04}\\r\\n\
                 a=ice-options:trickle\\r\\na=fingerprint:sha-256 4F:2A:9C:11:7B:E0:3D:58:A6:C2:91:0E:\
                 77:B4:5F:D8:21:6A:C3:9E:04:BB:70:1D:E5:38:F2:6C:8A:93:57:C1\\r\\na=setup:actpass\\r\\n\
                 a=mid:{i}\\r\\na=sendrecv\\r\\na=rtcp-mux\\r\\na=rtpmap:111 opus/48000/2\\r\\n\
                 a=rtcp-fb:111 transport-cc\\r\\na=fmtp:111 minptime=10;useinbandfec=1\\r\\n\
                 a=ssrc:{ssrc} cname:sigloadCname{i:04}\\r\\n",
                ssrc = 1_000_000 + i
            );
            i += 1;
        }
        s
    })
}

fn candidate_filler() -> &'static str {
    static FILLER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILLER.get_or_init(|| " network-id 1 network-cost 10".repeat(2500))
}

/// `filler[..n]` without leaving a dangling backslash of an escape.
fn cut(filler: &str, n: usize) -> &str {
    let mut n = n.min(filler.len());
    while n > 0 && filler.as_bytes()[n - 1] == b'\\' {
        n -= 1;
    }
    &filler[..n]
}

fn write_marker(out: &mut String, sender: usize, seq: Seq<'_>, ts_us: u64) {
    let _ = write!(out, "\"sl\":{{\"s\":{sender},");
    match seq {
        Seq::One(q) => {
            let _ = write!(out, "\"q\":{q}");
        }
        Seq::PerSlot(qs) => {
            out.push_str("\"qs\":[");
            for (i, q) in qs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{q}");
            }
            out.push(']');
        }
    }
    let _ = write!(out, ",\"t\":{ts_us}}}");
}

/// One load frame of about `target_bytes` bytes (never less than its
/// fixed parts). `to` None = fan-out (offers only, per protocol.md).
pub fn build_frame(
    kind: Kind,
    to: Option<&str>,
    sender: usize,
    seq: Seq<'_>,
    ts_us: u64,
    target_bytes: usize,
) -> String {
    let mut out = String::with_capacity(target_bytes + 64);
    let _ = write!(out, "{{\"type\":\"{}\",", kind.name());
    if let Some(to) = to {
        // Session ids are server-made UUIDs; escape anyway for a foreign server.
        out.push_str("\"to\":");
        out.push_str(&serde_json::to_string(to).unwrap_or_else(|_| "\"\"".into()));
        out.push(',');
    }
    out.push_str("\"data\":{");
    match kind {
        Kind::Offer | Kind::Answer => {
            let _ = write!(out, "\"type\":\"{}\",", kind.name());
            write_marker(&mut out, sender, seq, ts_us);
            out.push_str(",\"sdp\":\"");
            let tail = "\"}}";
            let pad = target_bytes.saturating_sub(out.len() + tail.len());
            out.push_str(cut(sdp_filler(), pad));
            out.push_str(tail);
        }
        Kind::Candidate => {
            write_marker(&mut out, sender, seq, ts_us);
            let _ = write!(
                out,
                ",\"candidate\":\"candidate:842163049 1 udp 1677729535 127.0.0.1 {} typ srflx \
                 raddr 0.0.0.0 rport 0 generation 0 ufrag Xq01",
                40000 + sender % 20000
            );
            let tail = "\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0}}";
            let pad = target_bytes.saturating_sub(out.len() + tail.len());
            out.push_str(cut(candidate_filler(), pad));
            out.push_str(tail);
        }
    }
    out
}

pub fn login_frame(room: &str, username: &str) -> String {
    serde_json::json!({"type": "login", "data": {"roomrequest": room, "username": username}})
        .to_string()
}

/// The top level of any frame a server sends.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub from: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    #[serde(default)]
    pub message: Option<ErrorBody>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "errorType", default)]
    pub error_type: String,
}

/// The tool's marker inside a forwarded `data`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Marker {
    pub s: usize,
    #[serde(default)]
    pub q: Option<u64>,
    #[serde(default)]
    pub qs: Option<Vec<u64>>,
    pub t: u64,
}

impl Marker {
    /// The sequence number meant for the receiver in room slot `slot`.
    pub fn seq_for(&self, slot: usize) -> Option<u64> {
        match (&self.q, &self.qs) {
            (Some(q), _) => Some(*q),
            (None, Some(qs)) => qs.get(slot).copied().filter(|&q| q > 0),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct WithMarker {
    #[serde(default)]
    sl: Option<Marker>,
}

pub fn marker(data: &RawValue) -> Option<Marker> {
    serde_json::from_str::<WithMarker>(data.get()).ok()?.sl
}

/// What a `joined` frame tells: the own id, and the members if the server
/// lists them (an extension; servers may send only `data`).
#[derive(Debug, Deserialize)]
pub struct Joined {
    pub data: String,
    #[serde(default)]
    pub members: Option<Vec<Member>>,
}

#[derive(Debug, Deserialize)]
pub struct Member {
    #[serde(rename = "sessionId", default)]
    pub session_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(frame: &str) -> serde_json::Value {
        serde_json::from_str(frame).expect("valid JSON")
    }

    #[test]
    fn frames_have_requested_size_and_parse_back() {
        let id = "0b0e4a3e-8f6c-4c56-9d47-5b1b3a1d9f21";
        for (kind, size) in [
            (Kind::Offer, 4000),
            (Kind::Answer, 3333),
            (Kind::Candidate, 300),
        ] {
            for ts in [1u64, 123_456_789_012] {
                let f = build_frame(kind, Some(id), 17, Seq::One(42), ts, size);
                assert!(
                    f.len() <= size && f.len() + 2 >= size,
                    "{kind:?} {} vs {size}",
                    f.len()
                );
                let v = check(&f);
                assert_eq!(v["type"], kind.name());
                assert_eq!(v["to"], id);
                let inc: Incoming = serde_json::from_str(&f).unwrap();
                let m = marker(inc.data.unwrap()).unwrap();
                assert_eq!(
                    m,
                    Marker {
                        s: 17,
                        q: Some(42),
                        qs: None,
                        t: ts
                    }
                );
                assert_eq!(m.seq_for(3), Some(42));
            }
        }
    }

    #[test]
    fn fanout_offer_carries_per_slot_numbers() {
        let f = build_frame(Kind::Offer, None, 3, Seq::PerSlot(&[5, 0, 9]), 7, 3500);
        let v = check(&f);
        assert!(v.get("to").is_none());
        let inc: Incoming = serde_json::from_str(&f).unwrap();
        let m = marker(inc.data.unwrap()).unwrap();
        assert_eq!(
            (m.seq_for(0), m.seq_for(1), m.seq_for(2), m.seq_for(3)),
            (Some(5), None, Some(9), None)
        );
    }

    #[test]
    fn tiny_targets_still_make_valid_frames() {
        for size in [0, 10, 150, 151, 152, 153, 154] {
            check(&build_frame(
                Kind::Offer,
                Some("x"),
                0,
                Seq::One(1),
                1,
                size,
            ));
            check(&build_frame(
                Kind::Candidate,
                Some("x"),
                0,
                Seq::One(1),
                1,
                size,
            ));
        }
        // Every cut of the escaped SDP stays valid JSON.
        for size in 100..400 {
            check(&build_frame(
                Kind::Answer,
                Some("x"),
                0,
                Seq::One(1),
                1,
                size,
            ));
        }
    }

    #[test]
    fn incoming_shapes() {
        let inc: Incoming = serde_json::from_str(
            r#"{"type":"error","message":{"errorType":"full","errorText":"Room is full"}}"#,
        )
        .unwrap();
        assert_eq!(inc.message.unwrap().error_type, "full");
        let j: Joined = serde_json::from_str(r#"{"type":"joined","data":"abc"}"#).unwrap();
        assert_eq!((j.data.as_str(), j.members.is_none()), ("abc", true));
        let j: Joined = serde_json::from_str(
            r#"{"type":"joined","data":"abc","room":"r","members":[{"sessionId":"x","username":"u"}]}"#,
        )
        .unwrap();
        assert_eq!(j.members.unwrap()[0].session_id, "x");
        // A forwarded frame from another client (no marker) is not ours.
        let inc: Incoming =
            serde_json::from_str(r#"{"type":"offer","from":"z","data":{"sdp":"v=0"}}"#).unwrap();
        assert!(marker(inc.data.unwrap()).is_none());
        assert_eq!(
            check(&login_frame("r\"1", "u")),
            serde_json::json!({"type":"login","data":{"roomrequest":"r\"1","username":"u"}})
        );
    }
}
