//! Owns the peer address rules: which addresses a relay may send to or
//! receive from. Loopback, private, CGNAT, "this network", link-local,
//! multicast, broadcast, unspecified, reserved/documentation ranges, the
//! IPv6 forms that embed such an IPv4 address (mapped, compatible, NAT64,
//! 6to4) and the host's own addresses are refused unless configured.
//! The server's own live relayed addresses are allowed on top of these
//! rules (relay to relay, see the relay module), whatever their class.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of address a peer is, for the relay policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerClass {
    /// A public unicast address.
    Public,
    /// 127/8 or ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16 or fc00::/7 (and deprecated fec0::/10).
    Private,
    /// 100.64/10 (carrier-grade NAT).
    Cgnat,
    /// 0/8 ("this network").
    ThisNetwork,
    /// 169.254/16 or fe80::/10.
    LinkLocal,
    /// 224/4 or ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 0.0.0.0 or ::.
    Unspecified,
    /// Reserved, documentation, benchmarking or protocol-assignment ranges.
    Reserved,
}

impl PeerClass {
    /// True for [`PeerClass::Public`].
    pub fn is_public(self) -> bool {
        self == PeerClass::Public
    }
}

/// Classifies an IPv4 address.
pub fn classify_v4(ip: Ipv4Addr) -> PeerClass {
    let o = ip.octets();
    if ip.is_unspecified() {
        PeerClass::Unspecified
    } else if ip.is_broadcast() {
        PeerClass::Broadcast
    } else if o[0] == 0 {
        PeerClass::ThisNetwork
    } else if o[0] == 127 {
        PeerClass::Loopback
    } else if o[0] == 10 || (o[0] == 172 && (o[1] & 0xf0) == 16) || (o[0] == 192 && o[1] == 168) {
        PeerClass::Private
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        PeerClass::Cgnat
    } else if o[0] == 169 && o[1] == 254 {
        PeerClass::LinkLocal
    } else if (o[0] & 0xf0) == 224 {
        PeerClass::Multicast
    } else if (o[0] & 0xf0) == 240 // 240/4 reserved
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 protocol assignments
        || (o[0] == 192 && o[1] == 0 && o[2] == 2) // TEST-NET-1
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
        || (o[0] == 198 && o[1] == 51 && o[2] == 100) // TEST-NET-2
        || (o[0] == 203 && o[1] == 0 && o[2] == 113) // TEST-NET-3
        || (o[0] == 192 && o[1] == 88 && o[2] == 99)
    // 6to4 relay anycast (deprecated)
    {
        PeerClass::Reserved
    } else {
        PeerClass::Public
    }
}

/// The IPv4 address an IPv6 address stands for, when it embeds one:
/// IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d, except :: and
/// ::1), NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48) and 6to4
/// (2002:AABB:CCDD::/48).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return Some(tail); // mapped
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(tail); // compatible (deprecated)
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(tail); // NAT64 well-known prefix
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // NAT64 local-use prefix: the address may sit anywhere past /48; be
        // strict and treat the whole /48 as non-public by reporting 0.0.0.0.
        return Some(Ipv4Addr::UNSPECIFIED);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// Classifies an IPv6 address (embedded IPv4 forms by their IPv4 address).
pub fn classify_v6(ip: Ipv6Addr) -> PeerClass {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        PeerClass::Unspecified
    } else if ip.is_loopback() {
        PeerClass::Loopback
    } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
        PeerClass::Private
    } else if (s[0] & 0xffc0) == 0xfe80 {
        PeerClass::LinkLocal
    } else if (s[0] & 0xff00) == 0xff00 {
        PeerClass::Multicast
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0; 3]) // 100::/64 discard-only
        || (s[0] == 0x3fff && (s[1] & 0xf000) == 0) // 3fff::/20 documentation
        || s[0] == 0 // rest of ::/16 (reserved)
        || (s[0] == 0x2001 && s[1] < 0x0200 && s[1] != 0)
    // 2001::/23 IETF protocol assignments (Teredo 2001::/32 stays public)
    {
        PeerClass::Reserved
    } else {
        PeerClass::Public
    }
}

/// Classifies any IP address.
pub fn classify(ip: IpAddr) -> PeerClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// The address with IPv4-mapped IPv6 turned into plain IPv4 (for comparisons).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The network a client is counted by for quotas: its IPv4 address, or the
/// /64 of its IPv6 address (one subscriber holds a whole /64).
pub fn client_network(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
        v4 => v4,
    }
}

/// Why a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRefusal {
    /// Its class is not allowed.
    Class(PeerClass),
    /// It is one of this host's own addresses (and not a live relayed
    /// address: those are allowed before this policy is asked).
    OwnAddress,
}

impl std::fmt::Display for PeerRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerRefusal::Class(c) => write!(f, "{c:?} address"),
            PeerRefusal::OwnAddress => f.write_str("the server's own address"),
        }
    }
}

/// The relay's peer rules.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// Allow 127/8 and ::1 (and their embedded forms).
    pub allow_loopback: bool,
    /// Networks allowed whatever their class (checked before everything).
    pub allow: Vec<ipnet::IpNet>,
    /// The host's own addresses, refused unless in `allow` (or loopback
    /// with `allow_loopback`).
    pub own: Vec<IpAddr>,
}

impl PeerPolicy {
    /// Decides whether a relay may exchange packets with `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), PeerRefusal> {
        let canon = canonical(ip);
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canon))
        {
            return Ok(());
        }
        let class = classify(ip);
        if class == PeerClass::Loopback && self.allow_loopback {
            return Ok(());
        }
        if !class.is_public() {
            return Err(PeerRefusal::Class(class));
        }
        if self.own.iter().any(|own| canonical(*own) == canon) {
            return Err(PeerRefusal::OwnAddress);
        }
        Ok(())
    }

    /// True when [`check`](Self::check) accepts `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> PeerClass {
        classify(s.parse().expect("test address"))
    }

    #[test]
    fn ipv4_classes() {
        use PeerClass::*;
        for (a, want) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", ThisNetwork),
            ("0.255.255.255", ThisNetwork),
            ("1.0.0.0", Public),
            ("9.255.255.255", Public),
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("11.0.0.0", Public),
            ("100.63.255.255", Public),
            ("100.64.0.0", Cgnat),
            ("100.127.255.255", Cgnat),
            ("100.128.0.0", Public),
            ("126.255.255.255", Public),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("128.0.0.0", Public),
            ("169.253.255.255", Public),
            ("169.254.0.1", LinkLocal),
            ("169.254.169.254", LinkLocal),
            ("169.255.0.0", Public),
            ("172.15.255.255", Public),
            ("172.16.0.0", Private),
            ("172.31.255.255", Private),
            ("172.32.0.0", Public),
            ("192.0.0.8", Reserved),
            ("192.0.2.1", Reserved),
            ("192.0.3.1", Public),
            ("192.88.99.1", Reserved),
            ("192.167.255.255", Public),
            ("192.168.0.0", Private),
            ("192.168.255.255", Private),
            ("192.169.0.0", Public),
            ("198.17.255.255", Public),
            ("198.18.0.0", Reserved),
            ("198.19.255.255", Reserved),
            ("198.20.0.0", Public),
            ("198.51.100.7", Reserved),
            ("203.0.113.9", Reserved),
            ("8.8.8.8", Public),
            ("223.255.255.255", Public),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
        ] {
            assert_eq!(c(a), want, "{a}");
        }
    }

    #[test]
    fn ipv6_classes() {
        use PeerClass::*;
        for (a, want) in [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fc00::1", Private),
            ("fdff:ffff::1", Private),
            ("fec0::1", Private),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("2001:db8::1", Reserved),
            ("100::1", Reserved),
            ("::2:0:0:1", Reserved),
            ("2001:4860:4860::8888", Public),
            ("2606:4700::1111", Public),
            ("2001::1", Public), // Teredo
            ("fbff::1", Public),
        ] {
            assert_eq!(c(a), want, "{a}");
        }
    }

    #[test]
    fn ipv6_embedded_ipv4_forms() {
        use PeerClass::*;
        for (a, want) in [
            // IPv4-mapped
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:172.16.0.1", Private),
            ("::ffff:192.168.1.1", Private),
            ("::ffff:100.64.0.1", Cgnat),
            ("::ffff:0.0.0.1", ThisNetwork),
            ("::ffff:0.0.0.0", Unspecified),
            ("::ffff:169.254.1.1", LinkLocal),
            ("::ffff:224.0.0.1", Multicast),
            ("::ffff:255.255.255.255", Broadcast),
            ("::ffff:8.8.8.8", Public),
            // IPv4-compatible
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("::192.168.0.1", Private),
            ("::8.8.4.4", Public),
            // NAT64
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b::8.8.8.8", Public),
            ("64:ff9b:1::8.8.8.8", Unspecified),
            // 6to4
            ("2002:7f00:1::1", Loopback),
            ("2002:c0a8:101::1", Private),
            ("2002:0808:0808::1", Public),
        ] {
            assert_eq!(c(a), want, "{a}");
        }
    }

    #[test]
    fn policy_defaults_refuse_everything_non_public() {
        let p = PeerPolicy::default();
        for a in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "10.0.0.1",
            "100.64.1.1",
            "0.0.0.0",
            "::",
            "169.254.0.1",
            "fe80::1",
            "fd00::1",
            "224.0.0.251",
            "255.255.255.255",
            "::ffff:192.168.0.1",
        ] {
            assert!(!p.allows(a.parse().expect("addr")), "{a}");
        }
        assert!(p.allows("8.8.8.8".parse().expect("addr")));
        assert!(p.allows("2001:4860:4860::8888".parse().expect("addr")));
    }

    #[test]
    fn policy_allow_loopback_and_networks() {
        let p = PeerPolicy {
            allow_loopback: true,
            allow: vec!["10.1.0.0/16".parse().expect("net")],
            own: vec![
                "8.8.8.8".parse().expect("addr"),
                "127.0.0.1".parse().expect("addr"),
            ],
        };
        assert!(p.allows("127.0.0.1".parse().expect("addr")));
        assert!(p.allows("::1".parse().expect("addr")));
        assert!(p.allows("::ffff:127.0.0.1".parse().expect("addr")));
        assert!(p.allows("10.1.2.3".parse().expect("addr")));
        assert!(p.allows("::ffff:10.1.2.3".parse().expect("addr")));
        assert!(!p.allows("10.2.0.1".parse().expect("addr")));
        assert!(!p.allows("192.168.0.1".parse().expect("addr")));
        // own public address refused, also in its mapped form
        assert_eq!(
            p.check("8.8.8.8".parse().expect("addr")),
            Err(PeerRefusal::OwnAddress)
        );
        assert_eq!(
            p.check("::ffff:8.8.8.8".parse().expect("addr")),
            Err(PeerRefusal::OwnAddress)
        );
        assert!(p.allows("8.8.4.4".parse().expect("addr")));
    }

    #[test]
    fn policy_allow_list_overrides_own_address() {
        let p = PeerPolicy {
            allow_loopback: false,
            allow: vec!["203.0.113.0/24".parse().expect("net")],
            own: vec!["203.0.113.5".parse().expect("addr")],
        };
        assert!(p.allows("203.0.113.5".parse().expect("addr")));
        assert!(!p.allows("127.0.0.1".parse().expect("addr")));
    }
}
