//! `rl.redis().absolute()`: the absolute strategy, one script round trip per decision.

use std::sync::Arc;

use ::redis::Value;

use super::key::{RedisKey, StrategyTag};
use super::{Core, KeyUsage, core_of, scripts, wire};
use crate::call::checked_capacity;
use crate::{Error, RateLimit, RateLimitDecision};

/// `rl.redis().absolute()`: admit up to `rate × window` per key across every instance that
/// shares the Redis keys; a refusal says how long to wait.
#[derive(Debug, Clone)]
pub struct AbsoluteRedisRateLimiter {
    pub(super) core: Option<Arc<Core>>,
}

impl AbsoluteRedisRateLimiter {
    /// Admits `count` units for `key` iff the window's admitted usage plus `count` fits
    /// `rate × window`; check and record are one atomic script on the server, timed by the
    /// server's clock.
    ///
    /// # Errors
    /// [`Error::ZeroCount`], [`Error::CapacityBelowOne`] and [`Error::CountAboveCapacity`]
    /// for a call that can never be served (nothing is sent to Redis); [`Error::Redis`] or
    /// [`Error::RedisTimeout`] when Redis fails or does not answer in time;
    /// [`Error::RedisNotConfigured`] on a limiter built without Redis.
    pub async fn inc(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<RateLimitDecision, Error> {
        Ok(self.inc_with_usage(key, rate, count).await?.0)
    }

    /// [`inc`](Self::inc), with the key's usage after an admitted call (`None` for a
    /// rejection) from the same script: no second round trip.
    ///
    /// # Errors
    /// As [`inc`](Self::inc).
    pub async fn inc_with_usage(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<(RateLimitDecision, Option<KeyUsage>), Error> {
        let core = core_of(&self.core)?;
        let rate = rate.get();
        let cap = checked_capacity(rate, core.settings.grid.window_seconds(), count)?;
        let names = core.keys.names(key, StrategyTag::Absolute);
        let mut invocation = scripts::ABSOLUTE.prepare_invoke();
        core.head(&mut invocation, &names, wire::ABSOLUTE_INC);
        wire::absolute_inc(&mut invocation, rate, count, cap);
        let reply: Vec<Value> = core.conn.invoke(&invocation).await?;
        let window_s = core.settings.grid.window_seconds();
        let (decision, usage) = wire::absolute_reply_with_usage(&reply, window_s)?;
        Ok((
            decision,
            usage.map(|(used, reset_ms)| KeyUsage::new(cap, used, reset_ms, window_s)),
        ))
    }

    /// Whether `inc(key, rate, 1)` at the key's latest rate would be admitted now, with the
    /// wait if not. Records nothing; an unknown key is `Allowed`.
    pub async fn is_allowed(&self, key: &RedisKey) -> Result<RateLimitDecision, Error> {
        let core = core_of(&self.core)?;
        let names = core.keys.names(key, StrategyTag::Absolute);
        let mut invocation = scripts::ABSOLUTE.prepare_invoke();
        core.head(&mut invocation, &names, wire::ABSOLUTE_CHECK);
        let reply: Vec<Value> = core.conn.invoke(&invocation).await?;
        wire::absolute_reply(&reply, core.settings.grid.window_seconds())
    }
}
