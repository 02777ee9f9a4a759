//! Fuzzes the proxy-chain parsing: `X-Forwarded-For` and `Forwarded` values, alone and
//! through `ClientIp`, must never panic, and every hop reported must be consistent.
//!
//! ```text
//! cargo +nightly fuzz run forwarded -- -max_total_time=60
//! ```
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
// `layer::fuzzing` exists only under `--cfg fuzzing`, which `cargo fuzz` sets.
use sluicegate::layer::fuzzing::{Hop, forwarded_hops, xff_hops};
use sluicegate::layer::{ClientIp, ProxyHeader};

fuzz_target!(|data: &[u8]| {
    let mut xff = Vec::new();
    xff_hops(data, &mut |hop| xff.push(hop));
    // At most one hop per comma-separated item.
    assert!(xff.len() <= data.iter().filter(|&&b| b == b',').count() + 1);

    let mut fwd = Vec::new();
    forwarded_hops(data, &mut |hop| fwd.push(hop));
    assert!(fwd.len() <= data.iter().filter(|&&b| b == b',').count() + 1);
    for hop in xff.iter().chain(&fwd) {
        if let Hop::Ip(ip) = hop {
            // A parsed hop is a real address that prints and parses back.
            assert_eq!(ip.to_string().parse::<IpAddr>().ok(), Some(*ip));
        }
    }

    // Through the extractor, behind a trusted loopback proxy.
    if let Ok(value) = HeaderValue::from_bytes(data) {
        for (header, name) in [
            (ProxyHeader::XForwardedFor, "x-forwarded-for"),
            (ProxyHeader::Forwarded, "forwarded"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.clone());
            let ex =
                ClientIp::trusting(["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
                    .header(header);
            if let Ok(ip) = ex.client_ip("127.0.0.1".parse().unwrap(), &headers) {
                // The client is never an IPv4-mapped IPv6 address.
                if let IpAddr::V6(v6) = ip {
                    assert!(v6.to_ipv4_mapped().is_none());
                }
            }
        }
    }
});
