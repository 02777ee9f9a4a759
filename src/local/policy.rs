//! A limit set on the local provider: every limit of the set decided under one lock.
//!
//! A key's entry holds one window per limit of the set, so a set whose limits share the key
//! ([`inc`](LocalPolicy::inc)) costs one hash, one lock and one lookup, however many limits
//! it has. When the limits have different keys ([`inc_each`](LocalPolicy::inc_each): per IP
//! and per API key), limit `i` counts in window `i` of key `i`'s entry (the same window `inc`
//! uses, so the two may be mixed), and the call locks the shards of every key at once, each
//! shard once, in one fixed order that every caller uses, so two never wait on each other.
//! Under the lock every limit decides, then the request is counted in every limit or in
//! none, and the lock is released. No thread can see or change a limit between the check and
//! the count, so no limit ever admits more than its quota, and a refused request spends
//! nothing.
//!
//! Memory: an entry holds `len()` windows (40 bytes each, plus a key's older buckets while it
//! has any), whichever limits use it.
//!
//! Work: the common call (one key, every limit admits) expires, tests and counts each
//! window inline in one pass over the entry and answers a [`SetDecision`] built in the
//! caller's place (its statuses inline up to 3 limits, boxed past that: one allocation per
//! decision of a bigger set). In callgrind's count (`benches/policy.rs`) two limits cost
//! about 1.5x the seeds' one-limit `inc` and three about 1.7x. Any other call (a refusal, a
//! shed, a check, a new key, a key per limit) takes the general path, which decides every
//! limit before it counts in any.

use std::sync::{Arc, Mutex, Weak};

// Refunds (counting by outcome on limit sets): helper `ops`'s file.
#[path = "policy_refund.rs"]
mod refund;

use super::store::KeyStore;
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
/// clones share their counts. The limiter's cleanup ([`LocalRateLimiter::cleanup`](super::LocalRateLimiter::cleanup),
/// and so its cleanup loop) sweeps every policy it made while the policy lives.
#[derive(Clone)]
pub struct LocalPolicy {
    inner: Arc<dyn Engine>,
}

impl std::fmt::Debug for LocalPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPolicy")
            .field("set", &self.inner.set().to_string())
            .finish()
    }
}

/// The keys of one call: one for every limit, or one per limit.
#[derive(Debug, Clone, Copy)]
enum Keys<'a> {
    One(&'a str),
    Each(&'a [&'a str]),
}

/// A set of `N` limits, with `N` a constant so that each entry holds its windows inline.
///
/// A decision is 112 bytes (more than a few registers): each method builds it in the place
/// it returns it to (the caller's), never in a local that would then be copied there.
trait Engine: Send + Sync {
    fn set(&self) -> &LimitSet;
    /// `inc` on one key at the set's quotas: the common call, on a path of its own.
    fn inc(&self, key: &str, cost: u64) -> Result<SetDecision, Error>;
    /// Every other call: checks, a key per limit, quotas per call.
    fn decide(
        &self,
        keys: Keys<'_>,
        counts: Option<&[f64]>,
        cost: u64,
        record: bool,
    ) -> Result<SetDecision, Error>;
    fn cleanup(&self) -> usize;
    fn key_count(&self) -> usize;
    /// Gives back units an admitted call counted, in the limits of `mask` (`policy_refund.rs`).
    fn refund(&self, keys: Keys<'_>, cost: u64, at: super::Reservation, mask: u16) -> u64;
    /// The clock reservations are read on.
    fn now_ms(&self) -> u64;
}

struct Set<const N: usize> {
    set: LimitSet,
    limits: [LimitCounts; N],
    /// Each limit's quota as the set gives it.
    set_quotas: [CallQuota; N],
    keys: KeyStore<Slots<N>>,
    clock: Time,
    random: Arc<dyn RandomSource>,
}

/// One key's windows, one per limit in the set's order.
struct Slots<const N: usize>([Window<Usage>; N]);

impl<const N: usize> Default for Slots<N> {
    fn default() -> Self {
        Slots(std::array::from_fn(|_| Window::default()))
    }
}

impl<const N: usize> Slots<N> {
    fn is_empty(&self) -> bool {
        self.0.iter().all(Window::is_empty)
    }
}

/// One limit's numbers.
struct LimitCounts {
    geo: WindowGrid,
    window_ms: u64,
    /// The set's quota for this limit; a call may give its own count instead.
    quota: CallQuota,
    /// The suppressed strategy's hard limit factor (1 for an absolute limit).
    hard_factor: f64,
    strategy: Strategy,
}

/// The numbers one call decides a limit with: the set's quota, or the call's own count.
#[derive(Debug, Clone, Copy)]
struct CallQuota {
    /// The quota: the accepted usage a window may hold.
    cap: f64,
    /// Suppressed: the observed usage past which everything is shed.
    hard: f64,
    /// The rate, for the suppression factor.
    rate: f64,
    /// [`capacity::most_fitting`] of `cap`: the integer test of `fits` on the hot path.
    most_fitting: u64,
    /// `cap` rounded down when below 2^53 (then `remaining` is an integer difference, the
    /// same number as [`LimitStatus::remaining_of`]), else `u64::MAX`.
    whole: u64,
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

impl CallQuota {
    fn new(cap: f64, hard: f64, rate: f64) -> Self {
        CallQuota {
            cap,
            hard,
            rate,
            most_fitting: capacity::most_fitting(cap),
            whole: if (0.0..EXACT).contains(&cap) {
                cap as u64
            } else {
                u64::MAX
            },
        }
    }

    /// `capacity::fits(used, cap)`.
    #[inline(always)]
    fn fits(&self, used: u64) -> bool {
        if self.most_fitting != u64::MAX {
            used <= self.most_fitting
        } else {
            capacity::fits(used, self.cap)
        }
    }

    /// `capacity::fits_more(used, more, cap)`.
    #[inline(always)]
    fn fits_more(&self, used: u64, more: u64) -> bool {
        used.checked_add(more).is_some_and(|total| self.fits(total))
    }

    /// `LimitStatus::remaining_of(cap, accepted)`: below 2^53 both convert exactly, and
    /// the floor of `cap - accepted` is `floor(cap) - accepted`.
    #[inline(always)]
    fn remaining(&self, accepted: u64) -> u64 {
        if self.whole != u64::MAX {
            self.whole.saturating_sub(accepted)
        } else {
            LimitStatus::remaining_of(self.cap, accepted)
        }
    }
}

/// 2^53: every integer below it is an f64.
const EXACT: f64 = 9_007_199_254_740_992.0;

impl LocalPolicy {
    pub(crate) fn new(set: LimitSet, clock: Time, random: Arc<dyn RandomSource>) -> Self {
        fn make<const N: usize>(
            set: LimitSet,
            clock: Time,
            random: Arc<dyn RandomSource>,
        ) -> Arc<dyn Engine> {
            let limits: [LimitCounts; N] =
                std::array::from_fn(|i| LimitCounts::of(&set.limits()[i]));
            Arc::new(Set::<N> {
                set,
                set_quotas: std::array::from_fn(|i| limits[i].quota),
                limits,
                keys: KeyStore::default(),
                clock,
                random,
            })
        }
        const _: () = assert!(MAX_LIMITS == 8, "one arm per set size below");
        let inner = match set.len() {
            1 => make::<1>(set, clock, random),
            2 => make::<2>(set, clock, random),
            3 => make::<3>(set, clock, random),
            4 => make::<4>(set, clock, random),
            5 => make::<5>(set, clock, random),
            6 => make::<6>(set, clock, random),
            7 => make::<7>(set, clock, random),
            _ => make::<8>(set, clock, random),
        };
        LocalPolicy { inner }
    }

    /// The set this policy decides.
    pub fn limit_set(&self) -> &LimitSet {
        self.inner.set()
    }

    #[inline]
    fn decide(
        &self,
        keys: Keys<'_>,
        counts: Option<&[f64]>,
        cost: u64,
        record: bool,
    ) -> Result<SetDecision, Error> {
        self.inner.decide(keys, counts, cost, record)
    }

    /// Counts `cost` units for `key` in every limit of the set, or in none.
    #[inline]
    pub fn inc(&self, key: &str, cost: u64) -> Result<SetDecision, Error> {
        self.inner.inc(key, cost)
    }

    /// As [`inc`](Self::inc), with one key per limit, in the set's order (a per-IP limit
    /// beside a per-API-key one).
    pub fn inc_each(&self, keys: &[&str], cost: u64) -> Result<SetDecision, Error> {
        self.decide(Keys::Each(keys), None, cost, true)
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
        self.inner.set().check_counts(counts)?;
        self.decide(Keys::Each(keys), Some(counts), cost, true)
    }

    /// What [`inc`](Self::inc) with `cost` would answer now, recording nothing and creating
    /// no key. A suppressed limit between its quota and its hard limit reports `Shed` here
    /// (its admission would be a draw).
    pub fn check(&self, key: &str, cost: u64) -> Result<SetDecision, Error> {
        self.decide(Keys::One(key), None, cost, false)
    }

    /// [`check`](Self::check) with one key per limit.
    pub fn check_each(&self, keys: &[&str], cost: u64) -> Result<SetDecision, Error> {
        self.decide(Keys::Each(keys), None, cost, false)
    }

    /// What [`inc_with`](Self::inc_with) would answer now, recording nothing and creating no
    /// key.
    pub fn check_with(
        &self,
        keys: &[&str],
        counts: &[f64],
        cost: u64,
    ) -> Result<SetDecision, Error> {
        self.inner.set().check_counts(counts)?;
        self.decide(Keys::Each(keys), Some(counts), cost, false)
    }

    /// Drops the keys with no usage left in any of their windows; returns how many went.
    /// The limiter's cleanup calls it for every policy it made.
    pub fn cleanup(&self) -> usize {
        self.inner.cleanup()
    }

    /// How many keys are held in memory (each with one window per limit).
    pub fn key_count(&self) -> usize {
        self.inner.key_count()
    }
}

/// The policies a local limiter made, swept by its cleanup while they live.
#[derive(Default)]
pub(crate) struct Registry(Mutex<Vec<Weak<dyn Engine>>>);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// Remembers `policy` for [`cleanup`](Self::cleanup).
    pub(crate) fn add(&self, policy: &LocalPolicy) {
        let mut policies = self.0.lock().unwrap_or_else(|e| e.into_inner());
        policies.retain(|p| p.strong_count() > 0);
        policies.push(Arc::downgrade(&policy.inner));
    }

    /// Cleans up every live policy; forgets the dropped ones. Returns the keys dropped.
    pub(crate) fn cleanup(&self) -> usize {
        let live: Vec<Arc<dyn Engine>> = {
            let mut policies = self.0.lock().unwrap_or_else(|e| e.into_inner());
            policies.retain(|p| p.strong_count() > 0);
            policies.iter().filter_map(Weak::upgrade).collect()
        };
        live.iter().map(|p| p.cleanup()).sum()
    }
}

/// Where one call's windows are: `window(i)` is limit `i`'s window, if its key exists.
trait Windows {
    fn window(&mut self, i: usize) -> Option<&mut Window<Usage>>;
    /// Limit `i`'s window, its key created if new.
    fn window_or_new(&mut self, i: usize) -> &mut Window<Usage>;
}

/// Every limit on one key: its entry, found once.
impl<const N: usize> Windows for Slots<N> {
    #[inline]
    fn window(&mut self, i: usize) -> Option<&mut Window<Usage>> {
        Some(&mut self.0[i])
    }
    #[inline]
    fn window_or_new(&mut self, i: usize) -> &mut Window<Usage> {
        &mut self.0[i]
    }
}

/// A key per limit, every key's shard locked.
struct EachKey<'a, 'k, const N: usize> {
    locked: super::store::LockedKeys<'a, Slots<N>, N>,
    keys: &'k [&'k str; N],
}

impl<const N: usize> Windows for EachKey<'_, '_, N> {
    fn window(&mut self, i: usize) -> Option<&mut Window<Usage>> {
        self.locked.get(i, self.keys[i]).map(|s| &mut s.0[i])
    }
    fn window_or_new(&mut self, i: usize) -> &mut Window<Usage> {
        &mut self.locked.get_or_default(i, self.keys[i]).0[i]
    }
}

impl<const N: usize> Engine for Set<N> {
    fn set(&self) -> &LimitSet {
        &self.set
    }

    fn inc(&self, key: &str, cost: u64) -> Result<SetDecision, Error> {
        self.one_key(key, &self.set_quotas, cost, true)
    }

    fn decide(
        &self,
        keys: Keys<'_>,
        counts: Option<&[f64]>,
        cost: u64,
        record: bool,
    ) -> Result<SetDecision, Error> {
        let key = match keys {
            Keys::One(key) => key,
            Keys::Each(keys) => {
                let Ok(keys) = <&[&str; N]>::try_from(keys) else {
                    return Err(self
                        .set
                        .check_keys(keys.len())
                        .expect_err("not one key per limit"));
                };
                if keys.iter().any(|k| *k != keys[0]) {
                    return self.decide_each(keys, counts, cost, record);
                }
                keys[0]
            }
        };
        match counts {
            None => self.one_key(key, &self.set_quotas, cost, record),
            Some(counts) => self.one_key(key, &self.quotas(counts), cost, record),
        }
    }

    fn cleanup(&self) -> usize {
        let now = self.clock.now_ms();
        self.keys.retain(|slots| {
            for (window, limit) in slots.0.iter_mut().zip(&self.limits) {
                window.expire(&limit.geo, now);
            }
            !slots.is_empty()
        })
    }

    fn key_count(&self) -> usize {
        self.keys.len()
    }

    fn refund(&self, keys: Keys<'_>, cost: u64, at: super::Reservation, mask: u16) -> u64 {
        refund::refund_engine(self, keys, cost, at, mask)
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

impl<const N: usize> Set<N> {
    /// The call's quotas from its (checked) counts.
    fn quotas(&self, counts: &[f64]) -> [CallQuota; N] {
        let mut quotas = self.set_quotas;
        for (i, quota) in quotas.iter_mut().enumerate() {
            *quota = self.limits[i].quota_of(counts[i]);
        }
        quotas
    }

    /// A call whose limits share `key`: its entry found once, under one lock.
    #[inline(always)]
    fn one_key(
        &self,
        key: &str,
        quotas: &[CallQuota; N],
        cost: u64,
        record: bool,
    ) -> Result<SetDecision, Error> {
        if cost == 0 {
            return Err(Error::ZeroCount);
        }
        let now = self.clock.now_ms();
        let mut lock = self.keys.lock(key);
        if record
            && let Some(slots) = lock.get(key)
            && let Some(decision) = self.count_if_all_admit(slots, quotas, now, cost)
        {
            return Ok(decision);
        }
        self.one_key_slow(lock, key, quotas, now, cost, record)
    }

    /// [`one_key`](Self::one_key) past the common call: a new key, a limit that does not
    /// admit, or a check. The key stays locked from the common path's attempt, which
    /// changed nothing but its windows' expiry.
    #[inline(never)]
    fn one_key_slow(
        &self,
        mut lock: super::store::Locked<'_, Slots<N>>,
        key: &str,
        quotas: &[CallQuota; N],
        now: u64,
        cost: u64,
        record: bool,
    ) -> Result<SetDecision, Error> {
        let mut decision = SetDecision::empty(N);
        match lock.get(key) {
            Some(slots) => self.run(slots, quotas, now, cost, record, &mut decision),
            None => self.new_key(&mut lock, key, quotas, now, cost, record, &mut decision),
        }
        Ok(decision)
    }

    /// The common call: if every limit admits `cost` on `slots`, counts it in every one and
    /// returns the decision. Otherwise changes nothing but the windows' expiry and returns
    /// `None`, for [`run`](Self::run) to decide.
    #[inline(always)]
    fn count_if_all_admit(
        &self,
        slots: &mut Slots<N>,
        quotas: &[CallQuota; N],
        now: u64,
        cost: u64,
    ) -> Option<SetDecision> {
        let mut accepted = [0; N];
        // When each window's oldest bucket expires, from the expiry test: `None` for an
        // empty window (whose add is the out-of-line kind).
        let mut expiry = [None; N];
        for i in 0..N {
            let window = &mut slots.0[i];
            expiry[i] = window.expire_fast(&self.limits[i].geo, now);
            let total = window.total();
            if !self.limits[i].admits(&quotas[i], total, cost) {
                return None;
            }
            accepted[i] = total.accepted;
        }
        let counts = Usage {
            accepted: cost,
            observed: cost,
        };
        // Written in the decision itself (112 bytes), not in an array of statuses copied
        // there after; a plain loop, as `array::from_fn` left its closure out of line.
        let mut decision = SetDecision::empty(N);
        for i in 0..N {
            let limit = &self.limits[i];
            let window = &mut slots.0[i];
            let reset_ms = match expiry[i] {
                // The oldest bucket stays the oldest; it expires after `now`.
                Some(expires) => {
                    window.add_to_nonempty(&limit.geo, now, counts);
                    // `expire_fast` answers an expiry after `now`.
                    (expires - now).min(limit.window_ms)
                }
                None => {
                    window.add_cold(&limit.geo, now, counts);
                    limit.reset_ms(window.oldest(), now)
                }
            };
            // Admitted: `accepted + cost` fits the quota, so it does not overflow.
            decision.limits[i] = LimitStatus {
                remaining: quotas[i].remaining(accepted[i] + cost),
                reset_ms,
                suppression_factor: 0.0,
                refused: false,
            };
        }
        Some(decision)
    }

    /// A key not stored yet: decided on empty windows, and stored only if the call counted.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn new_key(
        &self,
        lock: &mut super::store::Locked<'_, Slots<N>>,
        key: &str,
        quotas: &[CallQuota; N],
        now: u64,
        cost: u64,
        record: bool,
        out: &mut SetDecision,
    ) {
        let mut fresh = Slots::default();
        self.run(&mut fresh, quotas, now, cost, record, out);
        if !fresh.is_empty() {
            *lock.get_or_default(key) = fresh;
        }
    }

    /// A call whose limits have different keys.
    #[cold]
    fn decide_each(
        &self,
        keys: &[&str; N],
        counts: Option<&[f64]>,
        cost: u64,
        record: bool,
    ) -> Result<SetDecision, Error> {
        if cost == 0 {
            return Err(Error::ZeroCount);
        }
        let quotas = counts.map_or(self.set_quotas, |c| self.quotas(c));
        let now = self.clock.now_ms();
        let mut windows = EachKey {
            locked: self.keys.lock_keys(keys),
            keys,
        };
        let mut decision = SetDecision::empty(N);
        self.run(&mut windows, &quotas, now, cost, record, &mut decision);
        Ok(decision)
    }

    /// Decides any call on its windows (their keys locked) and counts it in all or none.
    #[inline(never)]
    fn run(
        &self,
        windows: &mut impl Windows,
        quotas: &[CallQuota; N],
        now: u64,
        cost: u64,
        record: bool,
        decision: &mut SetDecision,
    ) {
        let mut verdicts = [Verdict::Admit; N];
        let mut totals = [Usage::default(); N];
        let mut oldest = [None; N];
        for (i, limit) in self.limits.iter().enumerate() {
            if let Some(window) = windows.window(i) {
                window.expire(&limit.geo, now);
                totals[i] = window.total();
                oldest[i] = window.oldest();
                verdicts[i] = limit.verdict(&quotas[i], window, totals[i], now, cost);
            } else {
                verdicts[i] = limit.verdict(&quotas[i], &Window::default(), totals[i], now, cost);
            }
        }
        self.settle(
            windows, decision, &verdicts, &totals, &oldest, quotas, now, cost, record,
        );
    }

    /// The decision from every limit's verdict: admissions, draws, refusals, sheds and
    /// checks.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        windows: &mut impl Windows,
        decision: &mut SetDecision,
        verdicts: &[Verdict; N],
        totals: &[Usage; N],
        oldest: &[Option<u64>; N],
        quotas: &[CallQuota; N],
        now: u64,
        cost: u64,
        record: bool,
    ) {
        let rejected = verdicts.iter().any(|v| matches!(v, Verdict::Refuse(_)));
        let hard = verdicts.iter().any(|v| matches!(v, Verdict::ShedHard(_)));
        // Draws decide only a request that no limit refused outright, and one draw serves
        // every limit (each sheds iff the draw is below its factor), as in set.lua: the
        // request is admitted with probability `1 - max factor`. A check never draws and
        // reports a drawing limit as shedding.
        let draws = verdicts.iter().any(|v| matches!(v, Verdict::Draw(_)));
        let draw = if draws && record && !rejected && !hard {
            self.random.next_f64()
        } else {
            0.0
        };
        let mut shed = [false; N];
        let mut factors = [0.0; N];
        for i in 0..N {
            match verdicts[i] {
                Verdict::ShedHard(_) => {
                    shed[i] = true;
                    factors[i] = 1.0;
                }
                Verdict::Draw(factor) => {
                    factors[i] = factor;
                    shed[i] = !(rejected || hard) && (!record || draw < factor);
                }
                _ => {}
            }
        }
        decision.outcome = if rejected {
            Outcome::Rejected
        } else if shed.iter().any(|s| *s) {
            Outcome::Shed
        } else {
            Outcome::Allowed
        };
        for (i, limit) in self.limits.iter().enumerate() {
            let counted = match (decision.outcome, record) {
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
            let mut oldest = oldest[i];
            if let Some(counts) = counted {
                windows.window_or_new(i).add(&limit.geo, now, counts);
                total.add_counts(counts);
                oldest = oldest.or(Some(limit.geo.bucket_of(now)));
            }
            let refused = match verdicts[i] {
                Verdict::Refuse(_) | Verdict::ShedHard(_) => true,
                // A drawn shed happens only when no limit refused: the outcome is `Shed`.
                Verdict::Draw(_) => shed[i],
                Verdict::Admit => false,
            };
            let wait = match verdicts[i] {
                Verdict::Refuse(wait) | Verdict::ShedHard(wait) => wait,
                Verdict::Draw(_) if refused => RECENT_MS.min(limit.window_ms),
                _ => 0,
            };
            if refused {
                decision.retry_after_ms = decision.retry_after_ms.max(wait);
            }
            decision.limits[i] = LimitStatus {
                remaining: LimitStatus::remaining_of(quotas[i].cap, total.accepted),
                reset_ms: if refused {
                    wait.min(limit.window_ms)
                } else {
                    limit.reset_ms(oldest, now)
                },
                suppression_factor: factors[i],
                refused,
            };
        }
    }
}

/// `Usage` plus `Usage`, as a window adds its counts.
trait AddCounts {
    fn add_counts(&mut self, other: Usage);
}

impl AddCounts for Usage {
    #[inline]
    fn add_counts(&mut self, other: Usage) {
        self.accepted = self.accepted.saturating_add(other.accepted);
        self.observed = self.observed.saturating_add(other.observed);
    }
}

impl LimitCounts {
    fn of(limit: &crate::policy::Limit) -> Self {
        let group =
            RateGroupSizeMs::try_from(limit.group_ms()).expect("a limit's group is at least 1 ms");
        let geo = WindowGrid::new(limit.quota().window(), group)
            .expect("a limit's group fits its window");
        LimitCounts {
            geo,
            window_ms: geo.window_seconds() * 1000,
            quota: CallQuota::new(
                limit.quota().count(),
                limit.quota().count() * limit.hard_limit_factor().get(),
                limit.quota().rate().get(),
            ),
            hard_factor: limit.hard_limit_factor().get(),
            strategy: limit.strategy(),
        }
    }

    /// This limit's numbers for a call that gives its own (checked) count per window.
    #[inline]
    fn quota_of(&self, count: f64) -> CallQuota {
        CallQuota::new(
            count,
            count * self.hard_factor,
            count / self.geo.window_seconds() as f64,
        )
    }

    /// Milliseconds until the oldest bucket leaves the window, at most the window; 0 when
    /// nothing is counted.
    #[inline]
    fn reset_ms(&self, oldest: Option<u64>, now: u64) -> u64 {
        oldest.map_or(0, |id| {
            self.geo
                .expires_at(id)
                .saturating_sub(now)
                .min(self.window_ms)
        })
    }

    /// What this limit says of `cost` more units on `window` (already expired to `now`,
    /// holding `total`) under the call's quota `q`.
    #[inline]
    fn verdict(
        &self,
        q: &CallQuota,
        window: &Window<Usage>,
        total: Usage,
        now: u64,
        cost: u64,
    ) -> Verdict {
        if self.admits(q, total, cost) {
            Verdict::Admit
        } else {
            self.verdict_slow(q, window, total, now, cost)
        }
    }

    /// Whether [`verdict`](Self::verdict) is [`Verdict::Admit`], from the window's `total`
    /// alone.
    #[inline(always)]
    fn admits(&self, q: &CallQuota, total: Usage, cost: u64) -> bool {
        match self.strategy {
            Strategy::Absolute => q.fits_more(total.accepted, cost),
            // Under the hard limit, the observed usage not overflowing, and the call fits.
            Strategy::Suppressed => {
                q.fits(cost)
                    && total.observed.checked_add(cost).is_some()
                    && !capacity::reaches(total.observed, q.hard)
                    && q.fits_more(total.accepted, cost)
            }
        }
    }

    /// [`verdict`](Self::verdict) past an absolute limit's admission.
    fn verdict_slow(
        &self,
        q: &CallQuota,
        window: &Window<Usage>,
        total: Usage,
        now: u64,
        cost: u64,
    ) -> Verdict {
        let never = u64::MAX;
        match self.strategy {
            Strategy::Absolute => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> crate::RateLimiter {
        crate::RateLimiterBuilder::new(crate::local::LocalRateLimiterOptions {
            window_size_seconds: 1.try_into().unwrap(),
            rate_group_size_ms: 100.try_into().unwrap(),
            hard_limit_factor: Default::default(),
            suppression_factor_cache_ms: Default::default(),
        })
        .build()
        .unwrap()
    }

    #[test]
    fn a_policy_shows_its_set_in_debug() {
        let set: crate::policy::LimitSet = "burst = 3/s; minute = 10/m".parse().unwrap();
        let p = limiter().local().policy(set.clone());
        assert_eq!(
            format!("{p:?}"),
            format!("LocalPolicy {{ set: {:?} }}", set.to_string())
        );
    }

    /// The registry holds the policies its limiter's cleanup sweeps: remembering one forgets
    /// those already dropped, so making and dropping policies does not grow it.
    #[test]
    fn the_registry_forgets_dropped_policies_as_it_remembers_new_ones() {
        let rl = limiter();
        let set: crate::policy::LimitSet = "5/s".parse().unwrap();
        let registry = Registry::default();
        assert_eq!(format!("{registry:?}"), "Registry { .. }");
        let kept = rl.local().policy(set.clone());
        registry.add(&kept);
        for _ in 0..10 {
            let dropped = rl.local().policy(set.clone());
            registry.add(&dropped);
        }
        let held = |r: &Registry| r.0.lock().unwrap().len();
        // The last dropped one is still listed until the next `add` or `cleanup`.
        assert_eq!(held(&registry), 2);
        let newest = rl.local().policy(set);
        registry.add(&newest);
        assert_eq!(held(&registry), 2, "kept and newest, none of the dropped");
        drop(newest);
        assert_eq!(registry.cleanup(), 0);
        assert_eq!(held(&registry), 1, "cleanup forgets a dropped policy too");
    }

    /// The hot path's integer tests give the float ones' answers, at the edges of 2^53 and of
    /// the slack too.
    #[test]
    fn integer_tests_match_the_float_ones() {
        let caps = [
            1.0,
            1.5,
            3.0000000000000004,
            10.0,
            999.999,
            1e9,
            1e12,
            1e15,
            EXACT - 2.0,
            EXACT - 1.0,
            EXACT,
            EXACT * 2.0,
            1e300,
        ];
        for cap in caps {
            let q = CallQuota::new(cap, cap, cap);
            let fit = capacity::most_fitting(cap);
            let mut used = vec![0, 1, 2, 3, 9, 10, 11, u64::MAX - 1, u64::MAX];
            for base in [cap as u64, fit] {
                for d in 0..4 {
                    used.extend([base.saturating_sub(d), base.saturating_add(d)]);
                }
            }
            for &u in &used {
                assert_eq!(q.fits(u), capacity::fits(u, cap), "fits({u}, {cap})");
                assert_eq!(
                    q.remaining(u),
                    LimitStatus::remaining_of(cap, u),
                    "remaining({cap}, {u})"
                );
                for more in [0, 1, 2, u64::MAX] {
                    assert_eq!(
                        q.fits_more(u, more),
                        capacity::fits_more(u, more, cap),
                        "fits_more({u}, {more}, {cap})"
                    );
                }
            }
        }
        // Below 2^53 the integer tests answer (no float fallback), above it they cannot.
        assert_eq!(CallQuota::new(1e12, 1e12, 1.0).whole, 1_000_000_000_000);
        assert_eq!(capacity::most_fitting(1e12), 1_000_000_001_000);
        assert_eq!(CallQuota::new(EXACT, EXACT, 1.0).whole, u64::MAX);
        assert_eq!(capacity::most_fitting(EXACT), u64::MAX);
    }
}
