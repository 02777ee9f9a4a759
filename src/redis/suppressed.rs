//! `rl.redis().suppressed()`: probabilistic shedding, one script round trip per decision.

use std::sync::Arc;

use ::redis::Value;

use super::key::{RedisKey, StrategyTag};
use super::{Core, KeyUsage, core_of, scripts, wire};
use crate::call::checked_capacity;
use crate::{Error, RateLimit, RateLimitDecision};

/// `rl.redis().suppressed()`: below capacity everything is admitted; between capacity and
/// the hard limit a share of calls equal to the suppression factor is shed; over the hard
/// limit everything is. State is shared by every instance through Redis.
///
/// The admission draw is taken in the process (from the limiter's
/// [`RandomSource`](crate::RandomSource)) before the call and sent with it, one draw per
/// `inc`, so the decision stays one round trip; the script uses it only when the decision
/// is probabilistic. The cached factor lives in Redis, shared by every instance, and is
/// dropped with the key's state once its window is empty.
#[derive(Debug, Clone)]
pub struct SuppressedRedisRateLimiter {
    pub(super) core: Option<Arc<Core>>,
}

impl SuppressedRedisRateLimiter {
    /// Decides one call: `Allowed` below capacity, `Suppressed { is_allowed, .. }` above it
    /// (always check `is_allowed`). Every call counts as observed.
    ///
    /// # Errors
    /// As [`AbsoluteRedisRateLimiter::inc`](super::AbsoluteRedisRateLimiter::inc).
    pub async fn inc(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<RateLimitDecision, Error> {
        Ok(self.inc_with_usage(key, rate, count).await?.0)
    }

    /// [`inc`](Self::inc), with the key's usage after the call (accepted units; `Some` for
    /// every decision) from the same script: no second round trip.
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
        let names = core.keys.names(key, StrategyTag::Suppressed);
        let draw = core.random.next_f64();
        let mut invocation = scripts::SUPPRESSED.prepare_invoke();
        core.head(&mut invocation, &names, wire::SUPPRESSED_INC);
        wire::suppressed_params(&mut invocation, &core.settings.suppression);
        wire::suppressed_inc(&mut invocation, rate, count, cap, draw);
        let reply: Vec<Value> = core.conn.invoke(&invocation).await?;
        let window_s = core.settings.grid.window_seconds();
        let (decision, (used, reset_ms)) = wire::suppressed_reply_with_usage(&reply, window_s)?;
        Ok((decision, Some(KeyUsage::new(cap, used, reset_ms, window_s))))
    }

    /// The key's suppression factor now, in `[0, 1]`, at its latest rate: 0 below capacity
    /// or for an unknown key, 1 over the hard limit. Never cached; records nothing.
    pub async fn get_suppression_factor(&self, key: &RedisKey) -> Result<f64, Error> {
        let core = core_of(&self.core)?;
        let names = core.keys.names(key, StrategyTag::Suppressed);
        let mut invocation = scripts::SUPPRESSED.prepare_invoke();
        core.head(&mut invocation, &names, wire::SUPPRESSED_FACTOR);
        wire::suppressed_params(&mut invocation, &core.settings.suppression);
        let reply: Value = core.conn.invoke(&invocation).await?;
        wire::factor_reply(&reply)
    }
}
