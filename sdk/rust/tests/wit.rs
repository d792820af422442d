//! The SDK carries its own copy of the WIT (so out-of-tree policies need no
//! path into this repository); it must stay the host's, byte for byte.

#[test]
fn the_sdk_wit_is_the_hosts() {
    let sdk = include_str!("../wit/policy.wit");
    let host = include_str!("../../../wit/policy.wit");
    assert!(
        sdk == host,
        "sdk/rust/wit/policy.wit differs from wit/policy.wit: copy wit/policy.wit over it"
    );
}
