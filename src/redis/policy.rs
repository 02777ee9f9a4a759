//! A limit set on the Redis provider: one script round trip per decision.
//!
//! Every limit of a key lives under the key's hash tag (`prefix:{key}:p:limit:b` and `:h`),
//! so the whole set is one slot, also on Redis Cluster, and one script checks every limit
//! and counts the request in all or none, atomically: as on the local provider, no limit
//! ever admits more than its quota, whatever the number of processes, and a refused request
//! spends nothing.

use std::sync::Arc;

// Refunds (counting by outcome on limit sets): helper `ops`'s file.
#[path = "policy_refund.rs"]
mod refund;
pub(crate) use refund::{Span, refund_limit};

use ::redis::Value;

use super::key::RedisKey;
use super::wire::{self, SetLimitArgs, SetLimitReply};
use super::{Core, scripts};
use crate::Error;
use crate::Strategy;
use crate::config::RateGroupSizeMs;
use crate::policy::{LimitSet, LimitStatus, Outcome, SetDecision};
use crate::window::WindowGrid;

/// A limit set bound to the Redis provider: `rl.redis().policy(set)`. Cheap to clone.
#[derive(Clone)]
pub struct RedisPolicy {
    core: Arc<Core>,
    set: Arc<LimitSet>,
    limits: Arc<[SetLimitArgs]>,
}

/// One call's quota counts, when it gives its own (checked) ones.
type Counts<'a> = Option<&'a [f64]>;

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
        let keys = vec![key; self.limits.len()];
        self.one_call(&keys, None, cost, wire::SET_INC).await
    }

    /// What [`inc`](Self::inc) would answer now, recording nothing.
    pub async fn check(&self, key: &RedisKey, cost: u64) -> Result<SetDecision, Error> {
        let keys = vec![key; self.limits.len()];
        self.one_call(&keys, None, cost, wire::SET_CHECK).await
    }

    /// As [`inc`](Self::inc), with one key per limit, in the set's order (a per-IP limit
    /// beside a per-API-key one).
    ///
    /// On one Redis server this is still one script, atomic over every key. On Redis
    /// Cluster the keys live in different slots, which no script can span: the set is then
    /// decided in two passes, one script per distinct key in each. The first pass checks
    /// every key and counts nothing; a request any limit refuses there counts nowhere. The
    /// second counts, key by key in the set's order, each key's limits atomically, and stops
    /// at the first key that refuses. So no limit ever admits more than its quota, as
    /// everywhere; the one cost of the split is a race: when another request takes the
    /// last unit of a later key between the two passes, this request is refused but has
    /// already counted in the earlier keys' limits, and holds that `cost` there until its
    /// bucket leaves their windows (at most window + group). It takes 2 round trips per
    /// distinct key.
    pub async fn inc_each(&self, keys: &[&RedisKey], cost: u64) -> Result<SetDecision, Error> {
        self.each(keys, None, cost, true).await
    }

    /// What [`inc_each`](Self::inc_each) would answer now, recording nothing (on Cluster,
    /// one check per distinct key).
    pub async fn check_each(&self, keys: &[&RedisKey], cost: u64) -> Result<SetDecision, Error> {
        self.each(keys, None, cost, false).await
    }

    /// As [`inc_each`](Self::inc_each), with this call's quota count for each limit, in the
    /// set's order: a rate resolved per request (plans by API key). Each limit keeps its
    /// window, group and strategy (and so its Redis keys); only its count per window (its
    /// rate, and a suppressed limit's hard limit) is the call's. Counts are checked as on
    /// the local provider ([`LocalPolicy::inc_with`](crate::policy::LocalPolicy::inc_with)),
    /// before any round trip.
    pub async fn inc_with(
        &self,
        keys: &[&RedisKey],
        counts: &[f64],
        cost: u64,
    ) -> Result<SetDecision, Error> {
        self.set.check_counts(counts)?;
        self.each(keys, Some(counts), cost, true).await
    }

    /// What [`inc_with`](Self::inc_with) would answer now, recording nothing.
    pub async fn check_with(
        &self,
        keys: &[&RedisKey],
        counts: &[f64],
        cost: u64,
    ) -> Result<SetDecision, Error> {
        self.set.check_counts(counts)?;
        self.each(keys, Some(counts), cost, false).await
    }

    /// `inc_each` (`count`) or `check_each`, with the call's counts or the set's.
    async fn each(
        &self,
        keys: &[&RedisKey],
        counts: Counts<'_>,
        cost: u64,
        count: bool,
    ) -> Result<SetDecision, Error> {
        self.set.check_keys(keys.len())?;
        let mode = if count {
            wire::SET_INC
        } else {
            wire::SET_CHECK
        };
        let distinct = distinct_keys(keys);
        if distinct.len() == 1 || !self.core.conn.is_cluster() {
            return self.one_call(keys, counts, cost, mode).await;
        }
        let mut parts: Vec<Option<SetLimitReply>> = vec![None; self.limits.len()];
        // Pass 1: check every key, count nothing.
        let (mut outcome, mut retry) = self
            .pass(keys, &distinct, counts, cost, wire::SET_CHECK, &mut parts)
            .await?;
        if count && outcome != 1 {
            // Pass 2: count, key by key, until one refuses. (A check reports a suppressed
            // limit in its shedding range as shedding, since its admission is a draw the
            // count makes: only an outright refusal stops a request at the check.)
            (outcome, retry) = self
                .pass(keys, &distinct, counts, cost, wire::SET_INC, &mut parts)
                .await?;
        }
        let parts: Vec<SetLimitReply> = parts
            .into_iter()
            .map(|p| p.expect("every limit decided"))
            .collect();
        Ok(self.decision(outcome, retry, counts, &parts))
    }

    /// One script per distinct key, in order, each over that key's limits, filling `parts`;
    /// a counting pass stops at the first key that does not admit. Returns the outcome
    /// (rejected outranks shed, which outranks allowed) and the longest wait.
    async fn pass(
        &self,
        keys: &[&RedisKey],
        distinct: &[&RedisKey],
        counts: Counts<'_>,
        cost: u64,
        mode: &str,
        parts: &mut [Option<SetLimitReply>],
    ) -> Result<(u8, u64), Error> {
        let (mut outcome, mut retry) = (0u8, 0u64);
        for key in distinct {
            let limits: Vec<usize> = (0..keys.len()).filter(|i| keys[*i] == *key).collect();
            let (o, r, replies) = self.run(keys, &limits, counts, cost, mode).await?;
            for (i, reply) in limits.iter().zip(replies) {
                parts[*i] = Some(reply);
            }
            outcome = match (outcome, o) {
                (1, _) | (_, 1) => 1,
                (2, _) | (_, 2) => 2,
                _ => 0,
            };
            if o != 0 {
                retry = retry.max(r);
                if mode == wire::SET_INC {
                    break;
                }
            }
        }
        Ok((outcome, retry))
    }

    /// One script over every limit, each on its own key (one slot, or one server).
    async fn one_call(
        &self,
        keys: &[&RedisKey],
        counts: Counts<'_>,
        cost: u64,
        mode: &str,
    ) -> Result<SetDecision, Error> {
        let all: Vec<usize> = (0..self.limits.len()).collect();
        let (outcome, retry, parts) = self.run(keys, &all, counts, cost, mode).await?;
        Ok(self.decision(outcome, retry, counts, &parts))
    }

    /// Limit `i`'s script arguments for a call: the set's, or with the call's count.
    fn args(&self, i: usize, counts: Counts<'_>) -> SetLimitArgs {
        let limit = self.limits[i];
        match counts {
            None => limit,
            Some(counts) => SetLimitArgs {
                cap: counts[i],
                hard: counts[i] * self.set.limits()[i].hard_limit_factor().get(),
                rate: counts[i] / limit.grid.window_seconds() as f64,
                ..limit
            },
        }
    }

    /// The set script over the limits `which` (positions in the set), limit `i` on `keys[i]`.
    async fn run(
        &self,
        keys: &[&RedisKey],
        which: &[usize],
        counts: Counts<'_>,
        cost: u64,
        mode: &str,
    ) -> Result<(u8, u64, Vec<SetLimitReply>), Error> {
        if cost == 0 {
            return Err(Error::ZeroCount);
        }
        let names: Vec<_> = which
            .iter()
            .map(|i| {
                self.core
                    .keys
                    .limit_names(keys[*i], self.set.limits()[*i].name())
            })
            .collect();
        let redis_keys: Vec<&str> = names
            .iter()
            .flat_map(|n| [n.buckets.as_str(), n.hash.as_str()])
            .collect();
        let limits: Vec<SetLimitArgs> = which.iter().map(|i| self.args(*i, counts)).collect();
        let now = self.core.script_now();
        let draw = self.core.random.next_f64();
        let mut invocation = scripts::SET.prepare_invoke();
        wire::head(&mut invocation, &redis_keys, now, &limits[0].grid, mode);
        wire::set_args(&mut invocation, cost, draw, &limits);
        let reply: Vec<Value> = self.core.conn.invoke(&invocation).await?;
        wire::set_reply(&reply, limits.len())
    }

    fn decision(
        &self,
        outcome: u8,
        retry: u64,
        counts: Counts<'_>,
        parts: &[SetLimitReply],
    ) -> SetDecision {
        let mut decision = SetDecision {
            outcome: match outcome {
                0 => Outcome::Allowed,
                1 => Outcome::Rejected,
                _ => Outcome::Shed,
            },
            retry_after_ms: retry,
            ..SetDecision::empty(self.limits.len())
        };
        for (i, part) in parts.iter().enumerate() {
            decision.limits[i] = LimitStatus {
                remaining: LimitStatus::remaining_of(self.args(i, counts).cap, part.accepted),
                reset_ms: part.reset_ms,
                suppression_factor: part.factor,
                refused: part.refused,
            };
        }
        decision
    }
}

/// The distinct keys, in the order of their first limit.
fn distinct_keys<'a>(keys: &[&'a RedisKey]) -> Vec<&'a RedisKey> {
    let mut distinct: Vec<&RedisKey> = Vec::new();
    for key in keys {
        if !distinct.contains(key) {
            distinct.push(key);
        }
    }
    distinct
}
