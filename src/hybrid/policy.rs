//! A limit set on the hybrid provider: `rl.hybrid().policy(set)`, decided from memory.
//!
//! Each limit of the set keeps, per key, the hybrid key state of its strategy (the lease,
//! provisional and outage modes of `mode.rs`, decided by `absolute.rs` and `suppressed.rs`
//! on the limit's own window and grouping), in a store of its own. A decision locks the
//! shard of each limit's key in the set's order (as the local sets do, so two callers never
//! wait on each other), asks every limit for its verdict without recording anything, then
//! counts the request in every limit or in none, and unlocks: no I/O, no refused request
//! counted by any limit of this instance. The committer sends each (key, limit) pair it
//! finds dirty in its cycle with the single-limit keys, one flush-and-refresh script per
//! pair, into the same Redis keys the Redis provider's sets use (`prefix:{key}:p:name:b` and
//! `:h`, the lease beside them in `:l`): a hybrid set and a Redis set of the same limits
//! count together.
//!
//! # How far several instances can over-admit
//! Each limit is held to the single-limit bound (see the [module docs](super)): its leases
//! are reserved in Redis, so a limit of capacity `C` and rate `r` admits at most
//! `C + N × max(1, r × (T + sync_interval))` in its window across `N` instances that start
//! on the key together and get their first refresh `T` later; the limits do not add to
//! each other's excess, since an instance admits a request only within every limit's
//! lease. A request refused by one limit spends nothing in the others, on every instance:
//! the all-or-nothing decision is local, and the counts reach Redis only afterwards.
//! `tests/policy_hybrid.rs` runs four instances on a per-IP limit of 1000 and per-API-key
//! limits of 150: measured 1000–1016 on the IP, at most 152 on a key, and Redis counts
//! exactly what was admitted.
//!
//! # Under-admission: leases split two ways
//! An instance's lease in one limit is spent only where its lease in every other limit of
//! the request has room too. A lease it cannot spend that way (its API key's lease is
//! used up, say) would stay reserved and starve the other instances, whose unspendable
//! leases may starve it in turn (measured before the fix below: 756 of 1000 admitted, for
//! good). So as a key's refresh is sent, the instance keeps of its unspent lease only what
//! it spent since the previous refresh (at least the largest call it could not fit),
//! spends no more until the reply, and Redis shares the rest. A set under contention
//! still fills more slowly than one limit would: in the test above the IP limit fills in
//! 2–4 s with 30 000 requests a second offered.
//!
//! Suppressed limits shed as the single-limit hybrid does (the Redis-wide factor past the
//! lease); a shed counts as observed in the limits that shed it, as on every provider.
//! The wait of a limit over its hard limit is not known from the sums a refresh returns:
//! it is reported as 1 s (at most the window), the factor's own time scale.

use std::sync::{Arc, Weak};

// Refunds (counting by outcome on limit sets): helper `ops`'s file.
#[path = "policy_refund.rs"]
mod refund;

use compact_str::CompactString;

use super::absolute::AbsoluteKey;
use super::core::HybridCore;
use super::flush::KeyJob;
use super::key::{Job, KeyState};
use super::mode::{Conditions, Now, Refresh, View};
use super::suppressed::SuppressedKey;
use super::walk::for_each;
use crate::call::Call;
use crate::config::{RateGroupSizeMs, capacity};
use crate::local::store::KeyStore;
use crate::policy::{LimitSet, LimitStatus, MAX_LIMITS, Outcome, SetDecision};
use crate::redis::{KeyNames, KeyUsage, RedisKey, StrategyTag};
use crate::settings::SuppressionParams;
use crate::suppressed::Regime;
use crate::window::{Counts, Usage, WindowGrid};
use crate::{Error, Strategy};

/// The span a shed request's wait is given in when no bucket tells better (the factor's
/// "last second"), at most the window.
const SHED_WAIT_MS: u64 = 1000;

/// A limit set bound to the hybrid provider: `rl.hybrid().policy(set)`. Cheap to clone;
/// clones share their counts.
#[derive(Clone)]
pub struct HybridPolicy {
    inner: Arc<PolicyEngine>,
}

impl std::fmt::Debug for HybridPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridPolicy")
            .field("set", &self.inner.set.to_string())
            .finish()
    }
}

/// What the callers and the committer share of one policy.
pub(crate) struct PolicyEngine {
    core: Arc<HybridCore>,
    set: LimitSet,
    limits: Box<[HybridLimit]>,
}

/// One limit: its window, its numbers and its keys.
struct HybridLimit {
    grid: WindowGrid,
    params: SuppressionParams,
    cap: f64,
    rate: f64,
    strategy: Strategy,
    keys: KeyStore<LimitKey>,
}

/// One key's state under one limit: the hybrid key state of the limit's strategy.
#[derive(Debug)]
enum LimitKey {
    Absolute(AbsoluteKey),
    Suppressed(SuppressedKey),
}

/// What one limit says before the set decides.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Admit,
    /// Suppressed, between quota and hard limit: admitted iff the draw is at least this.
    Draw(f64),
    /// Absolute: refused, with the wait until it would admit the call.
    Refuse(u64),
    /// Suppressed: over the hard limit (or a cost above the quota), with a wait.
    ShedHard(u64),
}

impl HybridPolicy {
    pub(crate) fn new(core: Arc<HybridCore>, set: LimitSet) -> Self {
        let limits = set
            .iter()
            .map(|limit| HybridLimit {
                grid: WindowGrid::new(
                    limit.quota().window(),
                    RateGroupSizeMs::try_from(limit.group_ms()).expect("a group is at least 1 ms"),
                )
                .expect("a limit's group fits its window"),
                params: SuppressionParams {
                    hard_limit_factor: limit.hard_limit_factor().get(),
                    // As the local and Redis sets: a set's factor is never cached.
                    cache_ms: 0,
                },
                cap: limit.quota().count(),
                rate: limit.quota().rate().get(),
                strategy: limit.strategy(),
                keys: KeyStore::default(),
            })
            .collect();
        let inner = Arc::new(PolicyEngine { core, set, limits });
        inner.core.register(Arc::downgrade(&inner));
        HybridPolicy { inner }
    }

    /// The set this policy decides.
    pub fn limit_set(&self) -> &LimitSet {
        &self.inner.set
    }

    /// Counts `cost` units for `key` in every limit of the set, or in none, from this
    /// instance's state: no I/O (the committer sends the counts).
    ///
    /// # Errors
    /// [`Error::ZeroCount`] for a cost of 0.
    pub fn inc(&self, key: &RedisKey, cost: u64) -> Result<SetDecision, Error> {
        self.inner.decide(|_| key, None, cost, true)
    }

    /// As [`inc`](Self::inc), with one key per limit, in the set's order (a per-IP limit
    /// beside a per-API-key one). Still decided at once under every key's lock, on Redis
    /// Cluster too: the keys' slots do not matter to a decision taken in memory.
    ///
    /// # Errors
    /// As [`inc`](Self::inc); [`Error::InvalidValue`] unless there is one key per limit.
    pub fn inc_each(&self, keys: &[&RedisKey], cost: u64) -> Result<SetDecision, Error> {
        self.inner.set.check_keys(keys.len())?;
        self.inner.decide(|i| keys[i], None, cost, true)
    }

    /// What [`inc`](Self::inc) would answer now, recording nothing and creating no key. A
    /// suppressed limit between its quota and its hard limit reports `Shed` here (its
    /// admission would be a draw).
    ///
    /// # Errors
    /// As [`inc`](Self::inc).
    pub fn check(&self, key: &RedisKey, cost: u64) -> Result<SetDecision, Error> {
        self.inner.decide(|_| key, None, cost, false)
    }

    /// [`check`](Self::check) with one key per limit.
    ///
    /// # Errors
    /// As [`inc_each`](Self::inc_each).
    pub fn check_each(&self, keys: &[&RedisKey], cost: u64) -> Result<SetDecision, Error> {
        self.inner.set.check_keys(keys.len())?;
        self.inner.decide(|i| keys[i], None, cost, false)
    }

    /// As [`inc_each`](Self::inc_each), at this call's quota `counts`, one per limit in the
    /// set's order (a plan per API key): each limit's window, group and strategy stay its
    /// own; its rate is `count / window` (a suppressed limit's hard limit `count × factor`).
    /// The same signature as the local and Redis sets' `inc_with`.
    ///
    /// # Errors
    /// As [`inc_each`](Self::inc_each); [`Error::InvalidValue`] unless there is one finite
    /// count per limit, [`Error::CapacityBelowOne`] for a count below 1.
    pub fn inc_with(
        &self,
        keys: &[&RedisKey],
        counts: &[f64],
        cost: u64,
    ) -> Result<SetDecision, Error> {
        self.inner.with(keys, counts, cost, true)
    }

    /// What [`inc_with`](Self::inc_with) would answer now, recording nothing.
    ///
    /// # Errors
    /// As [`inc_with`](Self::inc_with).
    pub fn check_with(
        &self,
        keys: &[&RedisKey],
        counts: &[f64],
        cost: u64,
    ) -> Result<SetDecision, Error> {
        self.inner.with(keys, counts, cost, false)
    }

    /// How many (key, limit) pairs this instance holds in memory.
    pub fn key_count(&self) -> usize {
        self.inner.limits.iter().map(|l| l.keys.len()).sum()
    }
}

impl PolicyEngine {
    /// `inc_with` (`record`) or `check_with`: the keys and counts checked, then decided.
    fn with(
        &self,
        keys: &[&RedisKey],
        counts: &[f64],
        cost: u64,
        record: bool,
    ) -> Result<SetDecision, Error> {
        self.set.check_keys(keys.len())?;
        self.set.check_counts(counts)?;
        self.decide(|i| keys[i], Some(counts), cost, record)
    }

    /// One decision: limit `i` on `key(i)`, at this call's quota count `counts[i]` if given
    /// (else the limit's own).
    fn decide<'k>(
        &self,
        key: impl Fn(usize) -> &'k RedisKey,
        counts: Option<&[f64]>,
        cost: u64,
        record: bool,
    ) -> Result<SetDecision, Error> {
        if cost == 0 {
            return Err(Error::ZeroCount);
        }
        let core = &self.core;
        core.ensure_started();
        let now = core.now();
        let n = self.limits.len();
        let healthy = core.conditions().healthy;
        let conditions = |limit| HybridLimit::conditions(limit, core.sync_ms, healthy);
        // Locked in the set's order: see the module docs.
        let mut locks: [Option<_>; MAX_LIMITS] = Default::default();
        for (i, limit) in self.limits.iter().enumerate() {
            locks[i] = Some(limit.keys.lock(key(i).as_str()));
        }
        let call = |i: usize| self.limits[i].call(now, cost, counts.map(|c| c[i]));
        let mut verdicts = [Verdict::Admit; MAX_LIMITS];
        for (i, limit) in self.limits.iter().enumerate() {
            let lock = locks[i].as_mut().expect("locked above");
            let name = key(i).as_str();
            let c = conditions(limit);
            verdicts[i] = match lock.get(name) {
                Some(state) => limit.verdict(state, &c, now, call(i)),
                // A check creates no key: a new one is judged as it would start.
                None if !record => limit.verdict(&mut limit.new_key(now), &c, now, call(i)),
                None => {
                    let state = lock.get_or_insert_with(name, || limit.new_key(now));
                    limit.verdict(state, &c, now, call(i))
                }
            };
        }

        let refused_outright = |v: &Verdict| matches!(v, Verdict::Refuse(_) | Verdict::ShedHard(_));
        let rejected = verdicts[..n]
            .iter()
            .any(|v| matches!(v, Verdict::Refuse(_)));
        // One draw decides every drawing limit of a request no limit refused outright (each
        // admits iff the draw is at least its factor); a check never draws.
        let drawing = !verdicts[..n].iter().any(refused_outright)
            && verdicts[..n].iter().any(|v| matches!(v, Verdict::Draw(_)));
        let draw = if drawing && record {
            core.core.random.next_f64()
        } else {
            0.0
        };
        let shed = |v: &Verdict| match v {
            Verdict::ShedHard(_) => true,
            Verdict::Draw(factor) => drawing && (!record || draw < *factor),
            _ => false,
        };
        let outcome = if rejected {
            Outcome::Rejected
        } else if verdicts[..n].iter().any(shed) {
            Outcome::Shed
        } else {
            Outcome::Allowed
        };

        let mut decision = SetDecision {
            outcome,
            retry_after_ms: 0,
            ..SetDecision::empty(n)
        };
        for (i, limit) in self.limits.iter().enumerate() {
            let lock = locks[i].as_mut().expect("locked above");
            let c = conditions(limit);
            let verdict = verdicts[i];
            let refused =
                refused_outright(&verdict) || (outcome == Outcome::Shed && shed(&verdict));
            let call = call(i);
            let usage = match lock.get(key(i).as_str()) {
                Some(state) => {
                    if record {
                        limit.count(state, &c, now, call, outcome, refused);
                    }
                    state.usage(&c, now)
                }
                None => KeyUsage::new(call.cap, 0, 0, limit.grid.window_seconds()),
            };
            let window_ms = limit.grid.window_seconds() * 1000;
            let wait = match verdict {
                Verdict::Refuse(wait) | Verdict::ShedHard(wait) => wait,
                _ => SHED_WAIT_MS.min(window_ms),
            };
            if refused {
                decision.retry_after_ms = decision.retry_after_ms.max(wait);
            }
            decision.limits[i] = LimitStatus {
                remaining: usage.remaining,
                reset_ms: if refused {
                    wait.min(window_ms)
                } else {
                    usage.reset_ms
                },
                suppression_factor: match verdict {
                    Verdict::Draw(factor) => factor,
                    Verdict::ShedHard(_) => 1.0,
                    _ => 0.0,
                },
                refused,
            };
        }
        Ok(decision)
    }

    /// Adds a job for every dirty (key, limit) pair, after dropping what left the windows;
    /// returns the accepted units dropped so.
    fn jobs(self: &Arc<Self>, now: Now, next_seq: &dyn Fn() -> u64, jobs: &mut Vec<KeyJob>) -> u64 {
        let mut expired = 0;
        for (index, limit) in self.limits.iter().enumerate() {
            for_each(&limit.keys, |key, state| {
                expired += state.drop_expired(&limit.grid, now.server);
                if state.is_dirty() {
                    // Only on a key being refreshed: the reply gives it a new lease.
                    state.lease_to_demand();
                    let job = state.job(now.local, next_seq);
                    let dest = Dest::Limit(self.clone(), index);
                    jobs.push((key.clone(), dest, job));
                }
            });
        }
        expired
    }
}

impl HybridLimit {
    /// What a decision on this limit reads: its grid and knobs, Redis's health.
    fn conditions(&self, sync_ms: u64, healthy: bool) -> Conditions<'_> {
        Conditions {
            grid: &self.grid,
            params: &self.params,
            sync_ms,
            healthy,
        }
    }

    /// The call a cost makes on this limit, at this call's quota `count` if given.
    fn call(&self, now: Now, cost: u64, count: Option<f64>) -> Call {
        let (rate, cap) = match count {
            Some(count) => (count / self.grid.window_seconds() as f64, count),
            None => (self.rate, self.cap),
        };
        Call {
            now_ms: now.server,
            rate,
            count: cost,
            cap,
        }
    }

    fn new_key(&self, now: Now) -> LimitKey {
        match self.strategy {
            Strategy::Absolute => {
                LimitKey::Absolute(AbsoluteKey::new(self.rate, self.cap, now.local))
            }
            Strategy::Suppressed => {
                LimitKey::Suppressed(SuppressedKey::new(self.rate, self.cap, now.local))
            }
        }
    }

    /// What this limit says of `cost` more units on the key's state.
    fn verdict(&self, state: &mut LimitKey, c: &Conditions<'_>, now: Now, call: Call) -> Verdict {
        let never = u64::MAX;
        let fits_at_all = capacity::fits(call.count, call.cap);
        match state {
            LimitKey::Absolute(_) if !fits_at_all => Verdict::Refuse(never),
            LimitKey::Absolute(key) => match key.verdict(c, now, call) {
                Ok(()) => Verdict::Admit,
                Err(wait) => Verdict::Refuse(wait),
            },
            LimitKey::Suppressed(_) if !fits_at_all => Verdict::ShedHard(never),
            LimitKey::Suppressed(key) => match key.verdict(c, now, call) {
                (Regime::UnderCapacity, _) => Verdict::Admit,
                (Regime::Shedding, factor) => Verdict::Draw(factor),
                (Regime::OverHardLimit, _) => {
                    Verdict::ShedHard(SHED_WAIT_MS.min(self.grid.window_seconds() * 1000))
                }
            },
        }
    }

    /// Counts the decided request in this limit: every limit when allowed; only the limits
    /// that shed it (as observed) when shed; none when rejected.
    fn count(
        &self,
        state: &mut LimitKey,
        c: &Conditions<'_>,
        now: Now,
        call: Call,
        outcome: Outcome,
        refused: bool,
    ) {
        match (state, outcome) {
            (LimitKey::Absolute(key), Outcome::Allowed) => key.admit(c, now, call),
            (LimitKey::Suppressed(key), Outcome::Allowed) => {
                key.record(c, now, call.count, call.count);
            }
            (LimitKey::Suppressed(key), Outcome::Shed)
                if refused && capacity::fits(call.count, call.cap) =>
            {
                key.record(c, now, 0, call.count);
            }
            _ => {}
        }
    }
}

impl LimitKey {
    fn lease_to_demand(&mut self) {
        match self {
            LimitKey::Absolute(key) => key.lease_to_demand(),
            LimitKey::Suppressed(key) => key.lease_to_demand(),
        }
    }

    fn usage(&mut self, c: &Conditions<'_>, now: Now) -> KeyUsage {
        match self {
            LimitKey::Absolute(key) => key.usage_now(c, now),
            LimitKey::Suppressed(key) => key.usage_now(c, now),
        }
    }

    fn is_dirty(&self) -> bool {
        match self {
            LimitKey::Absolute(key) => key.is_dirty(),
            LimitKey::Suppressed(key) => key.is_dirty(),
        }
    }

    fn drop_expired(&mut self, grid: &WindowGrid, server_now: u64) -> u64 {
        match self {
            LimitKey::Absolute(key) => key.drop_expired(grid, server_now),
            LimitKey::Suppressed(key) => key.drop_expired(grid, server_now),
        }
    }

    fn job(&mut self, now_local: u64, next_seq: &dyn Fn() -> u64) -> Job<Usage> {
        match self {
            LimitKey::Absolute(key) => key.job(now_local, next_seq).into_usage(),
            LimitKey::Suppressed(key) => key.job(now_local, next_seq),
        }
    }

    fn refreshed(&mut self, seq: u64, refresh: Refresh) {
        match self {
            LimitKey::Absolute(key) => key.refreshed(seq, refresh),
            LimitKey::Suppressed(key) => key.refreshed(seq, refresh),
        }
    }

    fn floor_to_own(&mut self, grid: &WindowGrid, view: &mut View) -> bool {
        match self {
            LimitKey::Absolute(key) => key.floor_to_own(grid, view),
            LimitKey::Suppressed(key) => key.floor_to_own(grid, view),
        }
    }

    fn idle(&mut self, grid: &WindowGrid, now: Now) -> bool {
        match self {
            LimitKey::Absolute(key) => key.idle(grid, now),
            LimitKey::Suppressed(key) => key.idle(grid, now),
        }
    }
}

impl<S, C: Counts> KeyState<S, C> {
    /// A limit of a set may hold a lease it cannot spend: another limit refuses this
    /// instance's requests (a hot API key behind an IP, say). Reserved in Redis, such a lease
    /// starves the other instances, and theirs may starve this one in turn in another limit.
    /// So as a refresh is sent an instance keeps of its unspent lease only what it spent
    /// since the last refresh (at least the largest call it could not fit): the refresh
    /// reserves that much for it, it spends no more until the reply, and Redis shares the
    /// rest among the holders. Only ever shrinks what this instance may admit.
    fn lease_to_demand(&mut self) {
        if let Some(view) = self.view.as_mut() {
            let demand = self.spent.max(self.wanted) as f64;
            view.lease = view.lease.min(self.spent as f64 + demand);
        }
    }
}

/// Where a committer job's reply goes: a single-limit key of a strategy, or a (key, limit)
/// pair of a policy.
pub(super) enum Dest {
    Single(StrategyTag),
    Limit(Arc<PolicyEngine>, usize),
}

/// What a flush of one job writes to: the key's Redis keys and lease, its grid and the
/// strategy's counters.
pub(super) struct Target<'a> {
    pub(super) names: KeyNames,
    pub(super) lease: String,
    pub(super) grid: &'a WindowGrid,
    pub(super) tag: StrategyTag,
    pub(super) hard_limit_factor: f64,
}

impl Dest {
    /// The Redis keys, grid and strategy a job for `key` is flushed with.
    pub(super) fn target<'a>(&'a self, core: &'a HybridCore, key: &str) -> Target<'a> {
        // Keys are checked before they are stored.
        let key = RedisKey::try_from(key).ok();
        match self {
            Dest::Single(tag) => Target {
                names: key
                    .as_ref()
                    .map(|k| core.core.keys.names(k, *tag))
                    .unwrap_or_default(),
                lease: key
                    .as_ref()
                    .map(|k| core.core.keys.lease(k, *tag))
                    .unwrap_or_default(),
                grid: &core.settings.grid,
                tag: *tag,
                hard_limit_factor: core.settings.suppression.hard_limit_factor,
            },
            Dest::Limit(policy, index) => {
                let limit = &policy.limits[*index];
                let name = policy.set.limits()[*index].name();
                Target {
                    names: key
                        .as_ref()
                        .map(|k| core.core.keys.limit_names(k, name))
                        .unwrap_or_default(),
                    lease: key
                        .as_ref()
                        .map(|k| core.core.keys.limit_lease(k, name))
                        .unwrap_or_default(),
                    grid: &limit.grid,
                    tag: match limit.strategy {
                        Strategy::Absolute => StrategyTag::Absolute,
                        Strategy::Suppressed => StrategyTag::Suppressed,
                    },
                    hard_limit_factor: limit.params.hard_limit_factor,
                }
            }
        }
    }

    /// Applies a refresh to the job's key, if it is still held; returns whether Redis had
    /// lost some of what this instance admitted (the view is floored to its own record).
    pub(super) fn refreshed(
        &self,
        core: &HybridCore,
        key: &CompactString,
        seq: u64,
        mut refresh: Refresh,
    ) -> bool {
        let lost = match self {
            Dest::Single(StrategyTag::Absolute) => core.absolute.peek(key.as_str(), |s| {
                let lost = s.floor_to_own(&core.settings.grid, &mut refresh.view);
                s.refreshed(seq, refresh);
                lost
            }),
            Dest::Single(StrategyTag::Suppressed) => core.suppressed.peek(key.as_str(), |s| {
                let lost = s.floor_to_own(&core.settings.grid, &mut refresh.view);
                s.refreshed(seq, refresh);
                lost
            }),
            Dest::Limit(policy, index) => {
                let limit = &policy.limits[*index];
                limit.keys.peek(key.as_str(), |s| {
                    let lost = s.floor_to_own(&limit.grid, &mut refresh.view);
                    s.refreshed(seq, refresh);
                    lost
                })
            }
        };
        lost == Some(true)
    }
}

impl HybridCore {
    /// Remembers a policy for the committer (until it is dropped).
    fn register(&self, policy: Weak<PolicyEngine>) {
        self.policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(policy);
    }

    /// The live policies; forgets the dropped ones.
    fn live_policies(&self) -> Vec<Arc<PolicyEngine>> {
        let mut list = self
            .policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.retain(|p| p.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    /// Adds every policy's dirty (key, limit) pairs to a cycle's jobs.
    pub(super) fn policy_jobs(&self, now: Now, jobs: &mut Vec<KeyJob>) {
        let next_seq = || self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let expired: u64 = self
            .live_policies()
            .iter()
            .map(|policy| policy.jobs(now, &next_seq, jobs))
            .sum();
        self.stats
            .units_expired
            .fetch_add(expired, std::sync::atomic::Ordering::Relaxed);
    }

    /// Drops the policies' idle (key, limit) pairs; returns how many.
    pub(super) fn cleanup_policies(&self, now: Now) -> usize {
        self.live_policies()
            .iter()
            .flat_map(|policy| policy.limits.iter())
            .map(|limit| limit.keys.retain(|s| !s.idle(&limit.grid, now)))
            .sum()
    }
}
