//! `rl.redis().suppressed()`: probabilistic shedding, one script round trip per decision.

use std::sync::Arc;

use ::redis::Value;

use super::key::{RedisKey, Strategy};
use super::scripts::{self, argv};
use super::{Core, core_of};
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
        let core = core_of(&self.core)?;
        let rate = rate.get();
        let cap = checked_capacity(rate, core.settings.grid.window_seconds(), count)?;
        let names = core.keys.names(key, Strategy::Suppressed);
        let draw = core.random.next_f64();
        let mut invocation = scripts::SUPPRESSED.prepare_invoke();
        core.common_args(&mut invocation, &names, argv::SUPPRESSED_INC);
        invocation
            .arg(core.settings.suppression.hard_limit_factor)
            .arg(core.settings.suppression.cache_ms)
            .arg(rate)
            .arg(count)
            .arg(cap)
            .arg(draw);
        let reply: Vec<Value> = core.conn.invoke(&invocation).await?;
        match reply.as_slice() {
            [Value::Int(0)] => Ok(RateLimitDecision::Allowed),
            [Value::Int(1), Value::Int(allowed), factor] => Ok(RateLimitDecision::Suppressed {
                suppression_factor: parse_factor(factor)?,
                is_allowed: *allowed == 1,
            }),
            other => Err(Error::UnexpectedReply(format!(
                "suppressed script answered {other:?}"
            ))),
        }
    }

    /// The key's suppression factor now, in `[0, 1]`, at its latest rate: 0 below capacity
    /// or for an unknown key, 1 over the hard limit. Never cached; records nothing.
    pub async fn get_suppression_factor(&self, key: &RedisKey) -> Result<f64, Error> {
        let core = core_of(&self.core)?;
        let names = core.keys.names(key, Strategy::Suppressed);
        let mut invocation = scripts::SUPPRESSED.prepare_invoke();
        core.common_args(&mut invocation, &names, argv::SUPPRESSED_FACTOR);
        invocation
            .arg(core.settings.suppression.hard_limit_factor)
            .arg(core.settings.suppression.cache_ms);
        let reply: Value = core.conn.invoke(&invocation).await?;
        parse_factor(&reply)
    }
}

fn parse_factor(value: &Value) -> Result<f64, Error> {
    let text = match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text.as_str()),
        _ => None,
    };
    text.and_then(|t| t.parse::<f64>().ok())
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| {
            Error::UnexpectedReply(format!("suppressed script answered {value:?} for a factor"))
        })
}
