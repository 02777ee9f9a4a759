//! [`RateLimitLayer`]: wraps services in [`RateLimitService`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tower_layer::Layer;

#[cfg(feature = "axum")]
use super::body::AxumBody;
use super::body::Wrapped;
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
///
/// `M` is the [`BodyMode`](super::BodyMode): [`Wrapped`] by default (any inner body); in an axum `Router`,
/// [`axum_body`](Self::axum_body) saves axum's boxing of every response body.
pub struct RateLimitLayer<M = Wrapped> {
    pub(crate) engine: Arc<DecisionEngine>,
    mode: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for RateLimitLayer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("engine", &self.engine)
            .finish()
    }
}

impl<M> Clone for RateLimitLayer<M> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            engine: self.engine.clone(),
            mode: PhantomData,
        }
    }
}

impl RateLimitLayer {
    pub(crate) fn from_engine(engine: Arc<DecisionEngine>) -> Self {
        RateLimitLayer {
            engine,
            mode: PhantomData,
        }
    }

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

    /// The same layer, with responses whose body is `axum::body::Body` itself ([`AxumBody`]):
    /// in an axum `Router` (whose routes answer with that body) use this, and axum takes
    /// the responses as they are instead of boxing each body, one allocation per request.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use axum::{Router, routing::get};
    /// use sluicegate::{RateLimit, RateLimiterBuilder, local::LocalRateLimiterOptions};
    /// use sluicegate::layer::RateLimitLayer;
    /// # fn main() -> Result<(), sluicegate::Error> {
    /// # let limiter = Arc::new(RateLimiterBuilder::new(LocalRateLimiterOptions {
    /// #     window_size_seconds: 60.try_into()?,
    /// #     rate_group_size_ms: 100.try_into()?,
    /// #     hard_limit_factor: Default::default(),
    /// #     suppression_factor_cache_ms: Default::default(),
    /// # }).build()?);
    /// let layer = RateLimitLayer::new(limiter, RateLimit::try_from(10.0)?).axum_body();
    /// let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(layer);
    /// # let _ = app; Ok(()) }
    /// ```
    #[cfg(feature = "axum")]
    pub fn axum_body(self) -> RateLimitLayer<AxumBody> {
        RateLimitLayer {
            engine: self.engine,
            mode: PhantomData,
        }
    }
}

impl<M> RateLimitLayer<M> {
    /// How many times a networked provider failed since the layer was built (each one
    /// answered by the provider-error policy).
    pub fn provider_errors(&self) -> u64 {
        self.engine.provider_errors.load(Ordering::Relaxed)
    }
}

impl<S, M> Layer<S> for RateLimitLayer<M> {
    type Service = RateLimitService<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, self.engine.clone())
    }
}
