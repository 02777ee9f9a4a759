//! Requests for the extractors' unit tests.

use std::net::SocketAddr;

use http::{HeaderName, HeaderValue};

/// A request from `peer`, with one header if given.
pub(super) fn request_from(peer: &str, header: Option<(&str, &str)>) -> http::Request<()> {
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
