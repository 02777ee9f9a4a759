//! `rl.redis().absolute()`: the absolute strategy, one script round trip per decision.

use std::sync::Arc;

use ::redis::Value;

use super::key::{RedisKey, Strategy};
use super::scripts::{self, argv};
use super::{Core, core_of};
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
        let core = core_of(&self.core)?;
        let rate = rate.get();
        let cap = checked_capacity(rate, core.settings.grid.window_seconds(), count)?;
        let names = core.keys.names(key, Strategy::Absolute);
        let mut invocation = scripts::ABSOLUTE.prepare_invoke();
        core.common_args(&mut invocation, &names, argv::ABSOLUTE_INC);
        invocation.arg(rate).arg(count).arg(cap);
        let reply: Vec<Value> = core.conn.invoke(&invocation).await?;
        decision(&reply, core.settings.grid.window_seconds())
    }

    /// Whether `inc(key, rate, 1)` at the key's latest rate would be admitted now, with the
    /// wait if not. Records nothing; an unknown key is `Allowed`.
    pub async fn is_allowed(&self, key: &RedisKey) -> Result<RateLimitDecision, Error> {
        let core = core_of(&self.core)?;
        let names = core.keys.names(key, Strategy::Absolute);
        let mut invocation = scripts::ABSOLUTE.prepare_invoke();
        core.common_args(&mut invocation, &names, argv::ABSOLUTE_CHECK);
        let reply: Vec<Value> = core.conn.invoke(&invocation).await?;
        decision(&reply, core.settings.grid.window_seconds())
    }
}

fn decision(reply: &[Value], window_size_seconds: u64) -> Result<RateLimitDecision, Error> {
    match reply {
        [Value::Int(0)] => Ok(RateLimitDecision::Allowed),
        [Value::Int(1), Value::Int(wait), Value::Int(left)] => Ok(RateLimitDecision::Rejected {
            window_size_seconds,
            retry_after_ms: u64::try_from(*wait).unwrap_or(u64::MAX),
            remaining_after_waiting: u64::try_from(*left).unwrap_or(0),
        }),
        other => Err(Error::UnexpectedReply(format!(
            "absolute script answered {other:?}"
        ))),
    }
}
