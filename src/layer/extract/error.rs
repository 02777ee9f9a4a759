//! [`KeyError`]: why no key could be read, and what to change.

use http::{HeaderName, StatusCode};

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

    /// The key is longer than the layer takes
    /// ([`max_key_len`](crate::layer::RateLimitLayerBuilder::max_key_len)): `431`.
    #[error(
        "the rate-limit key is {len} bytes, longer than the {max} bytes this service takes: \
         send a shorter value"
    )]
    TooLong {
        /// The key's length, in bytes.
        len: usize,
        /// The cap, in bytes.
        max: usize,
    },

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
    /// for malformed input, 431 for a key over the length cap, 500 for a server set-up
    /// mistake.
    pub fn status(&self) -> StatusCode {
        match self {
            KeyError::MissingHeader(_) => StatusCode::UNAUTHORIZED,
            KeyError::InvalidHeader(_) | KeyError::MalformedForwarded(_) => StatusCode::BAD_REQUEST,
            KeyError::MissingPeerAddr | KeyError::MissingMatchedPath => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            KeyError::TooLong { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            KeyError::Custom { status, .. } => *status,
        }
    }
}
