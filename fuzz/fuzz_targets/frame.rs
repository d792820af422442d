//! Frame parsing and envelope handling on arbitrary input: must never
//! panic, and whatever parses must render to a frame that parses again with
//! the same type, target and data, and the host's own `from`.
//! (The host keeps members as raw JSON text, so a number like 5e5050 —
//! valid JSON, out of f64 range — is forwarded as sent; a Value round trip
//! would be the wrong oracle, as the first fuzz run showed.)
#![no_main]

#[allow(dead_code)]
#[path = "../../host/src/signaling/frame.rs"]
mod frame;

use frame::{Stamped, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = parse(text) {
        let out = Stamped {
            kind: &f.kind,
            from: "fuzz",
            to: f.to.as_deref(),
            username: Some("fuzz"),
            data: f.data.map(|d| d.get()),
            extras: &f.extras,
        }
        .render();
        let again = parse(&out).expect("a rendered frame parses again");
        assert_eq!(again.kind, f.kind);
        assert_eq!(again.to, f.to);
        assert_eq!(again.data.map(|d| d.get()), f.data.map(|d| d.get()));
        assert_eq!(again.extras.len(), f.extras.len());
        assert!(out.contains("\"from\":\"fuzz\""));
    }
});
