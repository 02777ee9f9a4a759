//! [`Key`]: what a limiter counts against, and the text of an IP address as a key.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use compact_str::CompactString;

/// What a limiter counts against: an opaque string. Keys up to 24 bytes (every IPv4
/// address, an IPv6 /64) are stored inline, with no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(pub(super) CompactString);

impl Key {
    /// A key from any string.
    pub fn new(key: impl AsRef<str>) -> Self {
        Key(CompactString::new(key.as_ref()))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of an IP address: IPv4-mapped IPv6 addresses become IPv4, and IPv6
    /// addresses are cut to their first `ipv6_prefix` bits (a client usually owns a whole
    /// /64), written as `network/prefix`.
    pub fn from_ip(ip: IpAddr, ipv6_prefix: u8) -> Self {
        let mut out = CompactString::default();
        match normalize_ip(ip) {
            IpAddr::V4(v4) => return Key(ipv4_text(v4)),
            IpAddr::V6(v6) if ipv6_prefix >= 128 => {
                let _ = write!(out, "{v6}");
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = if ipv6_prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(ipv6_prefix))
                };
                let _ = write!(out, "{}/{ipv6_prefix}", Ipv6Addr::from(bits & mask));
            }
        }
        Key(out)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Key {
    fn from(value: &str) -> Self {
        Key::new(value)
    }
}

impl From<String> for Key {
    fn from(value: String) -> Self {
        Key(CompactString::from(value))
    }
}

/// Each octet's decimal digits and a dot, as the little-endian bytes of the low 32 bits
/// (zeros after the dot), with the count of those bytes (digits and dot, 2 to 4) in the top
/// three bits: one table read an octet instead of the divisions, its text written with one
/// 4-byte store and its length read with one shift.
const OCTET_DOTTED: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut n = 0;
    while n < 256 {
        let (h, t, o) = ((n / 100) as u64, (n / 10 % 10) as u64, (n % 10) as u64);
        let (digits, len) = if n >= 100 {
            (
                (b'0' as u64 + h) | (b'0' as u64 + t) << 8 | (b'0' as u64 + o) << 16,
                3,
            )
        } else if n >= 10 {
            ((b'0' as u64 + t) | (b'0' as u64 + o) << 8, 2)
        } else {
            (b'0' as u64 + o, 1)
        };
        table[n] = digits | (b'.' as u64) << (8 * len) | ((len + 1) << 61);
        n += 1;
    }
    table
};

/// Dotted-quad text of `ip` written into `buf` as ASCII bytes, with no allocation and no
/// formatting machinery: four table reads, each written as one 4-byte store (its dot and
/// zeros after the digits, which the next octet's store overwrites); returns its length.
/// The lengths read from the table are below 8 by construction (a 3-bit field), so the
/// stores need no bounds checks in the 32-byte buffer. The layer's fast path keys the
/// local store with the bytes directly (a held key needs no UTF-8 check).
#[inline]
pub(crate) fn ipv4_ascii(ip: Ipv4Addr, buf: &mut Ipv4Text) -> usize {
    let mut len = 0;
    for octet in ip.octets() {
        let entry = OCTET_DOTTED[usize::from(octet)];
        buf.0[len..len + 4].copy_from_slice(&(entry as u32).to_le_bytes());
        len += (entry >> 61) as usize;
    }
    // Without the last octet's dot.
    len - 1
}

/// The buffer [`ipv4_ascii`] writes into: word-aligned, zeroed, 32 bytes (four octets of
/// at most three digits and a dot fill 16; the rest is room for the unchecked stores).
#[repr(C, align(16))]
pub(crate) struct Ipv4Text([u8; 32]);

impl Ipv4Text {
    /// A zeroed buffer.
    #[inline]
    pub(crate) fn new() -> Self {
        Ipv4Text([0u8; 32])
    }

    /// The first `len` bytes written.
    #[inline]
    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        &self.0[..len]
    }

    /// The first `len` bytes as text. The whole aligned buffer is validated, dot and zeros
    /// after the text included: UTF-8 validation checks an aligned buffer a word at a time
    /// and the text alone (under 16 bytes) a byte at a time, which costs more.
    #[inline]
    pub(crate) fn text(&self, len: usize) -> &str {
        let all = std::str::from_utf8(&self.0).expect("ASCII digits, dots and zeros");
        &all[..len]
    }
}

/// Dotted-quad text without the formatting machinery (the peer-IP key is on every
/// request's path): [`ipv4_ascii`], its text copied inline into the key.
fn ipv4_text(ip: Ipv4Addr) -> CompactString {
    let mut buf = Ipv4Text::new();
    let len = ipv4_ascii(ip, &mut buf);
    CompactString::new(buf.text(len))
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it carries; any
/// other address unchanged. A dual-stack socket reports IPv4 clients this way.
pub(crate) fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_matches_display() {
        for ip in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "1.20.199.250"] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(ipv4_text(ip), ip.to_string());
            let mut buf = Ipv4Text::new();
            let len = ipv4_ascii(ip, &mut buf);
            assert_eq!(buf.bytes(len), ip.to_string().as_bytes());
            assert_eq!(buf.text(len), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = Ipv4Addr::new(n, 255 - n, n / 7, n.wrapping_mul(13));
            assert_eq!(ipv4_text(ip), ip.to_string());
            let mut buf = Ipv4Text::new();
            let len = ipv4_ascii(ip, &mut buf);
            assert_eq!(buf.bytes(len), ip.to_string().as_bytes());
            assert_eq!(buf.text(len), ip.to_string());
        }
    }

    #[test]
    fn ip_keys_normalise_mapped_ipv4_and_group_ipv6() {
        assert_eq!(
            Key::from_ip("::ffff:1.2.3.4".parse().unwrap(), 64).as_str(),
            "1.2.3.4"
        );
        assert_eq!(
            Key::from_ip("2001:db8:1:2:3:4:5:6".parse().unwrap(), 64).as_str(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            Key::from_ip("2001:db8:1:2:3:4:5:6".parse().unwrap(), 48).as_str(),
            "2001:db8:1::/48"
        );
        assert_eq!(
            Key::from_ip("2001:db8::6".parse().unwrap(), 128).as_str(),
            "2001:db8::6"
        );
        assert_eq!(
            Key::from_ip("2001:db8::6".parse().unwrap(), 0).as_str(),
            "::/0"
        );
    }
}
