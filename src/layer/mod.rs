//! `RateLimitLayer`: the tower/axum middleware over the limiter core.
//!
//! ```no_run
//! use std::{net::SocketAddr, sync::Arc};
//! use axum::{Router, routing::get};
//! use sluicegate::{RateLimit, RateLimiterBuilder, local::LocalRateLimiterOptions};
//! use sluicegate::layer::RateLimitLayer;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = Arc::new(RateLimiterBuilder::new(LocalRateLimiterOptions {
//!     window_size_seconds: 60.try_into()?,
//!     rate_group_size_ms: 100.try_into()?,
//!     hard_limit_factor: Default::default(),
//!     suppression_factor_cache_ms: Default::default(),
//! }).build()?);
//! limiter.run_cleanup_loop();
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     // With the `axum` feature, `.axum_body()` on the layer lets the Router take its
//!     // responses without boxing their bodies (one allocation fewer a request).
//!     .layer(RateLimitLayer::new(limiter, RateLimit::try_from(10.0)?));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // The peer-IP key needs the connection's address:
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! # What it answers
//! | case | status | fields |
//! |---|---|---|
//! | admitted | the inner service's | `RateLimit-Policy` + `RateLimit` if [`headers_on_allowed`](RateLimitLayerBuilder::headers_on_allowed) (off by default); [`SUPPRESSION_FACTOR`] while the key is suppressed (**on by default**: turn it off with [`suppression_header_on_allowed(false)`](RateLimitLayerBuilder::suppression_header_on_allowed)) |
//! | absolute: over the limit | `429` | `Retry-After` (seconds, rounded up, ≥ 1, ≤ the window), `RateLimit-Policy`, `RateLimit` with `r=0` and `t` = `Retry-After` |
//! | suppressed: shed | `503` | [`SUPPRESSION_FACTOR`], `Retry-After` (1 s below the hard limit; the window at factor 1, over it), `RateLimit-Policy`, `RateLimit` with `r=0` and `t` = `Retry-After` |
//! | no key | per [`KeyErrorPolicy`]: the error's status (400/401/500) or through | |
//! | provider failure | per [`ProviderErrorPolicy`]: through (counted) or `503` | |
//!
//! No wait advertised, in `Retry-After` or in `t`, is longer than the policy's window
//! `w`. The fields follow draft-ietf-httpapi-ratelimit-headers-10.
//!
//! Bodies are plain text by default, RFC 9457 problem details with
//! [`problem_json`](RateLimitLayerBuilder::problem_json), or a hook's
//! ([`rejection_fn`](RateLimitLayerBuilder::rejection_fn)).
//!
//! # Keys
//! A [`KeyExtractor`] reads the [`RequestHead`]: [`PeerIp`] (the default), [`ClientIp`]
//! behind trusted proxies, [`HeaderKey`], `MatchedRoute` (feature `axum`), [`GlobalKey`],
//! [`key_fn`], and [`Both`] to combine two. Keys share the limiter's key space: two layers
//! on one limiter with the same keys share budgets.
//!
//! # Providers
//! One layer type for every provider, chosen with
//! [`provider`](RateLimitLayerBuilder::provider) and [`strategy`](RateLimitLayerBuilder::strategy):
//! [`Provider::Local`] and `Provider::Hybrid` (feature `redis-tokio`; it decides from local
//! state with no I/O) decide inside `call` with no boxing and no clone of the inner service;
//! `Provider::Redis` returns a boxed future, polled once in place, and only a decision still
//! on its way over the network moves the ready inner service into the response future. Redis failures follow
//! [`ProviderErrorPolicy`] and are counted in [`RateLimitLayer::provider_errors`].
//!
//! # Fuzzing
//! `fuzz/` holds a cargo-fuzz target for the proxy-chain parsing behind [`ClientIp`]:
//! `cd fuzz && cargo +nightly fuzz run forwarded -- -max_total_time=60`.
//!
//! # Where things are
//! `layer.rs`, `service.rs`, `future.rs`, `body.rs`: the tower pieces. `builder.rs`: the
//! settings, checked once. `decide.rs`: the per-request decision. `fields.rs` and
//! `headers.rs`: which fields each answer carries and how they are spelled.
//! `response.rs`: the bodies of the layer's own answers. `provider.rs`: who counts.
//! `extract/`: one key extractor a file.

mod body;
mod builder;
mod decide;
mod decision_ext;
mod exempt;
mod extract;
mod fields;
mod future;
mod grpc;
mod headers;
#[allow(clippy::module_inception)]
mod layer;
mod ops;
mod outcome;
mod provider;
mod response;
mod service;
mod set;
mod set_ops;

#[doc(hidden)]
pub mod fuzzing;

#[cfg(feature = "axum")]
pub use body::AxumBody;
pub use body::{BodyMode, ResponseBody, Wrapped};
pub use builder::{
    CostFn, DEFAULT_MAX_KEY_LEN, KeyErrorPolicy, ProviderErrorPolicy, RateFn, RateLimitLayerBuilder,
};
pub use decision_ext::RateLimitInfo;
pub use exempt::{ExemptFn, ExemptKeyFn, Exemptions};
#[cfg(feature = "axum")]
pub use extract::MatchedRoute;
pub use extract::{
    Both, ClientIp, DEFAULT_IPV6_PREFIX, GlobalKey, HeaderKey, KEY_SEPARATOR, Key, KeyError,
    KeyExtractor, KeyFn, PeerIp, ProxyHeader, RequestHead, key_fn, peer_addr,
};
pub use future::ResponseFuture;
pub use grpc::{GRPC_RETRY_PUSHBACK_MS, Protocol};
pub use headers::SUPPRESSION_FACTOR;
pub use layer::RateLimitLayer;
pub use outcome::CountIfFn;
pub use provider::Provider;
pub use response::{Rejection, RejectionBody, RejectionFn, ViolatedPolicies};
pub use service::RateLimitService;
pub use set::{CountFn, LayerLimit};
