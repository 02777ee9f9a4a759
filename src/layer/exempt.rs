//! [`Exemptions`]: requests no limit counts (health checks, CORS preflights, internal
//! callers), by a predicate on the request, a predicate on the key, or a CIDR allowlist of
//! peer addresses.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::extract::{Key, RequestHead, peer_addr};

/// A predicate on the request: `true` exempts it.
pub type ExemptFn = dyn Fn(&RequestHead<'_>) -> bool + Send + Sync;
/// A predicate on the request's key: `true` exempts it.
pub type ExemptKeyFn = dyn Fn(&Key) -> bool + Send + Sync;

/// What exempts a request from a layer (or from one limit of it). An exempt request is not
/// counted by the limit, never refused by it, and counted as `exempt` in the metrics.
#[derive(Default, Clone)]
pub struct Exemptions {
    request: Vec<Arc<ExemptFn>>,
    key: Vec<Arc<ExemptKeyFn>>,
    cidrs: Vec<IpNet>,
}

impl std::fmt::Debug for Exemptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exemptions")
            .field("request_predicates", &self.request.len())
            .field("key_predicates", &self.key.len())
            .field("cidrs", &self.cidrs)
            .finish()
    }
}

impl Exemptions {
    /// No exemptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exempts the requests `predicate` holds for, e.g. `|r| r.method == Method::OPTIONS`
    /// (CORS preflights) or `|r| r.uri.path() == "/health"`. Runs before the key is read:
    /// keep it cheap.
    pub fn request(
        mut self,
        predicate: impl Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.request.push(Arc::new(predicate));
        self
    }

    /// Exempts the requests whose key `predicate` holds for (e.g. API keys of internal
    /// callers: `|k| k.as_str().starts_with("internal_")`).
    pub fn key(mut self, predicate: impl Fn(&Key) -> bool + Send + Sync + 'static) -> Self {
        self.key.push(Arc::new(predicate));
        self
    }

    /// Exempts requests whose **peer address** (the connection's, as [`PeerIp`](super::PeerIp)
    /// reads it) is inside one of `nets` (IPv4-mapped IPv6 peers are matched as IPv4). Not
    /// a forwarded client address: behind a proxy, list the internal callers' keys instead.
    pub fn cidrs(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.cidrs.extend(nets);
        self
    }

    /// Whether nothing is exempt (the layer then skips the checks).
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.key.is_empty() && self.cidrs.is_empty()
    }

    /// Whether the request is exempt before its key is read.
    #[inline]
    pub(crate) fn exempts_request(&self, head: &RequestHead<'_>) -> bool {
        if self.request.iter().any(|p| p(head)) {
            return true;
        }
        if self.cidrs.is_empty() {
            return false;
        }
        let Ok(addr) = peer_addr(head.extensions) else {
            return false;
        };
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.cidrs.iter().any(|net| net.contains(&ip))
    }

    /// Whether the request is exempt by its key.
    #[inline]
    pub(crate) fn exempts_key(&self, key: &Key) -> bool {
        self.key.iter().any(|p| p(key))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::{Method, Request};

    use super::*;

    fn request(method: Method, path: &str, peer: &str) -> Request<()> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        req
    }

    #[test]
    fn predicates_and_cidrs_exempt_and_nothing_else_does() {
        let ex = Exemptions::new()
            .request(|r| r.method == Method::OPTIONS)
            .request(|r| r.uri.path() == "/health")
            .key(|k| k.as_str().starts_with("internal_"))
            .cidrs(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
        let head = |r: &Request<()>| ex.exempts_request(&RequestHead::from(r));
        assert!(head(&request(Method::OPTIONS, "/api", "192.0.2.1:1")));
        assert!(head(&request(Method::GET, "/health", "192.0.2.1:1")));
        assert!(head(&request(Method::GET, "/api", "10.1.2.3:1")));
        assert!(head(&request(Method::GET, "/api", "[::ffff:10.1.2.3]:1")));
        assert!(head(&request(Method::GET, "/api", "[fd12::1]:1")));
        assert!(!head(&request(Method::GET, "/api", "192.0.2.1:1")));
        assert!(!head(&request(Method::GET, "/api", "[2001:db8::1]:1")));
        assert!(!head(&request(Method::GET, "/healthz", "11.0.0.1:1")));
        assert!(ex.exempts_key(&Key::new("internal_batch")));
        assert!(!ex.exempts_key(&Key::new("user_internal_")));
        assert!(!ex.is_empty());
        assert!(Exemptions::new().is_empty());
        // Any one kind of exemption alone makes it non-empty.
        assert!(!Exemptions::new().request(|_| false).is_empty());
        assert!(!Exemptions::new().key(|_| false).is_empty());
        assert!(
            !Exemptions::new()
                .cidrs(["10.0.0.0/8".parse().unwrap()])
                .is_empty()
        );
        // Without a peer address only the predicates can exempt.
        let bare = Request::builder().uri("/api").body(()).unwrap();
        assert!(!ex.exempts_request(&RequestHead::from(&bare)));
    }

    #[test]
    fn debug_shows_how_many_predicates_and_the_cidrs() {
        let ex = Exemptions::new()
            .request(|_| false)
            .request(|_| false)
            .key(|_| false)
            .cidrs(["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            format!("{ex:?}"),
            "Exemptions { request_predicates: 2, key_predicates: 1, cidrs: [10.0.0.0/8] }"
        );
    }
}
