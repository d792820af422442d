//! Frame parsing and envelope handling on arbitrary input: must never
//! panic, and whatever parses must render to valid JSON.
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
        serde_json::from_str::<serde_json::Value>(&out).expect("rendered frames are JSON");
    }
});
