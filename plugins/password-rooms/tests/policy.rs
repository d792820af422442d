//! password-rooms in front of the default policy, via the host's harness.

use host::harness::{PolicyHarness, build_policy};
use serde_json::json;

fn harness() -> PolicyHarness {
    PolicyHarness::new(&[build_policy("password-rooms").unwrap()]).unwrap()
}

#[test]
fn first_member_sets_the_password_and_others_must_match() {
    let h = harness();
    let mut owner = h.connect();
    let joined =
        owner.login_with(json!({"roomrequest":"vault","username":"o","password":"s3cret"}));
    assert_eq!(joined["type"], "joined");

    let mut wrong = h.connect();
    let e = wrong.login_with(json!({"roomrequest":"vault","username":"w","password":"guess"}));
    assert_eq!(e["message"]["errorType"], "wrongPassword", "{e}");
    let mut none = h.connect();
    let e = none.login("vault", "n");
    assert_eq!(e["message"]["errorType"], "passwordRequired", "{e}");
    let e = none.login_with(json!({"roomrequest":"vault","username":"n","password":""}));
    assert_eq!(e["message"]["errorType"], "passwordRequired", "{e}");
    assert!(owner.drain().is_empty(), "refused logins reach nobody");

    let mut right = h.connect();
    let j = right.login_with(json!({"roomrequest":"vault","username":"r","password":"s3cret"}));
    assert_eq!(j["type"], "joined");
    // The owner's login notice carries no password.
    let notice = owner.recv();
    assert_eq!(notice["type"], "login");
    assert_eq!(
        notice["data"],
        json!({"roomrequest":"vault","username":"r"})
    );
}

#[test]
fn open_rooms_stay_open_and_a_recreated_room_forgets_its_password() {
    let h = harness();
    let mut a = h.connect();
    assert_eq!(a.login("open", "a")["type"], "joined");
    let mut b = h.connect();
    let j = b.login_with(json!({"roomrequest":"open","username":"b","password":"anything"}));
    assert_eq!(j["type"], "joined", "no password was set");

    let mut c = h.connect();
    c.login_with(json!({"roomrequest":"again","username":"c","password":"pw"}));
    c.disconnect();
    let mut d = h.connect();
    assert_eq!(d.login("again", "d")["type"], "joined", "the room was gone");
}

#[test]
fn passwords_are_per_room() {
    let h = harness();
    let mut a = h.connect();
    a.login_with(json!({"roomrequest":"one","username":"a","password":"x"}));
    let mut b = h.connect();
    assert_eq!(b.login("two", "b")["type"], "joined");
}

#[test]
fn hello_lists_the_password_capability() {
    let h = harness();
    let mut s = h.connect();
    s.send(json!({"type":"hello"}));
    assert_eq!(
        s.recv(),
        json!({"type":"hello","from":"","data":{"capabilities":["password"]}})
    );
    // Not a login: the session is in no room and nothing else happened.
    s.send(json!({"type":"hello","data":"not an object"}));
    assert_eq!(s.recv()["data"]["capabilities"], json!(["password"]));
}

/// A login whose data only a lenient parser reads (a lone surrogate, a
/// number out of range) does not get past the password: the host refuses
/// it before any policy, so password-rooms (strict) and the default
/// (lenient) never read two different logins.
#[test]
fn a_login_only_a_lenient_parser_reads_is_refused() {
    let h = harness();
    let mut owner = h.connect();
    let joined =
        owner.login_with(json!({"roomrequest":"vault","username":"o","password":"s3cret"}));
    assert_eq!(joined["type"], "joined");
    for junk in [r#""x":"\ud800""#, r#""x":1e999"#] {
        let mut eve = h.connect();
        eve.send_text(&format!(
            r#"{{"type":"login","data":{{"roomrequest":"vault","username":"eve",{junk}}}}}"#
        ));
        let e = eve.recv();
        assert_eq!(e["message"]["errorType"], "badRequest", "{junk}: {e}");
        assert!(owner.drain().is_empty(), "{junk}: nobody joined");
    }
}
