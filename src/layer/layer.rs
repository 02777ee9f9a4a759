//! [`RateLimitLayer`]: wraps services in [`RateLimitService`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tower_layer::Layer;

use super::builder::RateLimitLayerBuilder;
use super::decide::DecisionEngine;
use super::service::RateLimitService;
use crate::{RateLimit, RateLimiter};

/// The rate-limiting middleware, for axum (`Router::layer`, `route_layer`, nested
/// routers), hyper (through `TowerToHyperService`) and any tower stack.
///
/// Cloning it, and cloning the services it makes, copies one `Arc`.
///
/// ```
/// # use std::sync::Arc;
/// use sluicegate::{RateLimit, RateLimiterBuilder, local::LocalRateLimiterOptions};
/// use sluicegate::layer::RateLimitLayer;
/// # fn main() -> Result<(), sluicegate::Error> {
/// let limiter = Arc::new(RateLimiterBuilder::new(LocalRateLimiterOptions {
///     window_size_seconds: 60.try_into()?,
///     rate_group_size_ms: 100.try_into()?,
///     hard_limit_factor: Default::default(),
///     suppression_factor_cache_ms: Default::default(),
/// }).build()?);
/// // 10 requests a second per peer IP, over a 60 s window.
/// let layer = RateLimitLayer::new(limiter, RateLimit::try_from(10.0)?);
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    pub(crate) engine: Arc<DecisionEngine>,
}

impl RateLimitLayer {
    /// `rate` per peer IP with the absolute strategy and the local provider.
    ///
    /// # Panics
    /// If the rate's capacity over the limiter's window is below one request; use
    /// [`builder`](Self::builder) to get that as an error.
    pub fn new(limiter: Arc<RateLimiter>, rate: RateLimit) -> Self {
        match Self::builder(limiter).rate(rate).build() {
            Ok(layer) => layer,
            Err(err) => panic!("sluicegate: invalid RateLimitLayer: {err}"),
        }
    }

    /// A builder for every other setting.
    pub fn builder(limiter: Arc<RateLimiter>) -> RateLimitLayerBuilder {
        RateLimitLayerBuilder::new(limiter)
    }

    /// How many times a networked provider failed since the layer was built (each one
    /// answered by the provider-error policy).
    pub fn provider_errors(&self) -> u64 {
        self.engine.provider_errors.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, self.engine.clone())
    }
}
