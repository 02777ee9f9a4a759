//! [`ClientIp`]: keys by the client address behind trusted reverse proxies.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

use super::forwarded::{self, ChainWalk, Client};
use super::key::normalize_ip;
use super::peer_ip::{DEFAULT_IPV6_PREFIX, peer_addr};
use super::{Key, KeyError, KeyExtractor, RequestHead};

/// Which header trusted proxies record the client chain in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1` (only the `for` parameters are read).
    Forwarded,
}

impl ProxyHeader {
    fn name(self) -> HeaderName {
        match self {
            ProxyHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ProxyHeader::Forwarded => http::header::FORWARDED,
        }
    }
}

/// Keys by the client IP behind trusted reverse proxies.
///
/// The chain is the proxy header's hops followed by the peer. Walking it from the right,
/// every hop inside a trusted CIDR is skipped; the first one outside is the client. So a
/// client cannot choose its key: whatever it writes in the header sits left of the hop
/// your own proxy appended. A request from an untrusted peer is keyed by the peer, its
/// header ignored. If every hop is trusted, the leftmost one is the client. A malformed
/// hop where the client should be is [`KeyError::MalformedForwarded`].
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: ProxyHeader,
    header_name: HeaderName,
    ipv6_prefix: u8,
}

impl ClientIp {
    /// Trusts the proxies in `cidrs` (e.g. `"10.0.0.0/8".parse()?`), reads
    /// `X-Forwarded-For`, groups IPv6 by /64.
    ///
    /// Addresses are compared as the IPv4 ones they map to (`::ffff:10.0.0.1` is
    /// `10.0.0.1`), so an IPv4-mapped IPv6 CIDR is taken as its IPv4 CIDR:
    /// `::ffff:10.0.0.0/104` trusts `10.0.0.0/8`, and an IPv6 CIDR that spans the whole
    /// mapped range (`::/0`, `::ffff:0:0/96`) trusts every IPv4 address too.
    pub fn trusting(cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        let header = ProxyHeader::default();
        let mut trusted = Vec::new();
        for net in cidrs {
            push_normalized(&mut trusted, net.trunc());
        }
        ClientIp {
            trusted,
            header,
            header_name: header.name(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Reads `header` instead of `X-Forwarded-For`.
    pub fn header(mut self, header: ProxyHeader) -> Self {
        self.header = header;
        self.header_name = header.name();
        self
    }

    /// Groups IPv6 clients by their first `bits` bits (clamped to 128).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = normalize_ip(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a peer and the request's headers.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, KeyError> {
        let peer = normalize_ip(peer);
        if !self.is_trusted(peer) {
            return Ok(peer);
        }
        let mut walk = ChainWalk::default();
        let mut push = |hop| walk.push(hop, |ip| self.is_trusted(ip));
        for value in headers.get_all(&self.header_name) {
            let bytes = value.as_bytes();
            match self.header {
                ProxyHeader::XForwardedFor => forwarded::xff_hops(bytes, &mut push),
                ProxyHeader::Forwarded => forwarded::forwarded_hops(bytes, &mut push),
            }
        }
        match walk.client() {
            Client::None => Ok(peer),
            Client::Ip(ip) => Ok(normalize_ip(ip)),
            Client::Malformed => Err(KeyError::MalformedForwarded(self.header_name.clone())),
        }
    }
}

/// The IPv4-mapped IPv6 addresses, `::ffff:0.0.0.0/96`.
const MAPPED: ipnet::Ipv6Net =
    match ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
        Ok(net) => net,
        Err(_) => unreachable!(),
    };

/// Pushes `net` as the addresses it matches after [`normalize_ip`]: a CIDR inside the
/// IPv4-mapped range becomes its IPv4 CIDR (it would otherwise match nothing, since mapped
/// addresses are compared as IPv4), and one spanning the whole range adds `0.0.0.0/0`.
fn push_normalized(trusted: &mut Vec<IpNet>, net: IpNet) {
    if let IpNet::V6(v6) = net {
        if MAPPED.contains(&v6) {
            let v4 = v6
                .network()
                .to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            let prefix = v6.prefix_len() - MAPPED.prefix_len();
            if let Ok(v4net) = ipnet::Ipv4Net::new(v4, prefix) {
                trusted.push(IpNet::V4(v4net));
            }
            return;
        }
        if v6.contains(&MAPPED) {
            trusted.push(IpNet::V4(ipnet::Ipv4Net::default()));
        }
    }
    trusted.push(net);
}

impl KeyExtractor for ClientIp {
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        let peer = peer_addr(req.extensions)?;
        let ip = self.client_ip(peer.ip(), req.headers)?;
        Ok(Key::from_ip(ip, self.ipv6_prefix))
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, StatusCode};

    use super::super::test_support::request_from;
    use super::*;

    fn client(peer: &str, header: Option<(&str, &str)>, h: ProxyHeader) -> Result<Key, KeyError> {
        let ex = ClientIp::trusting(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
            .header(h);
        let req = request_from(peer, header);
        ex.extract(&RequestHead::from(&req))
    }

    #[test]
    fn ipv4_mapped_cidrs_trust_their_ipv4_proxies() {
        let h = Some(("x-forwarded-for", "198.51.100.7"));
        let mapped = ClientIp::trusting(["::ffff:10.0.0.0/104".parse().unwrap()]);
        for peer in ["10.3.4.5:1", "[::ffff:10.3.4.5]:1"] {
            let key = mapped
                .extract(&RequestHead::from(&request_from(peer, h)))
                .unwrap();
            assert_eq!(key.as_str(), "198.51.100.7", "peer {peer}");
        }
        // Outside the mapped /104: the peer is the client.
        let key = mapped
            .extract(&RequestHead::from(&request_from("11.0.0.1:1", h)))
            .unwrap();
        assert_eq!(key.as_str(), "11.0.0.1");
        // A single mapped host, and the whole mapped range.
        let one = ClientIp::trusting(["::ffff:192.0.2.1/128".parse().unwrap()]);
        assert_eq!(one.trusted, ["192.0.2.1/32".parse::<IpNet>().unwrap()]);
        let all = ClientIp::trusting(["::/0".parse().unwrap()]);
        let key = all
            .extract(&RequestHead::from(&request_from("203.0.113.1:1", h)))
            .unwrap();
        assert_eq!(key.as_str(), "198.51.100.7");
        let key = all
            .extract(&RequestHead::from(&request_from("[2001:db8::1]:1", h)))
            .unwrap();
        assert_eq!(key.as_str(), "198.51.100.7");
        // A plain IPv6 CIDR outside the mapped range stays IPv6 only.
        let v6 = ClientIp::trusting(["fd00::/8".parse().unwrap()]);
        assert_eq!(v6.trusted, ["fd00::/8".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let key = client(
            "203.0.113.9:1",
            Some(("x-forwarded-for", "1.1.1.1")),
            ProxyHeader::XForwardedFor,
        );
        assert_eq!(key.unwrap().as_str(), "203.0.113.9");
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let h = Some(("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1"));
        let key = client("10.0.0.1:1", h, ProxyHeader::XForwardedFor).unwrap();
        assert_eq!(key.as_str(), "198.51.100.7");
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let h = Some(("x-forwarded-for", "10.9.9.9, 10.1.1.1"));
        let key = client("10.0.0.1:1", h, ProxyHeader::XForwardedFor).unwrap();
        assert_eq!(key.as_str(), "10.9.9.9");
    }

    #[test]
    fn trusted_peer_without_header_is_the_client() {
        let key = client("10.0.0.1:1", None, ProxyHeader::XForwardedFor).unwrap();
        assert_eq!(key.as_str(), "10.0.0.1");
    }

    #[test]
    fn malformed_client_hop_is_an_error_but_garbage_left_of_it_is_not() {
        let err = client(
            "10.0.0.1:1",
            Some(("x-forwarded-for", "1.2.3.4, nonsense")),
            ProxyHeader::XForwardedFor,
        )
        .unwrap_err();
        assert!(matches!(err, KeyError::MalformedForwarded(_)));
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let key = client(
            "10.0.0.1:1",
            Some(("x-forwarded-for", "nonsense, 1.2.3.4")),
            ProxyHeader::XForwardedFor,
        )
        .unwrap();
        assert_eq!(key.as_str(), "1.2.3.4");
    }

    #[test]
    fn forwarded_header_ipv6_and_ports() {
        let h = Some((
            "forwarded",
            r#"for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https, for=10.2.2.2;by=10.0.0.1"#,
        ));
        let key = client("10.0.0.1:1", h, ProxyHeader::Forwarded).unwrap();
        assert_eq!(key.as_str(), "2001:db8:cafe::/64");
        let h = Some(("forwarded", r#"proto=http;for="198.51.100.1:8080""#));
        let key = client("[fd00::1]:1", h, ProxyHeader::Forwarded).unwrap();
        assert_eq!(key.as_str(), "198.51.100.1");
    }

    #[test]
    fn forwarded_unknown_and_obfuscated_are_malformed() {
        for v in [
            "for=unknown",
            "for=_hidden",
            r#"for="[::1"#,
            "for=",
            "for=\"\"",
        ] {
            let err = client("10.0.0.1:1", Some(("forwarded", v)), ProxyHeader::Forwarded);
            assert!(
                matches!(err, Err(KeyError::MalformedForwarded(_))),
                "{v}: {err:?}"
            );
        }
    }

    #[test]
    fn several_header_lines_form_one_chain() {
        let mut req = request_from("10.0.0.1:1", Some(("x-forwarded-for", "7.7.7.7")));
        req.headers_mut()
            .append("x-forwarded-for", HeaderValue::from_static("10.3.3.3"));
        let ex = ClientIp::trusting(["10.0.0.0/8".parse().unwrap()]);
        let key = ex.extract(&RequestHead::from(&req)).unwrap();
        assert_eq!(key.as_str(), "7.7.7.7");
    }

    #[test]
    fn ipv6_clients_are_grouped_by_the_prefix_asked_for() {
        let h = Some(("x-forwarded-for", "2001:db8:1:2:3:4:5:6"));
        let req = request_from("10.0.0.1:1", h);
        let head = RequestHead::from(&req);
        let trusting = || ClientIp::trusting(["10.0.0.0/8".parse().unwrap()]);
        let key = |ex: ClientIp| ex.extract(&head).unwrap().as_str().to_owned();
        assert_eq!(key(trusting()), "2001:db8:1:2::/64");
        assert_eq!(key(trusting().ipv6_prefix(32)), "2001:db8::/32");
        assert_eq!(key(trusting().ipv6_prefix(255)), "2001:db8:1:2:3:4:5:6");
    }
}
