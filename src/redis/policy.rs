//! A limit set on the Redis provider: one script round trip per decision.
//!
//! Every limit of a key lives under the key's hash tag (`prefix:{key}:p:limit:b` and `:h`),
//! so the whole set is one slot, also on Redis Cluster, and one script checks every limit
//! and counts the request in all or none, atomically: as on the local provider, no limit
//! ever admits more than its quota, whatever the number of processes, and a refused request
//! spends nothing.

use std::sync::Arc;

use ::redis::Value;

use super::key::RedisKey;
use super::wire::{self, SetLimitArgs};
use super::{Core, TimeSource, scripts};
use crate::Error;
use crate::config::RateGroupSizeMs;
use crate::policy::{LimitSet, LimitStatus, MAX_LIMITS, Outcome, SetDecision, Strategy};
use crate::window::WindowGrid;

/// A limit set bound to the Redis provider: `rl.redis().policy(set)`. Cheap to clone.
#[derive(Clone)]
pub struct RedisPolicy {
    core: Arc<Core>,
    set: Arc<LimitSet>,
    limits: Arc<[SetLimitArgs]>,
}

impl std::fmt::Debug for RedisPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPolicy")
            .field("set", &self.set.to_string())
            .finish()
    }
}

impl RedisPolicy {
    pub(crate) fn new(core: Arc<Core>, set: LimitSet) -> Self {
        let limits = set
            .iter()
            .map(|limit| SetLimitArgs {
                grid: WindowGrid::new(
                    limit.quota().window(),
                    RateGroupSizeMs::try_from(limit.group_ms()).expect("a group is at least 1 ms"),
                )
                .expect("a limit's group fits its window"),
                suppressed: limit.strategy() == Strategy::Suppressed,
                cap: limit.quota().count(),
                hard: limit.quota().count() * limit.hard_limit_factor().get(),
                rate: limit.quota().rate().get(),
            })
            .collect();
        RedisPolicy {
            core,
            set: Arc::new(set),
            limits,
        }
    }

    /// The set this policy decides.
    pub fn limit_set(&self) -> &LimitSet {
        &self.set
    }

    /// Counts `cost` units for `key` in every limit of the set, or in none: one round trip.
    pub async fn inc(&self, key: &RedisKey, cost: u64) -> Result<SetDecision, Error> {
        self.call(key, cost, wire::SET_INC).await
    }

    /// What [`inc`](Self::inc) would answer now, recording nothing.
    pub async fn check(&self, key: &RedisKey, cost: u64) -> Result<SetDecision, Error> {
        self.call(key, cost, wire::SET_CHECK).await
    }

    async fn call(&self, key: &RedisKey, cost: u64, mode: &str) -> Result<SetDecision, Error> {
        if cost == 0 {
            return Err(Error::ZeroCount);
        }
        let names: Vec<_> = self
            .set
            .iter()
            .map(|limit| self.core.keys.limit_names(key, limit.name()))
            .collect();
        let keys: Vec<&str> = names
            .iter()
            .flat_map(|n| [n.buckets.as_str(), n.hash.as_str()])
            .collect();
        let now = match &self.core.time {
            TimeSource::Server => None,
            TimeSource::TestClock(clock) => Some(clock.now_ms()),
        };
        let draw = self.core.random.next_f64();
        let mut invocation = scripts::SET.prepare_invoke();
        wire::head(&mut invocation, &keys, now, &self.limits[0].grid, mode);
        wire::set_args(&mut invocation, cost, draw, &self.limits);
        let reply: Vec<Value> = self.core.conn.invoke(&invocation).await?;
        let (outcome, retry, parts) = wire::set_reply(&reply, self.limits.len())?;
        let mut decision = SetDecision {
            outcome: match outcome {
                0 => Outcome::Allowed,
                1 => Outcome::Rejected,
                _ => Outcome::Shed,
            },
            retry_after_ms: retry,
            len: self.limits.len() as u8,
            limits: [LimitStatus::default(); MAX_LIMITS],
        };
        for (i, (part, limit)) in parts.iter().zip(self.limits.iter()).enumerate() {
            decision.limits[i] = LimitStatus {
                remaining: (limit.cap - part.accepted as f64).max(0.0).floor() as u64,
                reset_ms: part.reset_ms,
                suppression_factor: part.factor,
                refused: part.refused,
            };
        }
        Ok(decision)
    }
}
