//! Property tests of `ClientIp` on the stable toolchain (the parsers' own properties are
//! unit tests in `src/layer/extract/forwarded.rs`; the cargo-fuzz target in `fuzz/` goes
//! further): arbitrary bytes never panic, and on generated chains `ClientIp` picks what a
//! plain right-to-left walk over the chain picks.
#![cfg(feature = "tower")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use sluicegate::layer::{ClientIp, KeyError, ProxyHeader};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        // Half inside the trusted 10.0.0.0/8, half outside.
        (any::<bool>(), any::<[u8; 3]>()).prop_map(|(trusted, b)| {
            let first = if trusted { 10 } else { 11 + b[0] % 200 };
            IpAddr::V4(Ipv4Addr::new(first, b[0], b[1], b[2]))
        }),
        (any::<bool>(), any::<u128>()).prop_map(|(trusted, bits)| {
            let bits = if trusted {
                (0xfd00u128 << 112) | (bits >> 16)
            } else {
                (0x2001u128 << 112) | (bits >> 16)
            };
            IpAddr::V6(Ipv6Addr::from(bits))
        }),
    ]
}

#[derive(Debug, Clone)]
enum Entry {
    Ip(IpAddr, Option<u16>),
    Junk(String),
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        4 => (ip(), proptest::option::of(any::<u16>())).prop_map(|(ip, port)| Entry::Ip(ip, port)),
        1 => "(unknown|_[a-z]{1,5}|[a-z.]{1,8}|1\\.2\\.3)".prop_map(Entry::Junk),
    ]
}

fn trusted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 10,
        IpAddr::V6(v6) => v6.segments()[0] == 0xfd00,
    }
}

fn xff_text(e: &Entry) -> String {
    match e {
        Entry::Ip(IpAddr::V4(v4), Some(p)) => format!("{v4}:{p}"),
        Entry::Ip(IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
        Entry::Ip(ip, None) => ip.to_string(),
        Entry::Junk(s) => s.clone(),
    }
}

fn forwarded_text(e: &Entry) -> String {
    match e {
        Entry::Ip(IpAddr::V4(v4), None) => format!("for={v4};proto=https"),
        Entry::Ip(IpAddr::V6(v6), None) => format!("for=\"[{v6}]\""),
        Entry::Ip(..) => format!("by=10.0.0.1;for=\"{}\"", xff_text(e)),
        Entry::Junk(s) => format!("for={s}"),
    }
}

/// The reference: walk from the right, skip trusted addresses.
fn expected(peer: IpAddr, chain: &[Entry]) -> Result<IpAddr, ()> {
    if !trusted(peer) {
        return Ok(peer);
    }
    for e in chain.iter().rev() {
        match e {
            Entry::Ip(ip, _) if trusted(*ip) => continue,
            Entry::Ip(ip, _) => return Ok(*ip),
            Entry::Junk(_) => return Err(()),
        }
    }
    Ok(match chain.first() {
        Some(Entry::Ip(ip, _)) => *ip,
        _ => peer,
    })
}

fn extractor(header: ProxyHeader) -> ClientIp {
    ClientIp::trusting(["10.0.0.0/8".parse().unwrap(), "fd00::/16".parse().unwrap()]).header(header)
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(value) = HeaderValue::from_bytes(&data) {
            for h in [ProxyHeader::XForwardedFor, ProxyHeader::Forwarded] {
                let name = if h == ProxyHeader::Forwarded { "forwarded" } else { "x-forwarded-for" };
                let mut headers = HeaderMap::new();
                headers.insert(name, value.clone());
                let _ = extractor(h).client_ip("10.0.0.1".parse().unwrap(), &headers);
            }
        }
    }

    #[test]
    fn client_is_the_rightmost_untrusted_hop(
        peer in ip(),
        chain in proptest::collection::vec(entry(), 0..8),
        lines in 1usize..3,
    ) {
        for header in [ProxyHeader::XForwardedFor, ProxyHeader::Forwarded] {
            let (name, text): (&str, fn(&Entry) -> String) = match header {
                ProxyHeader::XForwardedFor => ("x-forwarded-for", xff_text),
                ProxyHeader::Forwarded => ("forwarded", forwarded_text),
            };
            // The chain, split over `lines` header lines in order.
            let mut headers = HeaderMap::new();
            let per_line = chain.len().div_ceil(lines).max(1);
            for part in chain.chunks(per_line) {
                let value = part.iter().map(text).collect::<Vec<_>>().join(", ");
                headers.append(name, HeaderValue::from_str(&value).unwrap());
            }
            let got = extractor(header).client_ip(peer, &headers);
            match expected(peer, &chain) {
                Ok(ip) => prop_assert_eq!(got, Ok(ip)),
                Err(()) => prop_assert!(matches!(got, Err(KeyError::MalformedForwarded(_))), "{:?}", got),
            }
        }
    }
}
