//! Which provider and strategy decide, chosen by configuration behind one layer type.
//!
//! The local and hybrid providers are synchronous (the hybrid decides from local state and
//! never does I/O): the service decides inside `call` and no future is boxed. The Redis
//! provider returns a boxed future (one round trip per decision dwarfs the allocation); it
//! plugs in as an `AsyncProvider`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Error, RateLimit, RateLimitDecision, RateLimiter, Strategy};

use super::extract::Key;
use super::fields::Left;

/// Where the counts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Provider {
    /// In-process (`rl.local()`): synchronous, exact, one process.
    #[default]
    Local,
    /// Redis (`rl.redis()`): one script round trip per request, shared by every instance.
    /// Needs a limiter built with Redis options. Keys are escaped for Redis (`%`, `:`,
    /// `{`, `}` become `%25`, `%3A`, `%7B`, `%7D`); a key longer than 255 bytes once
    /// escaped is a key error (400 by default).
    #[cfg(feature = "redis-tokio")]
    Redis,
    /// Hybrid (`rl.hybrid()`): local decisions on Redis-granted leases, flushed in the
    /// background; no Redis round trip on the request path. Keys as for `Redis`.
    #[cfg(feature = "redis-tokio")]
    Hybrid,
}

/// A boxed decision from a networked provider, with what is left of the key's quota when
/// the provider says.
pub(crate) type DecisionFuture =
    Pin<Box<dyn Future<Output = Result<(RateLimitDecision, Option<Left>), Error>> + Send>>;

/// A provider that answers asynchronously (Redis). The layer calls it once per
/// request and treats an `Err` with its provider-error policy (fail open or closed).
pub(crate) trait AsyncProvider: Send + Sync + 'static {
    /// Records `cost` units for `key` at `rate` under the provider's strategy.
    fn inc(&self, key: &Key, rate: RateLimit, cost: u64) -> DecisionFuture;
}

/// The decider a layer was built with.
pub(crate) enum Backend {
    Local(Strategy),
    /// `rl.hybrid()`, decided in the call like the local provider.
    #[cfg(feature = "redis-tokio")]
    Hybrid(Strategy),
    Async(Arc<dyn AsyncProvider>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local(s) => write!(f, "Local({s:?})"),
            #[cfg(feature = "redis-tokio")]
            Backend::Hybrid(s) => write!(f, "Hybrid({s:?})"),
            Backend::Async(_) => f.write_str("Async(..)"),
        }
    }
}

/// One local decision.
#[inline]
pub(crate) fn local_inc(
    limiter: &RateLimiter,
    strategy: Strategy,
    key: &Key,
    rate: &RateLimit,
    cost: u64,
) -> Result<RateLimitDecision, Error> {
    local_inc_str(limiter, strategy, key.as_str(), rate, cost)
}

/// One local decision on a key's text.
#[inline]
pub(crate) fn local_inc_str(
    limiter: &RateLimiter,
    strategy: Strategy,
    key: &str,
    rate: &RateLimit,
    cost: u64,
) -> Result<RateLimitDecision, Error> {
    match strategy {
        Strategy::Absolute => limiter.local().absolute().try_inc(key, rate, cost),
        Strategy::Suppressed => limiter.local().suppressed().try_inc(key, rate, cost),
    }
}

/// One local decision with the units admitted for `key` in the window right after it
/// (for `RateLimit: r=`), from the one store lookup.
#[inline]
pub(crate) fn local_inc_with_used(
    limiter: &RateLimiter,
    strategy: Strategy,
    key: &Key,
    rate: &RateLimit,
    cost: u64,
) -> Result<(RateLimitDecision, u64), Error> {
    local_inc_str_with_used(limiter, strategy, key.as_str(), rate, cost)
}

/// [`local_inc_with_used`] on a key's text.
#[inline]
pub(crate) fn local_inc_str_with_used(
    limiter: &RateLimiter,
    strategy: Strategy,
    key: &str,
    rate: &RateLimit,
    cost: u64,
) -> Result<(RateLimitDecision, u64), Error> {
    match strategy {
        Strategy::Absolute => limiter
            .local()
            .absolute()
            .try_inc_with_accepted(key, rate, cost),
        Strategy::Suppressed => limiter
            .local()
            .suppressed()
            .try_inc_with_accepted(key, rate, cost),
    }
}

/// [`local_inc_str_with_used`] for a fixed rate and cost whose capacity `cap` the layer
/// checked when it was built (no per-call check), the key as ASCII bytes, with the store's
/// own error (a full key budget), which the caller turns into an [`Error`] off its common
/// path: the layer's default path.
#[inline]
pub(crate) fn local_inc_counted(
    limiter: &RateLimiter,
    strategy: Strategy,
    key: &[u8],
    rate: f64,
    cost: u64,
    cap: f64,
) -> Result<(RateLimitDecision, u64), crate::local::store::Full> {
    let local = limiter.local();
    match strategy {
        Strategy::Absolute => local
            .absolute()
            .inc_checked_with_accepted(key, rate, cost, cap),
        Strategy::Suppressed => local
            .suppressed()
            .inc_checked_with_accepted(key, rate, cost, cap),
    }
}

/// What a Redis or hybrid decision's usage leaves for `RateLimit`.
#[cfg(feature = "redis-tokio")]
fn left_of(usage: Option<crate::redis::KeyUsage>) -> Option<Left> {
    usage.map(|u| Left {
        remaining: u.remaining,
        reset_s: u.reset_ms.div_ceil(1000),
    })
}

/// One hybrid decision: synchronous, no I/O, no future. With `usage`, the key's usage from
/// the same state (for `RateLimit` on admitted responses).
#[cfg(feature = "redis-tokio")]
pub(crate) fn hybrid_inc(
    limiter: &RateLimiter,
    strategy: Strategy,
    key: &Key,
    rate: &RateLimit,
    cost: u64,
    usage: bool,
) -> Result<(RateLimitDecision, Option<Left>), Error> {
    let key = redis_key(key)?;
    let h = limiter.hybrid();
    match (strategy, usage) {
        (Strategy::Absolute, false) => h.absolute().inc_sync(&key, rate, cost).map(|d| (d, None)),
        (Strategy::Suppressed, false) => {
            h.suppressed().inc_sync(&key, rate, cost).map(|d| (d, None))
        }
        (Strategy::Absolute, true) => h
            .absolute()
            .inc_sync_with_usage(&key, rate, cost)
            .map(|(d, u)| (d, left_of(u))),
        (Strategy::Suppressed, true) => h
            .suppressed()
            .inc_sync_with_usage(&key, rate, cost)
            .map(|(d, u)| (d, left_of(u))),
    }
}

/// The Redis provider behind the asynchronous seam.
#[cfg(feature = "redis-tokio")]
pub(crate) struct Networked {
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) strategy: Strategy,
    /// Ask the script for the key's usage too (the admitted `RateLimit` field).
    pub(crate) usage: bool,
}

#[cfg(feature = "redis-tokio")]
impl AsyncProvider for Networked {
    fn inc(&self, key: &Key, rate: RateLimit, cost: u64) -> DecisionFuture {
        let key = match redis_key(key) {
            Ok(key) => key,
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        let rl = self.limiter.clone();
        let (strategy, usage) = (self.strategy, self.usage);
        Box::pin(async move {
            let r = rl.redis();
            match (strategy, usage) {
                (Strategy::Absolute, false) => {
                    r.absolute().inc(&key, &rate, cost).await.map(|d| (d, None))
                }
                (Strategy::Suppressed, false) => r
                    .suppressed()
                    .inc(&key, &rate, cost)
                    .await
                    .map(|d| (d, None)),
                (Strategy::Absolute, true) => r
                    .absolute()
                    .inc_with_usage(&key, &rate, cost)
                    .await
                    .map(|(d, u)| (d, left_of(u))),
                (Strategy::Suppressed, true) => r
                    .suppressed()
                    .inc_with_usage(&key, &rate, cost)
                    .await
                    .map(|(d, u)| (d, left_of(u))),
            }
        })
    }
}

/// A layer key as a Redis key: `%`, `:`, `{` and `}` percent-escaped, so that distinct
/// keys stay distinct and none breaks Redis key names or hash tags.
#[cfg(feature = "redis-tokio")]
pub(crate) fn redis_key(key: &Key) -> Result<crate::redis::RedisKey, Error> {
    let raw = key.as_str();
    if !raw.contains(['%', ':', '{', '}']) {
        return crate::redis::RedisKey::try_from(raw);
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for c in raw.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    crate::redis::RedisKey::try_from(out)
}

#[cfg(all(test, feature = "redis-tokio"))]
mod tests {
    use super::*;

    #[test]
    fn redis_keys_are_escaped_injectively() {
        let k = |s: &str| redis_key(&Key::new(s)).map(|k| k.as_str().to_owned());
        assert_eq!(k("1.2.3.4").unwrap(), "1.2.3.4");
        assert_eq!(k("2001:db8::/64").unwrap(), "2001%3Adb8%3A%3A/64");
        assert_eq!(k("{a}%").unwrap(), "%7Ba%7D%25");
        assert_ne!(k("%3A").unwrap(), k(":").unwrap());
        assert!(k("").is_err());
        assert!(k(&":".repeat(100)).is_err(), "300 bytes once escaped");
    }
}
