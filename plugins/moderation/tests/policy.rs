//! moderation in front of the default policy, via the host's harness.

use host::harness::{PolicyHarness, Received, build_policy};
use serde_json::json;

#[test]
fn the_owner_kicks_and_the_kicked_leave() {
    let h = PolicyHarness::new(&[build_policy("moderation").unwrap()]).unwrap();
    let mut owner = h.connect();
    let mut b = h.connect();
    let mut c = h.connect();
    owner.login("mod", "owner");
    b.login("mod", "b");
    c.login("mod", "c");
    owner.drain();
    b.drain();

    // Not the owner: forbidden.
    b.send(json!({"type":"kick","to":c.id()}));
    assert_eq!(b.recv()["message"]["errorType"], "forbidden");
    assert!(c.drain().is_empty());

    owner.send(json!({"type":"kick","to":c.id()}));
    assert_eq!(c.recv()["type"], "kicked");
    assert_eq!(
        c.next_received(),
        Some(Received::Close(4001, "removed by the room owner".into()))
    );
    for m in [&mut owner, &mut b] {
        let f = m.recv();
        assert_eq!(
            (f["type"].as_str(), f["from"].as_str()),
            (Some("logout"), Some(c.id()))
        );
    }
    // A bad target is a clear error.
    owner.send(json!({"type":"kick","to":"nobody"}));
    assert_eq!(owner.recv()["message"]["errorType"], "badRequest");
}

#[test]
fn ownership_passes_to_the_next_oldest() {
    let h = PolicyHarness::new(&[build_policy("moderation").unwrap()]).unwrap();
    let owner = {
        let mut o = h.connect();
        o.login("r", "o");
        o
    };
    let mut b = h.connect();
    let mut c = h.connect();
    b.login("r", "b");
    c.login("r", "c");
    owner.disconnect();
    b.drain();
    c.drain();
    b.send(json!({"type":"kick","to":c.id()}));
    assert_eq!(
        c.drain().first(),
        Some(&Received::Frame(
            json!({"type":"kicked","from":"","data":{"room":"r","by":"b"}})
        ))
    );
}

#[test]
fn without_the_policy_kick_is_unknown() {
    let h = PolicyHarness::new(&[]).unwrap();
    let mut a = h.connect();
    a.login("r", "a");
    a.send(json!({"type":"kick","to":"x"}));
    assert_eq!(a.recv()["message"]["errorType"], "badRequest");
}

#[test]
fn hello_lists_kick_only_with_the_policy() {
    let with = PolicyHarness::new(&[build_policy("moderation").unwrap()]).unwrap();
    let mut a = with.connect();
    a.send(json!({"type":"hello"}));
    assert_eq!(
        a.recv(),
        json!({"type":"hello","from":"","data":{"capabilities":["kick"]}})
    );
    let without = PolicyHarness::new(&[]).unwrap();
    let mut b = without.connect();
    b.send(json!({"type":"hello"}));
    assert_eq!(
        b.recv(),
        json!({"type":"hello","from":"","data":{"capabilities":[]}})
    );
}

#[test]
fn hello_collects_every_policy_in_the_chain() {
    let h = PolicyHarness::new(&[
        build_policy("password-rooms").unwrap(),
        build_policy("moderation").unwrap(),
    ])
    .unwrap();
    let mut a = h.connect();
    // What a client puts there itself only comes back to it, checked.
    a.send(json!({"type":"hello","data":{"capabilities":["kick","bad name",7]}}));
    assert_eq!(
        a.recv()["data"]["capabilities"],
        json!(["kick", "password"])
    );
}
