//! [`PeerIp`]: keys by the connection's peer address.

use std::net::SocketAddr;

use http::Extensions;

use super::{Key, KeyError, KeyExtractor, RequestHead};

/// The peer address of the connection, from axum's `ConnectInfo<SocketAddr>` (feature
/// `axum`) or a plain `SocketAddr` request extension.
#[inline]
pub fn peer_addr(ext: &Extensions) -> Result<SocketAddr, KeyError> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Ok(*addr);
    }
    ext.get::<SocketAddr>()
        .copied()
        .ok_or(KeyError::MissingPeerAddr)
}

/// The IPv6 prefix clients are grouped by unless told otherwise.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// Keys by the connection's peer IP. Use it when clients connect directly; behind a
/// proxy every request would share the proxy's key (use [`ClientIp`](super::ClientIp)
/// there).
#[derive(Debug, Clone, Copy)]
pub struct PeerIp {
    ipv6_prefix: u8,
}

impl PeerIp {
    /// Peer IP, IPv6 grouped by /64.
    pub fn new() -> Self {
        PeerIp {
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Groups IPv6 peers by their first `bits` bits (clamped to 128; 128 keys each address).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyExtractor for PeerIp {
    #[inline]
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        let addr = peer_addr(req.extensions)?;
        Ok(Key::from_ip(addr.ip(), self.ipv6_prefix))
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::super::test_support::request_from;
    use super::*;

    #[test]
    fn peer_ip_needs_the_connect_info() {
        let req = http::Request::new(());
        let err = PeerIp::new().extract(&RequestHead::from(&req)).unwrap_err();
        assert_eq!(err, KeyError::MissingPeerAddr);
        assert!(
            err.to_string()
                .contains("into_make_service_with_connect_info")
        );
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn ipv6_peers_are_grouped_by_the_prefix_asked_for() {
        let req = request_from("[2001:db8:1:2:3:4:5:6]:80", None);
        let head = RequestHead::from(&req);
        let key = |ex: PeerIp| ex.extract(&head).unwrap().as_str().to_owned();
        assert_eq!(key(PeerIp::new()), "2001:db8:1:2::/64");
        assert_eq!(key(PeerIp::new().ipv6_prefix(48)), "2001:db8:1::/48");
        assert_eq!(key(PeerIp::new().ipv6_prefix(200)), "2001:db8:1:2:3:4:5:6");
    }
}
