//! Which provider and strategy decide, chosen by configuration behind one layer type.
//!
//! The local provider is synchronous: the service decides inside `call` and no future is
//! boxed. A networked provider (Redis, hybrid) returns a boxed future (one round trip per
//! decision dwarfs the allocation); it plugs in as an `AsyncProvider`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Error, RateLimit, RateLimitDecision, RateLimiter};

use super::extract::Key;

/// Which algorithm decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Admit up to `rate × window` per key; refuse the rest with `429` and a retry time.
    #[default]
    Absolute,
    /// Shed load probabilistically between capacity and the hard limit; a shed request is
    /// `503` with the suppression factor.
    Suppressed,
}

/// Where the counts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Provider {
    /// In-process (`rl.local()`): synchronous, exact, one process.
    #[default]
    Local,
}

/// A boxed decision from a networked provider.
pub(crate) type DecisionFuture =
    Pin<Box<dyn Future<Output = Result<RateLimitDecision, Error>> + Send>>;

/// A provider that answers asynchronously (Redis, hybrid). The layer calls it once per
/// request and treats an `Err` with its provider-error policy (fail open or closed).
pub(crate) trait AsyncProvider: Send + Sync + 'static {
    /// Records `cost` units for `key` at `rate` under the provider's strategy.
    fn inc(&self, key: &Key, rate: RateLimit, cost: u64) -> DecisionFuture;
}

/// The decider a layer was built with.
pub(crate) enum Backend {
    Local(Strategy),
    Async(Arc<dyn AsyncProvider>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local(s) => write!(f, "Local({s:?})"),
            Backend::Async(_) => f.write_str("Async(..)"),
        }
    }
}

/// One local decision.
pub(crate) fn local_inc(
    limiter: &RateLimiter,
    strategy: Strategy,
    key: &Key,
    rate: &RateLimit,
    cost: u64,
) -> Result<RateLimitDecision, Error> {
    match strategy {
        Strategy::Absolute => limiter.local().absolute().try_inc(key.as_str(), rate, cost),
        Strategy::Suppressed => limiter
            .local()
            .suppressed()
            .try_inc(key.as_str(), rate, cost),
    }
}

/// Units already admitted for `key` in the window now (for `RateLimit: r=`).
pub(crate) fn local_used(limiter: &RateLimiter, strategy: Strategy, key: &Key) -> u64 {
    match strategy {
        Strategy::Absolute => limiter.local().absolute().usage(key.as_str()),
        Strategy::Suppressed => limiter.local().suppressed().usage(key.as_str()).0,
    }
}
