//! What hosts say to each other over their pub/sub channels. Each message
//! names the host that sent it (`src`) and that host's epoch (`e`); most are
//! about one session (`s`).

use serde::{Deserialize, Serialize};

/// What this version of the messages adds, carried as `Envelope::v`: 1
/// answers errands (`Msg::Undo`, and `Leave` / `Gone` numbered `u`). A host
/// from before sends none (0): it is sent what it reads, and no answer is
/// waited for (a rolling upgrade mixes the two).
pub const REVISION: u32 = 1;

/// One message between hosts, as published.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub src: String,
    /// The sender's epoch: raised each time the sender finds its heartbeat
    /// had lapsed (it may have been declared dead meanwhile). A host
    /// declared dead at epoch N is heard again from epoch N+1 on; what it
    /// sent at N or before is stale and dropped.
    #[serde(default)]
    pub e: u64,
    /// The sender's `REVISION` (0: from before revisions).
    #[serde(default)]
    pub v: u32,
    #[serde(flatten)]
    pub msg: Msg,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "k")]
pub enum Msg {
    /// Edge → owner: a client frame of session `s`, as the client sent it;
    /// `h` is the Host header the client connected with (ICE server URLs);
    /// `q` numbers the session's relayed frames (its `Ack` carries it back).
    #[serde(rename = "f")]
    Frame {
        s: String,
        q: u64,
        h: String,
        t: String,
    },
    /// Owner → edge: frame `q` of session `s` was handled; `room` is where
    /// the session is now on the owner (and `name` its user name there).
    #[serde(rename = "a")]
    Ack {
        s: String,
        q: u64,
        room: Option<String>,
        name: Option<String>,
    },
    /// New owner → edge: the session's room was taken over; its frames go
    /// to `src` from now on.
    #[serde(rename = "o")]
    Owner {
        s: String,
        room: String,
        name: String,
    },
    /// Owner → edge: a frame for the client.
    #[serde(rename = "d")]
    Deliver { s: String, t: String },
    /// Owner → edge: close the client's socket.
    #[serde(rename = "c")]
    Close {
        s: String,
        code: u16,
        reason: String,
    },
    /// Edge → owner: the session's socket ended. With `u`, the owner
    /// answers `Ack { q: u }` (the edge sends it again until then).
    #[serde(rename = "g")]
    Gone {
        s: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        u: Option<u64>,
    },
    /// Edge → owner: the session joined a room elsewhere; take it out of
    /// yours. `u` as for `Gone`.
    #[serde(rename = "l")]
    Leave {
        s: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        u: Option<u64>,
    },
    /// Edge → owner: frame `q` of session `s` was answered `error
    /// unavailable` (its `Ack` never came): if it changed the session's
    /// room, put the session back where it was before it. Sent again until
    /// the owner answers with `Ack { q: u }` (its room now), so `u`
    /// numbers this request, not the frame. An owner that never handled
    /// `q` (or has no such session) changes nothing and answers all the
    /// same.
    #[serde(rename = "u")]
    Undo { s: String, q: u64, u: u64 },
    /// A host that may have been declared dead (its heartbeat lapsed), or
    /// that finds another host holding the lease of a room it serves →
    /// the room's owner: put session `s` (whose socket is on host `edge`)
    /// back into `room` as `name`. `seen` lists the members (id, user name)
    /// its client knows of, when the sender knows them: the client is told
    /// who came and went meanwhile.
    #[serde(rename = "r")]
    Rejoin {
        s: String,
        edge: String,
        room: String,
        name: String,
        seen: Option<Vec<(String, String)>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = Envelope {
            src: "h".into(),
            e: 3,
            v: REVISION,
            msg: Msg::Frame {
                s: "s".into(),
                q: 7,
                h: "localhost".into(),
                t: r#"{"type":"offer","data":"x\n"}"#.into(),
            },
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains(r#""k":"f""#), "{text}");
        assert!(text.contains(r#""e":3"#), "{text}");
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), m);
        assert!(serde_json::from_str::<Envelope>(r#"{"src":"h","k":"zz"}"#).is_err());
        let rejoin = Envelope {
            src: "h".into(),
            e: 1,
            v: REVISION,
            msg: Msg::Rejoin {
                s: "s".into(),
                edge: "h".into(),
                room: "r".into(),
                name: "n".into(),
                seen: Some(vec![("a".into(), "alice".into())]),
            },
        };
        let text = serde_json::to_string(&rejoin).unwrap();
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), rejoin);
        let undo = Envelope {
            src: "h".into(),
            e: 2,
            v: REVISION,
            msg: Msg::Undo {
                s: "s".into(),
                q: 7,
                u: 9,
            },
        };
        let text = serde_json::to_string(&undo).unwrap();
        assert!(text.contains(r#""k":"u""#), "{text}");
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), undo);
        // A `Gone` without a number (as hosts before it sent) still reads.
        let gone: Envelope = serde_json::from_str(r#"{"src":"h","e":1,"k":"g","s":"x"}"#).unwrap();
        assert_eq!(gone.v, 0);
        assert_eq!(
            gone.msg,
            Msg::Gone {
                s: "x".into(),
                u: None
            }
        );
    }
}
