//! Parsing the proxy chain: `X-Forwarded-For` and RFC 7239 `Forwarded`.
//!
//! Both parsers take one raw header value and report its hops left to right, without
//! allocating; anything that is not an IP address (`unknown`, an obfuscated `_node`, a
//! typo) is a [`Hop::Malformed`]. They never panic on any input: the property tests below
//! and the cargo-fuzz target in `fuzz/` (through `layer::fuzzing`, compiled only with
//! `--cfg fuzzing`) check that.

use std::net::{IpAddr, SocketAddr};

/// One entry of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// An IP address (a port, if any, is dropped).
    Ip(IpAddr),
    /// Not an address.
    Malformed,
}

/// Parses one node: an IP, `ip:port`, `[ipv6]` or `[ipv6]:port`.
fn parse_node(node: &[u8]) -> Hop {
    let Ok(s) = std::str::from_utf8(node) else {
        return Hop::Malformed;
    };
    let s = s.trim_matches(|c| c == ' ' || c == '\t');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Hop::Ip(ip);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Hop::Ip(addr.ip());
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Ok(ip) = inner.parse::<std::net::Ipv6Addr>() {
            return Hop::Ip(IpAddr::V6(ip));
        }
    }
    Hop::Malformed
}

/// The hops of one `X-Forwarded-For` value (`client, proxy1, proxy2`). Empty items are
/// skipped.
pub fn xff_hops(value: &[u8], each: &mut dyn FnMut(Hop)) {
    for item in value.split(|&b| b == b',') {
        if item.iter().all(|&b| b == b' ' || b == b'\t') {
            continue;
        }
        each(parse_node(item));
    }
}

/// The `for=` hops of one `Forwarded` value (`for=a;proto=https, for="[::1]:80"`).
/// Elements without `for` are skipped; commas and semicolons inside quoted strings are
/// data, not separators.
pub fn forwarded_hops(value: &[u8], each: &mut dyn FnMut(Hop)) {
    for element in split_unquoted(value, b',') {
        let mut found = None;
        for pair in split_unquoted(element, b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            let name = trim(&pair[..eq]);
            if name.eq_ignore_ascii_case(b"for") {
                found = Some(for_value(trim(&pair[eq + 1..])));
                break;
            }
        }
        if let Some(hop) = found {
            each(hop);
        }
    }
}

fn for_value(raw: &[u8]) -> Hop {
    let node = match raw {
        [b'"', inner @ .., b'"'] => {
            if inner.contains(&b'\\') || inner.contains(&b'"') {
                return Hop::Malformed;
            }
            inner
        }
        _ if raw.contains(&b'"') => return Hop::Malformed,
        _ => raw,
    };
    parse_node(node)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Splits on `sep` outside double-quoted strings (with `\` escapes inside them).
fn split_unquoted(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut pos = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut quoted = false;
        while pos < s.len() {
            let b = s[pos];
            if quoted && b == b'\\' {
                pos += 2;
                continue;
            }
            if b == b'"' {
                quoted = !quoted;
            } else if b == sep && !quoted {
                let part = &s[start..pos];
                pos += 1;
                start = pos;
                return Some(part);
            }
            pos += 1;
        }
        done = true;
        Some(&s[start.min(s.len())..])
    })
}

/// What the walk over the chain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// No hops at all.
    None,
    /// The rightmost untrusted hop, or the leftmost hop if all are trusted.
    Ip(IpAddr),
    /// The rightmost untrusted hop is not an address.
    Malformed,
}

/// The walk over a chain: finds the rightmost untrusted hop in one left-to-right pass with no buffer: each hop
/// that is not trusted replaces the candidate, so the last one standing is the rightmost.
#[derive(Debug, Default)]
pub(crate) struct ChainWalk {
    first: Option<Hop>,
    untrusted: Option<Hop>,
}

impl ChainWalk {
    pub(crate) fn push(&mut self, hop: Hop, trusted: impl Fn(IpAddr) -> bool) {
        if self.first.is_none() {
            self.first = Some(hop);
        }
        let is_trusted = matches!(hop, Hop::Ip(ip) if trusted(ip));
        if !is_trusted {
            self.untrusted = Some(hop);
        }
    }

    pub(crate) fn client(&self) -> Client {
        match self.untrusted.or(self.first) {
            None => Client::None,
            Some(Hop::Ip(ip)) => Client::Ip(ip),
            Some(Hop::Malformed) => Client::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(s: &str) -> Vec<Hop> {
        let mut v = Vec::new();
        xff_hops(s.as_bytes(), &mut |h| v.push(h));
        v
    }

    fn fwd(s: &str) -> Vec<Hop> {
        let mut v = Vec::new();
        forwarded_hops(s.as_bytes(), &mut |h| v.push(h));
        v
    }

    fn ip(s: &str) -> Hop {
        Hop::Ip(s.parse().unwrap())
    }

    #[test]
    fn xff_items_ports_and_brackets() {
        assert_eq!(
            xff(" 1.2.3.4 ,5.6.7.8:80,[::1]:9, [2001:db8::1],,::2"),
            vec![
                ip("1.2.3.4"),
                ip("5.6.7.8"),
                ip("::1"),
                ip("2001:db8::1"),
                ip("::2")
            ]
        );
        assert_eq!(xff("unknown, 1.2.3"), vec![Hop::Malformed, Hop::Malformed]);
        assert_eq!(xff(""), vec![]);
    }

    #[test]
    fn forwarded_reads_only_for_and_respects_quotes() {
        assert_eq!(
            fwd(r#"for=1.2.3.4;proto=http, by=9.9.9.9, For="[::1]:80";host="a,b;c""#),
            vec![ip("1.2.3.4"), ip("::1")]
        );
        assert_eq!(
            fwd(r#"host="x,for=6.6.6.6", for=7.7.7.7"#),
            vec![ip("7.7.7.7")]
        );
        assert_eq!(fwd(r#"for="1.2.3.4"#), vec![Hop::Malformed]);
        assert_eq!(fwd(r#"for=a"b"#), vec![Hop::Malformed]);
        assert_eq!(fwd("for=_secret"), vec![Hop::Malformed]);
        assert_eq!(fwd("proto=https"), vec![]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let commas = data.iter().filter(|&&b| b == b',').count();
            let mut n = 0;
            xff_hops(&data, &mut |_| n += 1);
            proptest::prop_assert!(n <= commas + 1);
            let mut n = 0;
            forwarded_hops(&data, &mut |_| n += 1);
            proptest::prop_assert!(n <= commas + 1);
        }

        #[test]
        fn xff_round_trips_addresses(
            chain in proptest::collection::vec(
                (proptest::prelude::any::<IpAddr>(), proptest::option::of(proptest::prelude::any::<u16>())),
                0..8,
            ),
        ) {
            let text = chain
                .iter()
                .map(|(ip, port)| match port {
                    Some(port) => SocketAddr::new(*ip, *port).to_string(),
                    None => ip.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
            let mut hops = Vec::new();
            xff_hops(text.as_bytes(), &mut |h| hops.push(h));
            let want: Vec<Hop> = chain.iter().map(|(ip, _)| Hop::Ip(*ip)).collect();
            proptest::prop_assert_eq!(hops, want);
        }
    }

    #[test]
    fn split_keeps_every_part() {
        let parts: Vec<&[u8]> = split_unquoted(b"a,\"b,c\",,d\\", b',').collect();
        assert_eq!(parts, vec![&b"a"[..], b"\"b,c\"", b"", b"d\\"]);
        let parts: Vec<&[u8]> = split_unquoted(b"\"a\\", b',').collect();
        assert_eq!(parts, vec![&b"\"a\\"[..]]);
    }
}
