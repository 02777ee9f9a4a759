//! # sluicegate
//!
//! Rate limiting for HTTP services. Most users want the layer: a tower middleware (axum,
//! hyper, tonic, any tower stack) that keys each request (peer IP by default), asks the
//! limiter, and answers over-limit requests itself with `429` and the IETF `RateLimit`
//! fields, or `503` for load the suppressed strategy sheds.
//!
//! ```no_run
//! # #[cfg(feature = "tower")]
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{net::SocketAddr, sync::Arc};
//! use axum::{Router, routing::get};
//! use sluicegate::{RateLimit, RateLimiterBuilder, local::LocalRateLimiterOptions};
//! use sluicegate::layer::RateLimitLayer;
//!
//! let limiter = Arc::new(RateLimiterBuilder::new(LocalRateLimiterOptions {
//!     window_size_seconds: 60.try_into()?,   // usage counts for 60 s
//!     rate_group_size_ms: 100.try_into()?,   // in buckets of 100 ms
//!     hard_limit_factor: Default::default(),
//!     suppression_factor_cache_ms: Default::default(),
//! }).build()?);
//! limiter.run_cleanup_loop(); // drops idle keys; ends when the limiter is dropped
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     // 10/s per client IP: 600 per 60 s; the 601st within a minute gets a 429.
//!     .layer(RateLimitLayer::new(limiter, RateLimit::try_from(10.0)?));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // The peer-IP key reads the connection's address (axum's `ConnectInfo` with the
//! // `axum` feature, or a `SocketAddr` request extension).
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! [`layer::RateLimitLayer::builder`] sets the key (API key header, client IP behind
//! proxies, route, ...), per-key rates, the strategy and the provider; the [`layer`] module
//! lists what each answer carries.
//!
//! # Which strategy
//!
//! A key's capacity is `rate × window` (10/s over 60 s: 600).
//!
//! - **Absolute** (the default): admits while the last window holds fewer than the capacity,
//!   refuses the rest with the time after which a retry would be admitted (`429` +
//!   `Retry-After`). Use it for quotas and plans: a client can count on exactly its share.
//! - **Suppressed** (probabilistic shedding, after Ably): past the capacity it sheds a share
//!   of the calls that grows with the load (`503` + the suppression factor), so a key
//!   moderately over its rate still gets about `rate` through instead of hitting a wall.
//!   Its hard limit is strict: once the calls *offered* within the window reach
//!   `hard_limit_factor × capacity`, it sheds **everything**, and keeps doing so until the
//!   offered count in the window falls below that again, that is until the load subsides and
//!   the burst has left the window. Use it to protect a service from overload.
//!
//! # Which provider
//!
//! - **local** ([`RateLimiter::local`]): in-process, synchronous, exact under any number of
//!   threads. One instance, or limits that may be per instance.
//! - **Redis** ([`RateLimiter::redis`], feature `redis-tokio`): one atomic script round trip
//!   per decision, exact across every instance sharing the server (Redis Cluster too).
//! - **hybrid** ([`RateLimiter::hybrid`], feature `redis-tokio`): decides from memory at
//!   local speed and syncs counts to Redis in batches; shared across instances within a
//!   bounded over-admission.
//!
//! The Redis providers take a connection from the `redis` crate, version 1: add
//! `redis = { version = "1", features = ["tokio-comp", "connection-manager"] }`.
//!
//! # The core, without the layer
//!
//! ```
//! use std::sync::Arc;
//! use sluicegate::{
//!     HardLimitFactor, RateGroupSizeMs, RateLimit, RateLimitDecision, RateLimiterBuilder,
//!     SuppressionFactorCacheMs, WindowSizeSeconds,
//! };
//! use sluicegate::local::LocalRateLimiterOptions;
//!
//! # fn main() -> Result<(), sluicegate::Error> {
//! let rl = Arc::new(RateLimiterBuilder::new(LocalRateLimiterOptions {
//!     window_size_seconds: WindowSizeSeconds::try_from(60)?,
//!     rate_group_size_ms: RateGroupSizeMs::try_from(10)?,
//!     hard_limit_factor: HardLimitFactor::try_from(1.5)?,
//!     suppression_factor_cache_ms: SuppressionFactorCacheMs::default(),
//! }).build()?);
//! rl.run_cleanup_loop();
//!
//! let rate = RateLimit::try_from(10.0)?; // 10/s over 60 s: 600 a window
//! match rl.local().absolute().inc("user_123", &rate, 1) {
//!     RateLimitDecision::Allowed => { /* serve */ }
//!     RateLimitDecision::Rejected { retry_after_ms, .. } => println!("retry in {retry_after_ms} ms"),
//!     RateLimitDecision::Suppressed { .. } => unreachable!("absolute never suppresses"),
//! }
//! # Ok(()) }
//! ```
//!
//! **Libraries: build with [`RateLimiterBuilder`]**, not a `RateLimiterOptions { .. }`
//! literal. The `redis-tokio` feature adds a `redis` field to [`RateLimiterOptions`], and
//! cargo features are unified across the dependency graph: if any other crate in the
//! application turns `redis-tokio` on, the literal stops compiling. The builder compiles
//! the same either way.
//!
//! Time and randomness are injectable ([`RateLimiter::builder`]), so tests drive a
//! [`ManualClock`] instead of sleeping and replay the suppressed strategy's draws.
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `tower` (default) | [`layer::RateLimitLayer`]; no tokio, no Redis |
//! | `axum` | axum key extractors (`ConnectInfo`, `MatchedPath`) |
//! | `redis-tokio` | the Redis and hybrid providers, on tokio |
//!
//! Items that need a feature say so on docs.rs.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod absolute;
mod builder;
mod call;
mod cleanup;
mod clock;
mod config;
mod decision;
mod error;
#[cfg(feature = "redis-tokio")]
pub mod hybrid;
#[cfg(feature = "tower")]
pub mod layer;
pub mod local;
pub mod policy;
mod random;
#[cfg(feature = "redis-tokio")]
pub mod redis;
#[cfg(feature = "serde")]
mod serde_impls;
mod settings;
mod strategy;
mod suppressed;
mod window;

/// The README's Rust code, compiled and run by `cargo test --doc` in a default-feature build
/// (its quick start is the local-only form of `RateLimiterOptions`, which gains a `redis`
/// field with `redis-tokio`; `.ci/run` runs the default-feature tests).
#[cfg(all(doctest, not(feature = "redis-tokio")))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

use std::sync::Arc;
use std::time::Duration;

pub use builder::RateLimiterBuilder;
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use config::{
    HardLimitFactor, MAX_CAPACITY, RateGroupSizeMs, RateLimit, SuppressionFactorCacheMs,
    WindowSizeSeconds,
};
pub use decision::RateLimitDecision;
pub use error::Error;
pub use settings::{KeyBudget, WhenFull};

/// The seeds' name for [`Error`], so code written against them compiles with only the crate
/// name changed (`fn main() -> Result<(), sluicegate::TrypemaError>`). Kept out of the docs:
/// new code uses [`Error`].
#[doc(hidden)]
pub type TrypemaError = Error;
pub use random::{RandomSource, SeededRandom, ThreadRandom};
pub use strategy::Strategy;

use local::{LocalRateLimiter, LocalRateLimiterOptions};

/// Everything a [`RateLimiter`] is built from.
#[derive(Debug)]
pub struct RateLimiterOptions {
    /// The local provider's window, grouping and suppression settings.
    pub local: LocalRateLimiterOptions,
    /// The Redis provider's connection and settings (also used by the hybrid provider).
    #[cfg(feature = "redis-tokio")]
    pub redis: crate::redis::RedisRateLimiterOptions,
}

/// The limiter: one value per application, shared behind an `Arc`.
#[derive(Debug)]
pub struct RateLimiter {
    local: LocalRateLimiter,
    #[cfg(feature = "redis-tokio")]
    redis: crate::redis::RedisRateLimiter,
    #[cfg(feature = "redis-tokio")]
    hybrid: crate::hybrid::HybridRateLimiter,
    /// The one window (and strategy settings) every provider decides with.
    settings: settings::Settings,
    /// The keys held in memory by every store, and their budget.
    keys: Arc<local::store::KeyCount>,
    cleanup: cleanup::CleanupHandle,
}

impl RateLimiter {
    /// Builds a limiter with the monotonic clock and thread-local randomness.
    ///
    /// # Panics
    /// If the options do not fit together (a rate group wider than the window); use
    /// [`try_new`](Self::try_new) to get that as an error instead.
    pub fn new(options: RateLimiterOptions) -> Self {
        match Self::try_new(options) {
            Ok(limiter) => limiter,
            Err(err) => panic!("sluicegate: invalid RateLimiterOptions: {err}"),
        }
    }

    /// Builds a limiter, or says which option is out of range.
    pub fn try_new(options: RateLimiterOptions) -> Result<Self, Error> {
        Self::builder(options).build()
    }

    /// A builder from full options, to inject the clock or the random source.
    pub fn builder(options: RateLimiterOptions) -> RateLimiterBuilder {
        let builder = RateLimiterBuilder::new(options.local);
        #[cfg(feature = "redis-tokio")]
        let builder = builder.redis(options.redis);
        builder
    }

    /// The window every provider counts usage over, in seconds.
    pub fn window_size_seconds(&self) -> u64 {
        self.settings.grid.window_seconds()
    }

    /// How many keys the limiter holds in memory now: the local provider's and the hybrid
    /// provider's, both strategies (a key used with both counts twice), not counting the
    /// overflow keys of [`WhenFull::Overflow`] or limit sets' keys. One atomic load: cheap
    /// enough for a metrics endpoint on every scrape. At most the
    /// [`KeyBudget`]'s cap when there is one.
    pub fn key_count(&self) -> usize {
        self.keys.held()
    }

    /// The cap of the limiter's [`KeyBudget`], if it has one.
    pub fn max_keys(&self) -> Option<usize> {
        self.keys.max_keys()
    }

    /// The in-process provider.
    pub fn local(&self) -> &LocalRateLimiter {
        &self.local
    }

    /// The Redis provider: one atomic script round trip per decision, shared by every
    /// instance. On a limiter built without Redis options, every call returns
    /// [`Error::RedisNotConfigured`].
    #[cfg(feature = "redis-tokio")]
    pub fn redis(&self) -> &crate::redis::RedisRateLimiter {
        &self.redis
    }

    /// The hybrid provider: decisions from local state with no Redis I/O, flushed to Redis
    /// in the background every `sync_interval_ms`, with Redis-wide limits (see
    /// the [module docs](crate::hybrid)). On a limiter built without Redis options, every call
    /// returns [`Error::RedisNotConfigured`].
    #[cfg(feature = "redis-tokio")]
    pub fn hybrid(&self) -> &crate::hybrid::HybridRateLimiter {
        &self.hybrid
    }

    /// The start-up check of the Redis connection, bounded by the limiter's deadline: `PING`
    /// (so a server that is down, or wants a password the connection does not give, is an
    /// error now rather than a provider error on every request), then the server's
    /// `maxmemory-policy` (anything but `noeviction` evicts limiter keys: a warning in the
    /// returned [`RedisCheck`](crate::redis::RedisCheck), also logged with `tracing::warn!`;
    /// an ACL user that may not run `CONFIG` gets a warning too, not an error).
    ///
    /// ```no_run
    /// # async fn start(rl: &sluicegate::RateLimiter) -> Result<(), sluicegate::Error> {
    /// let check = rl.check_redis().await?;
    /// for warning in &check.warnings {
    ///     eprintln!("redis: {warning}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::RedisAuthentication`] on `NOAUTH`/`WRONGPASS`; [`Error::RedisTimeout`] or
    /// [`Error::Redis`] when the server cannot be reached within the deadline;
    /// [`Error::RedisNotConfigured`] on a limiter built without Redis.
    #[cfg(feature = "redis-tokio")]
    pub async fn check_redis(&self) -> Result<crate::redis::RedisCheck, Error> {
        self.redis.check().await
    }

    /// Drops every key with no usage left in its window, in every provider; returns how many.
    /// Hybrid keys stay while they hold unsent increments or a live lease.
    pub fn cleanup(&self) -> usize {
        let removed = self.local.cleanup();
        #[cfg(feature = "redis-tokio")]
        let removed = removed + self.hybrid.cleanup();
        removed
    }

    /// Starts a background thread that calls [`cleanup`](Self::cleanup) every half window
    /// (between 1 s and 60 s). It needs no async runtime, holds only a weak reference, and
    /// ends when the limiter is dropped. Calling it again does nothing.
    pub fn run_cleanup_loop(self: &Arc<Self>) {
        self.run_cleanup_loop_every(cleanup::default_period(self.window_size_seconds()));
    }

    /// [`run_cleanup_loop`](Self::run_cleanup_loop) with a period of your choice.
    pub fn run_cleanup_loop_every(self: &Arc<Self>, period: Duration) {
        cleanup::spawn(self, period);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(group_ms: u64) -> LocalRateLimiterOptions {
        LocalRateLimiterOptions {
            window_size_seconds: WindowSizeSeconds::try_from(1).unwrap(),
            rate_group_size_ms: RateGroupSizeMs::try_from(group_ms).unwrap(),
            hard_limit_factor: HardLimitFactor::default(),
            suppression_factor_cache_ms: SuppressionFactorCacheMs::default(),
        }
    }

    fn limiter(clock: ManualClock) -> Arc<RateLimiter> {
        Arc::new(
            RateLimiterBuilder::new(options(100))
                .clock(clock)
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn cleanup_loop_runs_without_a_runtime_and_ends_with_the_limiter() {
        let clock = ManualClock::new(0);
        let rl = limiter(clock.clone());
        let rate = RateLimit::try_from(10.0).unwrap();
        rl.local().absolute().inc("a", &rate, 1);
        clock.advance(5_000);
        let handle = cleanup::spawn(&rl, Duration::from_millis(5)).expect("loop starts");
        assert!(
            cleanup::spawn(&rl, Duration::from_millis(5)).is_none(),
            "one loop per limiter"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rl.local().absolute().key_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "cleanup never ran");
            std::thread::yield_now();
        }
        drop(rl);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !handle.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "cleanup thread outlived its limiter"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn options_that_do_not_fit_together_are_an_error() {
        let err = RateLimiterBuilder::new(options(2000)).build().unwrap_err();
        assert!(err.to_string().contains("RateGroupSizeMs"), "{err}");
    }
}
