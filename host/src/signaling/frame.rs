//! The wire format: one parse of a client frame into its parts, and the
//! rendering of every frame the host sends. `data` and unknown members stay
//! raw JSON text, so a forwarded frame is parsed once and serialised once.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Longest accepted `type` and `to`, in bytes.
const MAX_TYPE_LEN: usize = 64;
const MAX_TO_LEN: usize = 128;
/// Most distinct members besides `type`, `to`, `data`, `from` and
/// `username` a frame may carry. Bounding them keeps the duplicate check
/// (a scan of those already kept) linear in the frame's size.
pub const MAX_EXTRAS: usize = 32;
/// Deepest nesting of arrays and objects inside `data` or another member:
/// receivers (browsers, policies) parse it recursively.
pub const MAX_DEPTH: usize = 64;

/// A client frame, borrowed from the received text (strings are copied
/// only when they contain escapes).
#[derive(Debug)]
pub struct Inbound<'a> {
    pub kind: Cow<'a, str>,
    pub to: Option<Cow<'a, str>>,
    pub data: Option<&'a RawValue>,
    /// Other top-level members, in order, without `from`/`username` (the
    /// host sets those) and without duplicates.
    pub extras: Vec<(Cow<'a, str>, &'a RawValue)>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("The frame is not valid JSON.")]
    NotJson,
    #[error("The frame must be a JSON object.")]
    NotObject,
    #[error("The frame needs a string \"type\" of at most 64 bytes.")]
    BadType,
    #[error("\"to\" must be a session id string.")]
    BadTo,
    #[error("The frame has more than 32 members besides type, to and data.")]
    TooManyMembers,
    #[error("The frame nests arrays or objects deeper than 64 levels.")]
    TooDeep,
}

pub fn parse(text: &str) -> Result<Inbound<'_>, FrameError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let too_many = std::cell::Cell::new(false);
    let members = (&mut de)
        .deserialize_any(MembersVisitor {
            too_many: &too_many,
        })
        .map_err(|e| {
            if too_many.get() {
                FrameError::TooManyMembers
            } else {
                classify(e)
            }
        })?;
    de.end().map_err(|_| FrameError::NotJson)?;
    let Members {
        kind,
        to,
        data,
        extras,
    } = members.ok_or(FrameError::NotObject)?;
    let nested = data.into_iter().chain(extras.iter().map(|(_, v)| *v));
    if nested.into_iter().any(|v| depth(v.get()) > MAX_DEPTH) {
        return Err(FrameError::TooDeep);
    }
    let kind = kind
        .and_then(json_str)
        .filter(|k| !k.is_empty() && k.len() <= MAX_TYPE_LEN)
        .ok_or(FrameError::BadType)?;
    let to = match to {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(
            json_str(raw)
                .filter(|t| t.len() <= MAX_TO_LEN)
                .ok_or(FrameError::BadTo)?,
        ),
    };
    Ok(Inbound {
        kind,
        to,
        data,
        extras,
    })
}

/// How deeply arrays and objects nest in `json` (valid JSON text), in one
/// pass without recursion.
fn depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A JSON string's value: borrowed from the frame unless it has escapes.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<JsonStr>(raw.get()).ok().map(|s| s.0)
}

/// A JSON string, borrowed from the input unless it has escapes (which
/// must be decoded into a copy).
struct JsonStr<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for JsonStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<JsonStr<'de>, E> {
                Ok(JsonStr(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<JsonStr<'de>, E> {
                Ok(JsonStr(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(StrVisitor)
    }
}

fn classify(e: serde_json::Error) -> FrameError {
    match e.classify() {
        serde_json::error::Category::Data => FrameError::NotObject,
        _ => FrameError::NotJson,
    }
}

/// The top-level members of a frame, raw.
struct Members<'a> {
    kind: Option<&'a RawValue>,
    to: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    extras: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// A member's name, recognised without copying it.
enum Key<'a> {
    Type,
    To,
    Data,
    /// `from` and `username`: the host sets those itself.
    Stamped,
    Other(Cow<'a, str>),
}

impl<'a> Key<'a> {
    fn of(name: Cow<'a, str>) -> Self {
        match &*name {
            "type" => Key::Type,
            "to" => Key::To,
            "data" => Key::Data,
            "from" | "username" => Key::Stamped,
            _ => Key::Other(name),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    /// A name with escapes means what it decodes to (`"\u0074ype"` is
    /// `type`, as in JavaScript).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        JsonStr::deserialize(d).map(|name| Key::of(name.0))
    }
}

/// Reads the top level of an object; anything else that is valid JSON
/// yields `None`. Duplicate names: the last occurrence wins, as in
/// JavaScript. More than `MAX_EXTRAS` other members stop the parse at once
/// (and set `too_many`): the rest of the frame is not read.
struct MembersVisitor<'c> {
    too_many: &'c std::cell::Cell<bool>,
}

impl<'de> Visitor<'de> for MembersVisitor<'_> {
    type Value = Option<Members<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut m = Members {
            kind: None,
            to: None,
            data: None,
            extras: Vec::new(),
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            match key {
                Key::Type => m.kind = Some(value),
                Key::To => m.to = Some(value),
                Key::Data => m.data = Some(value),
                Key::Stamped => {}
                Key::Other(name) => {
                    m.extras.retain(|(k, _)| *k != name);
                    m.extras.push((name, value));
                    if m.extras.len() > MAX_EXTRAS {
                        self.too_many.set(true);
                        return Err(serde::de::Error::custom("too many members"));
                    }
                }
            }
        }
        Ok(Some(m))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    // Writing into a String cannot fail, and a &str always serialises.
    let quoted = serde_json::to_string(s).unwrap_or_default();
    out.push_str(&quoted);
}

/// A frame to forward: the (possibly rewritten) envelope, stamped with the
/// sender's id and name, with the sender's other members kept.
pub struct Stamped<'a> {
    pub kind: &'a str,
    pub from: &'a str,
    pub to: Option<&'a str>,
    pub username: Option<&'a str>,
    pub data: Option<&'a str>,
    pub extras: &'a [(Cow<'a, str>, &'a RawValue)],
}

impl Stamped<'_> {
    pub fn render(&self) -> String {
        let extras_len: usize = self
            .extras
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = String::with_capacity(
            64 + self.kind.len() + self.data.map_or(0, str::len) + extras_len,
        );
        out.push_str("{\"type\":");
        push_json_str(&mut out, self.kind);
        out.push_str(",\"from\":");
        push_json_str(&mut out, self.from);
        if let Some(to) = self.to {
            out.push_str(",\"to\":");
            push_json_str(&mut out, to);
        }
        if let Some(name) = self.username {
            out.push_str(",\"username\":");
            push_json_str(&mut out, name);
        }
        if let Some(data) = self.data {
            out.push_str(",\"data\":");
            out.push_str(data);
        }
        for (key, value) in self.extras {
            out.push(',');
            push_json_str(&mut out, key);
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
        out
    }
}

/// `{"type":"error","message":{"errorType":..,"errorText":..}}`
pub fn error(error_type: &str, error_text: &str) -> String {
    let mut out = String::with_capacity(64 + error_type.len() + error_text.len());
    out.push_str("{\"type\":\"error\",\"message\":{\"errorType\":");
    push_json_str(&mut out, error_type);
    out.push_str(",\"errorText\":");
    push_json_str(&mut out, error_text);
    out.push_str("}}");
    out
}

/// `{"type":"logout","from":id,"data":{"username":..,"sessionId":..}}`
pub fn logout(session: &str, username: &str) -> String {
    let mut out = String::with_capacity(96 + username.len());
    out.push_str("{\"type\":\"logout\",\"from\":");
    push_json_str(&mut out, session);
    out.push_str(",\"data\":{\"username\":");
    push_json_str(&mut out, username);
    out.push_str(",\"sessionId\":");
    push_json_str(&mut out, session);
    out.push_str("}}");
    out
}

/// A synthesised `login` notice, for joins a policy made outside a `login` frame.
pub fn login_notice(session: &str, username: &str, room: &str) -> String {
    let mut out = String::with_capacity(96 + username.len() + room.len());
    out.push_str("{\"type\":\"login\",\"from\":");
    push_json_str(&mut out, session);
    out.push_str(",\"username\":");
    push_json_str(&mut out, username);
    out.push_str(",\"data\":{\"roomrequest\":");
    push_json_str(&mut out, room);
    out.push_str(",\"username\":");
    push_json_str(&mut out, username);
    out.push_str("}}");
    out
}

/// `joined`: `data` is the session's own id (what the original client reads);
/// `members` lists the others already in the room.
pub fn joined(
    session: &str,
    room: &str,
    members: &[(String, String)],
    ice_servers_json: &str,
) -> String {
    let mut out = String::with_capacity(128 + members.len() * 80 + ice_servers_json.len());
    out.push_str("{\"type\":\"joined\",\"data\":");
    push_json_str(&mut out, session);
    out.push_str(",\"room\":");
    push_json_str(&mut out, room);
    out.push_str(",\"members\":[");
    for (i, (id, name)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"sessionId\":");
        push_json_str(&mut out, id);
        out.push_str(",\"username\":");
        push_json_str(&mut out, name);
        out.push('}');
    }
    let _ = write!(out, "],\"iceServers\":{ice_servers_json}}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn parses_the_original_clients_offer() {
        let text = r#"{"type":"offer","to":"b","username":"spoof","from":"x","data":{"sdp":"v=0"},"extra":[1,2]}"#;
        let f = parse(text).unwrap();
        assert_eq!(f.kind, "offer");
        assert_eq!(f.to.as_deref(), Some("b"));
        assert_eq!(f.data.unwrap().get(), r#"{"sdp":"v=0"}"#);
        assert_eq!(f.extras.len(), 1);
        let out = Stamped {
            kind: &f.kind,
            from: "a",
            to: f.to.as_deref(),
            username: Some("alice"),
            data: f.data.map(RawValue::get),
            extras: &f.extras,
        }
        .render();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"type":"offer","from":"a","to":"b","username":"alice","data":{"sdp":"v=0"},"extra":[1,2]})
        );
    }

    #[test]
    fn escaped_names_and_values_mean_what_they_say() {
        // `"\u0074ype"` is the member `type`, and `"\u0066rom"` is `from`
        // (dropped: the host stamps it), as JSON.parse reads them.
        let text = r#"{"\u0074ype":"can\u0064idate","t\u006f":"b\"c","\u0066rom":"x","d\u0061ta":1,"e\u0078":2,"ex":3}"#;
        let f = parse(text).unwrap();
        assert_eq!(f.kind, "candidate");
        assert!(matches!(f.kind, Cow::Owned(_)));
        assert_eq!(f.to.as_deref(), Some("b\"c"));
        assert_eq!(f.data.unwrap().get(), "1");
        // `e\u0078` and `ex` are one name: the last one wins.
        assert_eq!(f.extras.len(), 1);
        assert_eq!(f.extras[0].0, "ex");
        assert_eq!(f.extras[0].1.get(), "3");
        // Plain strings are borrowed from the frame, not copied.
        let f = parse(r#"{"type":"offer","to":"b"}"#).unwrap();
        assert!(matches!(f.kind, Cow::Borrowed(_)));
        assert!(matches!(f.to, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(parse("{nope").unwrap_err(), FrameError::NotJson);
        assert_eq!(parse("").unwrap_err(), FrameError::NotJson);
        assert_eq!(parse("{} x").unwrap_err(), FrameError::NotJson);
        assert_eq!(parse("[1,2]").unwrap_err(), FrameError::NotObject);
        assert_eq!(parse("\"s\"").unwrap_err(), FrameError::NotObject);
        assert_eq!(parse("42").unwrap_err(), FrameError::NotObject);
        assert_eq!(parse("null").unwrap_err(), FrameError::NotObject);
        assert_eq!(parse("{}").unwrap_err(), FrameError::BadType);
        assert_eq!(parse(r#"{"type":7}"#).unwrap_err(), FrameError::BadType);
        assert_eq!(parse(r#"{"type":""}"#).unwrap_err(), FrameError::BadType);
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(65));
        assert_eq!(parse(&long).unwrap_err(), FrameError::BadType);
        assert_eq!(
            parse(r#"{"type":"a","to":5}"#).unwrap_err(),
            FrameError::BadTo
        );
        assert!(parse(r#"{"type":"a","to":null}"#).unwrap().to.is_none());
    }

    #[test]
    fn members_are_forwarded_as_sent() {
        // Found by the fuzzer: valid JSON that a Value round trip would
        // reject (out of f64 range) is kept raw, not reinterpreted.
        let f = parse("{\":0\":5e5050\t,\"type\"\t:\t\"7e\"\n\n}").unwrap();
        assert_eq!(f.kind, "7e");
        let out = Stamped {
            kind: &f.kind,
            from: "a",
            to: None,
            username: None,
            data: None,
            extras: &f.extras,
        }
        .render();
        assert_eq!(out, r#"{"type":"7e","from":"a",":0":5e5050}"#);
        assert_eq!(parse(&out).unwrap().extras[0].1.get(), "5e5050");
    }

    #[test]
    fn unknown_members_are_capped() {
        let frame = |n: usize| {
            let members: String = (0..n).map(|i| format!(",\"k{i}\":{i}")).collect();
            format!(r#"{{"type":"a"{members},"data":1}}"#)
        };
        assert_eq!(parse(&frame(MAX_EXTRAS)).unwrap().extras.len(), MAX_EXTRAS);
        assert_eq!(
            parse(&frame(MAX_EXTRAS + 1)).unwrap_err(),
            FrameError::TooManyMembers
        );
        assert_eq!(parse(&frame(6000)).unwrap_err(), FrameError::TooManyMembers);
        // Duplicates are one member.
        let dup = format!(r#"{{"type":"a"{}}}"#, ",\"x\":1".repeat(6000));
        assert_eq!(parse(&dup).unwrap().extras.len(), 1);
        assert!(
            FrameError::TooManyMembers
                .to_string()
                .contains(&MAX_EXTRAS.to_string())
        );
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ok = format!(r#"{{"type":"a","data":{}}}"#, nest(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let deep = format!(r#"{{"type":"a","data":{}}}"#, nest(MAX_DEPTH + 1));
        assert_eq!(parse(&deep).unwrap_err(), FrameError::TooDeep);
        let extra = format!(r#"{{"type":"a","x":{{"y":{}}}}}"#, nest(MAX_DEPTH));
        assert_eq!(parse(&extra).unwrap_err(), FrameError::TooDeep);
        // Deep enough to overflow any recursive reader's stack.
        let huge = format!(r#"{{"type":"a","data":{}}}"#, nest(30_000));
        assert_eq!(parse(&huge).unwrap_err(), FrameError::TooDeep);
        // Brackets inside strings are text, not nesting.
        let text = format!(r#"{{"type":"a","data":"{}\"\\"}}"#, "[{".repeat(100));
        assert!(parse(&text).is_ok());
        assert!(
            FrameError::TooDeep
                .to_string()
                .contains(&MAX_DEPTH.to_string())
        );
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let f = parse(r#"{"type":"a","type":"b","x":1,"x":2}"#).unwrap();
        assert_eq!(f.kind, "b");
        assert_eq!(f.extras.len(), 1);
        assert_eq!(f.extras[0].1.get(), "2");
    }

    #[test]
    fn escapes_everything_it_writes() {
        let v: Value = serde_json::from_str(&error("badRequest", "a \"quoted\"\nline")).unwrap();
        assert_eq!(v["message"]["errorText"], "a \"quoted\"\nline");
        let v: Value = serde_json::from_str(&logout("id", "가\"b")).unwrap();
        assert_eq!(
            v,
            json!({"type":"logout","from":"id","data":{"username":"가\"b","sessionId":"id"}})
        );
        let v: Value =
            serde_json::from_str(&joined("me", "r", &[("o".into(), "O".into())], "[]")).unwrap();
        assert_eq!(
            v,
            json!({"type":"joined","data":"me","room":"r","members":[{"sessionId":"o","username":"O"}],"iceServers":[]})
        );
        let v: Value = serde_json::from_str(&login_notice("id", "n", "room")).unwrap();
        assert_eq!(v["data"]["roomrequest"], "room");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, nested a few levels.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                ".{0,20}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Arbitrary text never panics the parser; it is a frame or a clear error.
            #[test]
            fn arbitrary_text_never_panics(text in ".{0,200}") {
                let _ = parse(&text);
            }

            /// Arbitrary bytes that happen to be UTF-8, JSON-ish prefixes included.
            #[test]
            fn jsonish_text_never_panics(text in r#"[{}\[\]":,a-z0-9 \\]{0,120}"#) {
                let _ = parse(&text);
            }

            /// A valid envelope survives parse → stamp → render with its data and
            /// extras intact, and the host's `from`/`username` win.
            #[test]
            fn envelopes_round_trip(
                kind in "[a-zA-Z]{1,20}",
                to in proptest::option::of("[a-f0-9-]{1,36}"),
                data in proptest::option::of(json_value()),
                extra in json_value(),
                spoof in ".{0,10}",
            ) {
                let mut frame = serde_json::Map::new();
                frame.insert("type".into(), json!(kind));
                frame.insert("from".into(), json!(spoof));
                frame.insert("username".into(), json!(spoof));
                if let Some(t) = &to { frame.insert("to".into(), json!(t)); }
                if let Some(d) = &data { frame.insert("data".into(), d.clone()); }
                frame.insert("x-extra".into(), extra.clone());
                let text = Value::Object(frame).to_string();
                let f = parse(&text).unwrap();
                let out = Stamped {
                    kind: &f.kind,
                    from: "host-id",
                    to: f.to.as_deref(),
                    username: Some("name"),
                    data: f.data.map(RawValue::get),
                    extras: &f.extras,
                }
                .render();
                let v: Value = serde_json::from_str(&out).unwrap();
                prop_assert_eq!(&v["type"], &json!(kind));
                prop_assert_eq!(&v["from"], &json!("host-id"));
                prop_assert_eq!(&v["username"], &json!("name"));
                prop_assert_eq!(v.get("data"), data.as_ref());
                prop_assert_eq!(&v["x-extra"], &extra);
            }
        }
    }
}
