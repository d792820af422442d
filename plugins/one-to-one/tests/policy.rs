//! one-to-one in front of the default policy, via the host's harness.

use host::harness::{PolicyHarness, build_policy};
use serde_json::json;

#[test]
fn rooms_hold_two_whatever_room_max_says() {
    let h = PolicyHarness::with_room_max(&[build_policy("one-to-one").unwrap()], 10).unwrap();
    let mut a = h.connect();
    let mut b = h.connect();
    let mut c = h.connect();
    assert_eq!(a.login("pair", "a")["type"], "joined");
    assert_eq!(b.login("pair", "b")["type"], "joined");
    let e = c.login("pair", "c");
    assert_eq!(e["message"]["errorType"], "full", "{e}");
    // The pair still talks; other messages pass to the default policy.
    b.send(json!({"type":"offer","data":"sdp"}));
    assert_eq!(a.recv()["type"], "login");
    assert_eq!(a.recv()["data"], "sdp");
    // Malformed logins are still the default's badRequest.
    c.send(json!({"type":"login","data":"nope"}));
    assert_eq!(c.recv()["message"]["errorType"], "badRequest");
}
