//! A limit set on the local provider: every limit of the set decided under one set of locks.
//!
//! Each limit keeps its keys in a store of its own. A decision locks the shard of each
//! limit's key, in the set's order (every caller takes them in that order, so two never wait
//! on each other), decides on every limit, then either counts the request in every limit or
//! in none, and unlocks. No thread can see or change a limit between the check and the
//! count, so no limit ever admits more than its quota, and a refused request spends nothing.

use std::sync::Arc;

use super::store::{KeyStore, Locked};
use crate::Error;
use crate::Strategy;
use crate::clock::Time;
use crate::config::{RateGroupSizeMs, capacity};
use crate::policy::{LimitSet, LimitStatus, MAX_LIMITS, Outcome, SetDecision};
use crate::random::RandomSource;
use crate::suppressed::{Regime, factor_of};
use crate::window::{Usage, Window, WindowGrid};

/// The span over which a suppressed limit reads its "last second" of observed usage.
const RECENT_MS: u64 = 1000;

/// A limit set bound to the local provider: `rl.local().policy(set)`. Cheap to clone;
/// clones share their counts.
#[derive(Clone)]
pub struct LocalPolicy {
    inner: Arc<Engine>,
}

impl std::fmt::Debug for LocalPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPolicy")
            .field("set", &self.inner.set.to_string())
            .finish()
    }
}

struct Engine {
    set: LimitSet,
    limits: Box<[LimitCounts]>,
    clock: Time,
    random: Arc<dyn RandomSource>,
}

/// One limit's keys and the numbers it decides with.
struct LimitCounts {
    geo: WindowGrid,
    /// The set's quota for this limit; a call may give its own count instead.
    quota: CallQuota,
    /// The suppressed strategy's hard limit factor (1 for an absolute limit).
    hard_factor: f64,
    strategy: Strategy,
    keys: KeyStore<Window<Usage>>,
}

/// The numbers one call decides a limit with: the set's quota, or the call's own count.
#[derive(Debug, Clone, Copy, Default)]
struct CallQuota {
    /// The quota: the accepted usage a window may hold.
    cap: f64,
    /// Suppressed: the observed usage past which everything is shed.
    hard: f64,
    /// The rate, for the suppression factor.
    rate: f64,
}

/// What one limit says before the set decides.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
enum Verdict {
    #[default]
    Admit,
    /// Suppressed, between quota and hard limit: admitted iff a draw is at least the factor.
    Draw(f64),
    /// Absolute: refused; the wait until it would admit the call.
    Refuse(u64),
    /// Suppressed: over the hard limit (or a cost above the quota); the wait until under it.
    ShedHard(u64),
}

impl LocalPolicy {
    pub(crate) fn new(set: LimitSet, clock: Time, random: Arc<dyn RandomSource>) -> Self {
        let limits = set
            .iter()
            .map(|limit| {
                let group = RateGroupSizeMs::try_from(limit.group_ms())
                    .expect("a limit's group is at least 1 ms");
                LimitCounts {
                    geo: WindowGrid::new(limit.quota().window(), group)
                        .expect("a limit's group fits its window"),
                    quota: CallQuota {
                        cap: limit.quota().count(),
                        hard: limit.quota().count() * limit.hard_limit_factor().get(),
                        rate: limit.quota().rate().get(),
                    },
                    hard_factor: limit.hard_limit_factor().get(),
                    strategy: limit.strategy(),
                    keys: KeyStore::default(),
                }
            })
            .collect();
        LocalPolicy {
            inner: Arc::new(Engine {
                set,
                limits,
                clock,
                random,
            }),
        }
    }

    /// The set this policy decides.
    pub fn limit_set(&self) -> &LimitSet {
        &self.inner.set
    }

    /// Counts `cost` units for `key` in every limit of the set, or in none.
    pub fn inc(&self, key: &str, cost: u64) -> Result<SetDecision, Error> {
        self.inner.decide(|_| key, None, cost, true)
    }

    /// As [`inc`](Self::inc), with one key per limit, in the set's order (a per-IP limit
    /// beside a per-API-key one).
    pub fn inc_each(&self, keys: &[&str], cost: u64) -> Result<SetDecision, Error> {
        self.inner.check_keys(keys)?;
        self.inner.decide(|i| keys[i], None, cost, true)
    }

    /// As [`inc_each`](Self::inc_each), with this call's quota count for each limit, in the
    /// set's order: a rate resolved per request (plans by API key: `pro_` keys 50 per 10 s,
    /// others 5). Each limit keeps its window, group and strategy; only its count per
    /// window (and so its rate and, for a suppressed limit, its hard limit) is the call's.
    /// Usage counted under one count is the same usage under another: a key whose plan
    /// grows gets the difference at once.
    ///
    /// Each count is checked as [`Quota::new`](crate::policy::Quota::new) checks one: finite
    /// and at least 1; a count below 1 is [`Error::CapacityBelowOne`] (the seeds' answer to a
    /// rate whose window holds less than a request), and a wrong number of counts or keys is
    /// [`Error::InvalidValue`]. As with `inc`, a cost above a limit's count is refused by
    /// that limit with `retry_after_ms == u64::MAX`.
    pub fn inc_with(&self, keys: &[&str], counts: &[f64], cost: u64) -> Result<SetDecision, Error> {
        self.inner.check_keys(keys)?;
        self.inner.set.check_counts(counts)?;
        self.inner.decide(|i| keys[i], Some(counts), cost, true)
    }

    /// What [`inc_with`](Self::inc_with) would answer now, recording nothing and creating no
    /// key.
    pub fn check_with(
        &self,
        keys: &[&str],
        counts: &[f64],
        cost: u64,
    ) -> Result<SetDecision, Error> {
        self.inner.check_keys(keys)?;
        self.inner.set.check_counts(counts)?;
        self.inner.decide(|i| keys[i], Some(counts), cost, false)
    }

    /// What [`inc`](Self::inc) with `cost` would answer now, recording nothing and creating
    /// no key. A suppressed limit between its quota and its hard limit reports `Shed` here
    /// (its admission would be a draw).
    pub fn check(&self, key: &str, cost: u64) -> Result<SetDecision, Error> {
        self.inner.decide(|_| key, None, cost, false)
    }

    /// [`check`](Self::check) with one key per limit.
    pub fn check_each(&self, keys: &[&str], cost: u64) -> Result<SetDecision, Error> {
        self.inner.check_keys(keys)?;
        self.inner.decide(|i| keys[i], None, cost, false)
    }

    /// Drops the keys with no usage left in any window; returns how many (key, limit) pairs
    /// went. The limiter's cleanup loop calls it for every policy it made.
    pub fn cleanup(&self) -> usize {
        let now = self.inner.clock.now_ms();
        self.inner
            .limits
            .iter()
            .map(|limit| {
                limit.keys.retain(|w| {
                    w.expire(&limit.geo, now);
                    !w.is_empty()
                })
            })
            .sum()
    }

    /// How many (key, limit) pairs are held in memory.
    pub fn key_count(&self) -> usize {
        self.inner.limits.iter().map(|l| l.keys.len()).sum()
    }
}

impl Engine {
    fn check_keys(&self, keys: &[&str]) -> Result<(), Error> {
        if keys.len() == self.limits.len() {
            Ok(())
        } else {
            Err(Error::invalid(
                "keys",
                keys.len(),
                "give one key per limit of the set, in the set's order",
            ))
        }
    }

    fn decide<'k>(
        &self,
        key: impl Fn(usize) -> &'k str,
        counts: Option<&[f64]>,
        cost: u64,
        record: bool,
    ) -> Result<SetDecision, Error> {
        if cost == 0 {
            return Err(Error::ZeroCount);
        }
        let now = self.clock.now_ms();
        let n = self.limits.len();
        let mut quotas = [CallQuota::default(); MAX_LIMITS];
        for (i, limit) in self.limits.iter().enumerate() {
            quotas[i] = match counts {
                None => limit.quota,
                Some(counts) => limit.quota_of(counts[i]),
            };
        }
        // Locked in the set's order: see the module docs.
        let mut locks: [Option<Locked<'_, Window<Usage>>>; MAX_LIMITS] = Default::default();
        for (i, limit) in self.limits.iter().enumerate() {
            locks[i] = Some(limit.keys.lock(key(i)));
        }
        let mut verdicts = [Verdict::Admit; MAX_LIMITS];
        let mut totals = [Usage::default(); MAX_LIMITS];
        for (i, limit) in self.limits.iter().enumerate() {
            let lock = locks[i].as_mut().expect("locked above");
            let (verdict, total) = match lock.get(key(i)) {
                Some(window) => {
                    window.expire(&limit.geo, now);
                    (limit.verdict(&quotas[i], window, now, cost), window.total())
                }
                None => (
                    limit.verdict(&quotas[i], &Window::default(), now, cost),
                    Usage::default(),
                ),
            };
            verdicts[i] = verdict;
            totals[i] = total;
        }

        let rejected = verdicts[..n]
            .iter()
            .any(|v| matches!(v, Verdict::Refuse(_)));
        let hard = verdicts[..n]
            .iter()
            .any(|v| matches!(v, Verdict::ShedHard(_)));
        let mut shed = [false; MAX_LIMITS];
        let mut factors = [0.0; MAX_LIMITS];
        for i in 0..n {
            match verdicts[i] {
                Verdict::ShedHard(_) => {
                    shed[i] = true;
                    factors[i] = 1.0;
                }
                Verdict::Draw(factor) => {
                    factors[i] = factor;
                    // Draws decide only a request that no limit refused outright; a check
                    // never draws and reports the limit as shedding.
                    shed[i] = if rejected || hard {
                        false
                    } else {
                        !record || self.random.next_f64() < factor
                    };
                }
                _ => {}
            }
        }
        let outcome = if rejected {
            Outcome::Rejected
        } else if shed[..n].iter().any(|s| *s) {
            Outcome::Shed
        } else {
            Outcome::Allowed
        };

        let mut decision = SetDecision {
            outcome,
            retry_after_ms: 0,
            len: n as u8,
            limits: [LimitStatus::default(); MAX_LIMITS],
        };
        for (i, limit) in self.limits.iter().enumerate() {
            let lock = locks[i].as_mut().expect("locked above");
            let counted = match (outcome, record) {
                (Outcome::Allowed, true) => Some(Usage {
                    accepted: cost,
                    observed: cost,
                }),
                (Outcome::Shed, true) if shed[i] && capacity::fits(cost, quotas[i].cap) => {
                    Some(Usage {
                        accepted: 0,
                        observed: cost,
                    })
                }
                _ => None,
            };
            let mut total = totals[i];
            let window_ms = limit.geo.window_seconds() * 1000;
            let next_expiry = |w: &Window<Usage>| {
                w.buckets().next().map_or(0, |b| {
                    limit
                        .geo
                        .expires_at(b.id)
                        .saturating_sub(now)
                        .min(window_ms)
                })
            };
            let reset_ms = if let Some(counts) = counted {
                let window = lock.get_or_default(key(i));
                window.add(&limit.geo, now, counts);
                total = window.total();
                next_expiry(window)
            } else {
                lock.get(key(i)).map_or(0, |w| next_expiry(w))
            };
            let refused = match verdicts[i] {
                Verdict::Refuse(_) | Verdict::ShedHard(_) => true,
                // A drawn shed happens only when no limit refused: the outcome is `Shed`.
                Verdict::Draw(_) => shed[i],
                Verdict::Admit => false,
            };
            let wait = match verdicts[i] {
                Verdict::Refuse(wait) | Verdict::ShedHard(wait) => wait,
                Verdict::Draw(_) if refused => RECENT_MS.min(window_ms),
                _ => 0,
            };
            if refused {
                decision.retry_after_ms = decision.retry_after_ms.max(wait);
            }
            decision.limits[i] = LimitStatus {
                remaining: LimitStatus::remaining_of(quotas[i].cap, total.accepted),
                reset_ms: if refused {
                    wait.min(window_ms)
                } else {
                    reset_ms
                },
                suppression_factor: factors[i],
                refused,
            };
        }
        Ok(decision)
    }
}

impl LimitCounts {
    /// This limit's numbers for a call that gives its own (checked) count per window.
    #[inline]
    fn quota_of(&self, count: f64) -> CallQuota {
        CallQuota {
            cap: count,
            hard: count * self.hard_factor,
            rate: count / self.geo.window_seconds() as f64,
        }
    }

    /// What this limit says of `cost` more units on `window` (already expired to `now`)
    /// under the call's quota `q`.
    #[inline]
    fn verdict(&self, q: &CallQuota, window: &Window<Usage>, now: u64, cost: u64) -> Verdict {
        let total = window.total();
        let never = u64::MAX;
        match self.strategy {
            Strategy::Absolute => {
                if capacity::fits_more(total.accepted, cost, q.cap) {
                    Verdict::Admit
                } else {
                    let wait = window
                        .release_until(&self.geo, now, |left| {
                            capacity::fits_more(left.accepted, cost, q.cap)
                        })
                        .map_or(never, |(wait, _)| wait);
                    Verdict::Refuse(if capacity::fits(cost, q.cap) {
                        wait
                    } else {
                        never
                    })
                }
            }
            Strategy::Suppressed => {
                if !capacity::fits(cost, q.cap) || total.observed.checked_add(cost).is_none() {
                    return Verdict::ShedHard(never);
                }
                // The strategy's three cases, as every suppressed provider decides them.
                match Regime::of(total.observed, q.hard, || {
                    capacity::fits_more(total.accepted, cost, q.cap)
                }) {
                    Regime::OverHardLimit => {
                        let wait = window
                            .release_until(&self.geo, now, |left| {
                                !capacity::reaches(left.observed, q.hard)
                            })
                            .map_or(never, |(wait, _)| wait);
                        Verdict::ShedHard(wait)
                    }
                    Regime::UnderCapacity => Verdict::Admit,
                    Regime::Shedding => {
                        let recent = window.recent(&self.geo, now, RECENT_MS).observed;
                        Verdict::Draw(factor_of(&self.geo, now, q.rate, total.observed, recent))
                    }
                }
            }
        }
    }
}
