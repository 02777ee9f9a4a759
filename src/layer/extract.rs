//! Key extractors: what a request is limited by.
//!
//! A [`KeyExtractor`] reads the request head ([`RequestHead`]) and returns a [`Key`] or a
//! [`KeyError`] that says what is missing and how to fix it. The trait is object safe, so
//! the layer stores one `Box<dyn KeyExtractor>` whatever the configuration.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use compact_str::CompactString;
use http::{Extensions, HeaderMap, HeaderName, Method, StatusCode, Uri};
use ipnet::IpNet;

use super::forwarded;

/// What a limiter counts against: an opaque string. Keys up to 24 bytes (every IPv4
/// address, an IPv6 /64) are stored inline, with no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(CompactString);

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

/// Dotted-quad text without the formatting machinery (the peer-IP key is on every
/// request's path).
fn ipv4_text(ip: std::net::Ipv4Addr) -> CompactString {
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    let text = std::str::from_utf8(&buf[..len]).expect("ASCII digits and dots");
    CompactString::new(text)
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it carries; any
/// other address unchanged. A dual-stack socket reports IPv4 clients this way.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The parts of a request a key extractor may read. Built from an [`http::Request`] or
/// from [`http::request::Parts`] without copying anything.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (where servers put the peer address and the matched route).
    pub extensions: &'a Extensions,
}

impl<'a, B> From<&'a http::Request<B>> for RequestHead<'a> {
    fn from(req: &'a http::Request<B>) -> Self {
        RequestHead {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

impl<'a> From<&'a http::request::Parts> for RequestHead<'a> {
    fn from(parts: &'a http::request::Parts) -> Self {
        RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        }
    }
}

/// Why no key could be read from a request. Each message says what to change.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The server did not record the peer address in the request extensions.
    #[error(
        "the peer address is not in the request extensions: serve an axum app with \
         `app.into_make_service_with_connect_info::<SocketAddr>()`, or insert the \
         connection's `SocketAddr` into each request's extensions (plain hyper)"
    )]
    MissingPeerAddr,

    /// A header the key is read from is absent.
    #[error("missing header `{0}`: send it with the request")]
    MissingHeader(HeaderName),

    /// A header the key is read from is present but unusable (empty or not visible ASCII).
    #[error("header `{0}` must be a non-empty visible ASCII value")]
    InvalidHeader(HeaderName),

    /// A trusted proxy forwarded a client address that cannot be parsed.
    #[error(
        "malformed `{0}` header from a trusted proxy: the client hop must be an IP address \
         (check the proxy's forwarding configuration)"
    )]
    MalformedForwarded(HeaderName),

    /// The matched route is not known: the layer runs outside an axum router.
    #[error(
        "no matched route in the request extensions: add the layer to an axum `Router` \
         (`.layer` or `.route_layer`), not around the service the router becomes"
    )]
    MissingMatchedPath,

    /// A custom extractor's reason.
    #[error("{message}")]
    Custom {
        /// What went wrong and how to fix it.
        message: String,
        /// The status a rejection answers with by default.
        status: StatusCode,
    },
}

impl KeyError {
    /// A custom reason, answered with `status` unless the layer is told otherwise.
    pub fn custom(status: StatusCode, message: impl Into<String>) -> Self {
        KeyError::Custom {
            message: message.into(),
            status,
        }
    }

    /// The status a rejection uses by default: 401 for a missing credential header, 400
    /// for malformed input, 500 for a server set-up mistake.
    pub fn status(&self) -> StatusCode {
        match self {
            KeyError::MissingHeader(_) => StatusCode::UNAUTHORIZED,
            KeyError::InvalidHeader(_) | KeyError::MalformedForwarded(_) => StatusCode::BAD_REQUEST,
            KeyError::MissingPeerAddr | KeyError::MissingMatchedPath => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            KeyError::Custom { status, .. } => *status,
        }
    }
}

/// Reads the key a request is limited by. Object safe: the layer holds a
/// `Box<dyn KeyExtractor>`.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The request's key, or why there is none.
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError>;
}

impl<T: KeyExtractor + ?Sized> KeyExtractor for Box<T> {
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        (**self).extract(req)
    }
}

impl<T: KeyExtractor + ?Sized> KeyExtractor for std::sync::Arc<T> {
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        (**self).extract(req)
    }
}

/// The peer address of the connection, from axum's `ConnectInfo<SocketAddr>` (feature
/// `axum`) or a plain `SocketAddr` request extension.
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
/// proxy every request would share the proxy's key (use [`ClientIp`] there).
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
    pub fn trusting(cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        let header = ProxyHeader::default();
        ClientIp {
            trusted: cidrs.into_iter().map(|n| n.trunc()).collect(),
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
        let values = headers.get_all(&self.header_name);
        let mut hops = forwarded::Hops::default();
        for value in values {
            let bytes = value.as_bytes();
            match self.header {
                ProxyHeader::XForwardedFor => {
                    forwarded::xff_hops(bytes, &mut |hop| hops.push(hop, |ip| self.is_trusted(ip)))
                }
                ProxyHeader::Forwarded => forwarded::forwarded_hops(bytes, &mut |hop| {
                    hops.push(hop, |ip| self.is_trusted(ip))
                }),
            }
        }
        match hops.client() {
            forwarded::Client::None => Ok(peer),
            forwarded::Client::Ip(ip) => Ok(normalize_ip(ip)),
            forwarded::Client::Malformed => {
                Err(KeyError::MalformedForwarded(self.header_name.clone()))
            }
        }
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        let peer = peer_addr(req.extensions)?;
        let ip = self.client_ip(peer.ip(), req.headers)?;
        Ok(Key::from_ip(ip, self.ipv6_prefix))
    }
}

/// Keys by a request header, such as an API key. A missing header is
/// [`KeyError::MissingHeader`] (401 by default).
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by the value of `name`.
    pub fn new(name: HeaderName) -> Self {
        HeaderKey { name }
    }
}

impl KeyExtractor for HeaderKey {
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        let value = req
            .headers
            .get(&self.name)
            .ok_or_else(|| KeyError::MissingHeader(self.name.clone()))?;
        match value.to_str() {
            Ok(s) if !s.trim().is_empty() => Ok(Key::new(s.trim())),
            _ => Err(KeyError::InvalidHeader(self.name.clone())),
        }
    }
}

/// Keys by the route axum matched (`/users/{id}`, not `/users/7`), so every route has its
/// own budget. Needs the layer inside an axum `Router`.
#[cfg(feature = "axum")]
#[derive(Debug, Clone, Copy, Default)]
pub struct MatchedRoute;

#[cfg(feature = "axum")]
impl KeyExtractor for MatchedRoute {
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        req.extensions
            .get::<axum::extract::MatchedPath>()
            .map(|p| Key::new(p.as_str()))
            .ok_or(KeyError::MissingMatchedPath)
    }
}

/// One key for every request: a global budget for the whole service.
#[derive(Debug, Clone)]
pub struct GlobalKey(Key);

impl GlobalKey {
    /// Every request counts against `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        GlobalKey(Key::new(name))
    }
}

impl Default for GlobalKey {
    fn default() -> Self {
        GlobalKey::new("global")
    }
}

impl KeyExtractor for GlobalKey {
    fn extract(&self, _req: &RequestHead<'_>) -> Result<Key, KeyError> {
        Ok(self.0.clone())
    }
}

/// A closure as a key extractor; see [`key_fn`].
#[derive(Clone)]
pub struct KeyFn<F>(F);

impl<F> std::fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFn(..)")
    }
}

/// Keys by a closure over the request head.
pub fn key_fn<F>(f: F) -> KeyFn<F>
where
    F: Fn(&RequestHead<'_>) -> Result<Key, KeyError> + Send + Sync + 'static,
{
    KeyFn(f)
}

impl<F> KeyExtractor for KeyFn<F>
where
    F: Fn(&RequestHead<'_>) -> Result<Key, KeyError> + Send + Sync + 'static,
{
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        (self.0)(req)
    }
}

/// Separates the parts of a combined key. A control character: no header value, path or
/// IP text can contain it, so two different pairs never make the same key.
pub const KEY_SEPARATOR: char = '\u{1f}';

/// Two extractors at once: the key is both keys joined by [`KEY_SEPARATOR`] (route plus
/// API key gives each client a budget per route). Fails if either fails.
#[derive(Debug, Clone)]
pub struct Both<A, B>(pub A, pub B);

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for Both<A, B> {
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        let a = self.0.extract(req)?;
        let b = self.1.extract(req)?;
        let mut out = CompactString::with_capacity(a.0.len() + 1 + b.0.len());
        out.push_str(&a.0);
        out.push(KEY_SEPARATOR);
        out.push_str(&b.0);
        Ok(Key(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn req_from(peer: &str, header: Option<(&str, &str)>) -> http::Request<()> {
        let mut req = http::Request::new(());
        req.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        if let Some((name, value)) = header {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        req
    }

    fn client(peer: &str, header: Option<(&str, &str)>, h: ProxyHeader) -> Result<Key, KeyError> {
        let ex = ClientIp::trusting(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
            .header(h);
        let req = req_from(peer, header);
        ex.extract(&RequestHead::from(&req))
    }

    #[test]
    fn ipv4_text_matches_display() {
        for ip in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "1.20.199.250"] {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(ipv4_text(ip), ip.to_string());
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
        let mut req = req_from("10.0.0.1:1", Some(("x-forwarded-for", "7.7.7.7")));
        req.headers_mut()
            .append("x-forwarded-for", HeaderValue::from_static("10.3.3.3"));
        let ex = ClientIp::trusting(["10.0.0.0/8".parse().unwrap()]);
        let key = ex.extract(&RequestHead::from(&req)).unwrap();
        assert_eq!(key.as_str(), "7.7.7.7");
    }

    #[test]
    fn combined_keys_cannot_collide() {
        let a = key_fn(|_: &RequestHead<'_>| Ok(Key::new("/a:b")));
        let b = key_fn(|_: &RequestHead<'_>| Ok(Key::new("c")));
        let c = key_fn(|_: &RequestHead<'_>| Ok(Key::new("/a")));
        let d = key_fn(|_: &RequestHead<'_>| Ok(Key::new("b:c")));
        let req = http::Request::new(());
        let head = RequestHead::from(&req);
        assert_ne!(
            Both(a, b).extract(&head).unwrap(),
            Both(c, d).extract(&head).unwrap()
        );
    }

    #[test]
    fn header_key_reports_missing_and_empty() {
        let ex = HeaderKey::new(HeaderName::from_static("x-api-key"));
        let req = http::Request::new(());
        assert_eq!(
            ex.extract(&RequestHead::from(&req)).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        let req = req_from("1.1.1.1:1", Some(("x-api-key", "  ")));
        assert!(matches!(
            ex.extract(&RequestHead::from(&req)),
            Err(KeyError::InvalidHeader(_))
        ));
        let req = req_from("1.1.1.1:1", Some(("x-api-key", "pro_123")));
        assert_eq!(
            ex.extract(&RequestHead::from(&req)).unwrap().as_str(),
            "pro_123"
        );
    }
}
