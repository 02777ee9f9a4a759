//! Key extractors: what a request is limited by.
//!
//! A [`KeyExtractor`] reads the request head ([`RequestHead`]) and returns a [`Key`] or a
//! [`KeyError`] that says what is missing and how to fix it. The trait is object safe, so
//! the layer stores one `Box<dyn KeyExtractor>` whatever the configuration.
//!
//! One extractor a file: [`PeerIp`], [`ClientIp`] (with the proxy-chain parsing in
//! `forwarded`), [`HeaderKey`], `MatchedRoute` (feature `axum`), [`GlobalKey`],
//! [`key_fn`] and [`Both`]. A new extractor is a new file here, re-exported from
//! [`crate::layer`].

mod both;
mod client_ip;
mod error;
pub(crate) mod forwarded;
mod global_key;
mod header_key;
mod key;
mod key_fn;
#[cfg(feature = "axum")]
mod matched_route;
mod peer_ip;
mod request_head;
#[cfg(test)]
mod test_support;

pub use both::{Both, KEY_SEPARATOR};
pub use client_ip::{ClientIp, ProxyHeader};
pub use error::KeyError;
pub use global_key::GlobalKey;
pub use header_key::HeaderKey;
pub use key::Key;
pub(crate) use key::{Ipv4Text, ipv4_ascii};
pub use key_fn::{KeyFn, key_fn};
#[cfg(feature = "axum")]
pub use matched_route::MatchedRoute;
pub use peer_ip::{DEFAULT_IPV6_PREFIX, PeerIp, peer_addr};
pub use request_head::RequestHead;

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
