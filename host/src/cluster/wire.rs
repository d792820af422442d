//! What hosts say to each other over their pub/sub channels. Each message
//! names the host that sent it (`src`) and the session it is about (`s`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "k")]
pub enum Msg {
    /// Edge → owner: a client frame of session `s`, as the client sent it;
    /// `h` is the Host header the client connected with (ICE server URLs);
    /// `q` numbers the session's relayed frames (its `Ack` carries it back).
    #[serde(rename = "f")]
    Frame {
        src: String,
        s: String,
        q: u64,
        h: String,
        t: String,
    },
    /// Owner → edge: frame `q` of session `s` was handled; `room` is where
    /// the session is now on the owner (and `name` its user name there).
    #[serde(rename = "a")]
    Ack {
        src: String,
        s: String,
        q: u64,
        room: Option<String>,
        name: Option<String>,
    },
    /// New owner → edge: the session's room was taken over; its frames go
    /// to `src` from now on.
    #[serde(rename = "o")]
    Owner {
        src: String,
        s: String,
        room: String,
        name: String,
    },
    /// Owner → edge: a frame for the client.
    #[serde(rename = "d")]
    Deliver { src: String, s: String, t: String },
    /// Owner → edge: close the client's socket.
    #[serde(rename = "c")]
    Close {
        src: String,
        s: String,
        code: u16,
        reason: String,
    },
    /// Edge → owner: the session's socket ended.
    #[serde(rename = "g")]
    Gone { src: String, s: String },
    /// Edge → owner: the session joined a room elsewhere; take it out of
    /// yours.
    #[serde(rename = "l")]
    Leave { src: String, s: String },
}

impl Msg {
    pub fn src(&self) -> &str {
        match self {
            Msg::Frame { src, .. }
            | Msg::Ack { src, .. }
            | Msg::Owner { src, .. }
            | Msg::Deliver { src, .. }
            | Msg::Close { src, .. }
            | Msg::Gone { src, .. }
            | Msg::Leave { src, .. } => src,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = Msg::Frame {
            src: "h".into(),
            s: "s".into(),
            q: 7,
            h: "localhost".into(),
            t: r#"{"type":"offer","data":"x\n"}"#.into(),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.starts_with(r#"{"k":"f""#), "{text}");
        assert_eq!(serde_json::from_str::<Msg>(&text).unwrap(), m);
        assert!(serde_json::from_str::<Msg>(r#"{"k":"zz"}"#).is_err());
    }
}
