//! The local provider: in-process, synchronous, exact under any number of threads.
//!
//! ```
//! use sluicegate::{RateLimit, RateLimitDecision, RateLimiterBuilder};
//! use sluicegate::local::LocalRateLimiterOptions;
//! # fn main() -> Result<(), sluicegate::Error> {
//! let rl = RateLimiterBuilder::new(LocalRateLimiterOptions {
//!     window_size_seconds: 10.try_into()?,
//!     rate_group_size_ms: 100.try_into()?,
//!     hard_limit_factor: Default::default(),
//!     suppression_factor_cache_ms: Default::default(),
//! })
//! .build()?;
//! let rate = RateLimit::try_from(0.5)?; // 0.5/s over 10 s: 5 requests a window
//! for _ in 0..5 {
//!     assert_eq!(rl.local().absolute().inc("user_1", &rate, 1), RateLimitDecision::Allowed);
//! }
//! assert!(!rl.local().absolute().inc("user_1", &rate, 1).is_allowed());
//! # Ok(()) }
//! ```
//!
//! # Malformed calls
//! `inc` answers every call, so a call that cannot be served gets a fixed answer, and
//! `try_inc` gives the reason as an [`Error`] instead:
//!
//! | call | `try_inc` | absolute `inc` | suppressed `inc` |
//! |---|---|---|---|
//! | `count == 0` | [`Error::ZeroCount`] | `Allowed`, nothing recorded | `Allowed`, nothing recorded |
//! | `rate × window < 1` | [`Error::CapacityBelowOne`] | `Rejected { retry_after_ms: u64::MAX, remaining_after_waiting: 0, .. }` | `Suppressed { suppression_factor: 1.0, is_allowed: false }` |
//! | `rate × window >` [`MAX_CAPACITY`](crate::MAX_CAPACITY) (2^52) | [`Error::CapacityAboveMax`] | as above | as above |
//! | `count > rate × window` | [`Error::CountAboveCapacity`] | as above | as above |
//!
//! None of them records anything or creates a key. `u64::MAX` means "never": waiting does
//! not help such a call. Keys are opaque strings: any string, the empty one included, is a
//! key of its own; keys of up to 24 bytes cost no allocation.

mod policy;
pub(crate) mod refund;
pub(crate) mod store;

pub use policy::LocalPolicy;
pub use refund::Reservation;

use std::sync::Arc;

use crate::absolute::{self, AbsoluteState};
use crate::call::{Call, checked_capacity};
use crate::clock::Time;
use crate::random::RandomSource;
use crate::settings::{Settings, WindowOptions};
use crate::suppressed::{self, SuppressedState};
use crate::{
    Error, HardLimitFactor, RateGroupSizeMs, RateLimit, RateLimitDecision,
    SuppressionFactorCacheMs, WindowSizeSeconds,
};
use store::{Full, KeyCount, KeyStore, Spare};

/// The local provider's settings (also the defaults of the other providers' local state).
#[derive(Debug, Clone, Copy)]
pub struct LocalRateLimiterOptions {
    /// How long usage counts.
    pub window_size_seconds: WindowSizeSeconds,
    /// Width of a usage bucket; at most the window.
    pub rate_group_size_ms: RateGroupSizeMs,
    /// The suppressed strategy's headroom before full suppression.
    pub hard_limit_factor: HardLimitFactor,
    /// How long the suppressed strategy may reuse a key's factor.
    pub suppression_factor_cache_ms: SuppressionFactorCacheMs,
}

impl From<&LocalRateLimiterOptions> for WindowOptions {
    fn from(options: &LocalRateLimiterOptions) -> Self {
        WindowOptions {
            window_size_seconds: options.window_size_seconds,
            rate_group_size_ms: options.rate_group_size_ms,
            hard_limit_factor: options.hard_limit_factor,
            suppression_factor_cache_ms: options.suppression_factor_cache_ms,
        }
    }
}

/// `rl.local()`: both strategies, each with its own keys.
#[derive(Debug)]
pub struct LocalRateLimiter {
    absolute: AbsoluteLocalRateLimiter,
    suppressed: SuppressedLocalRateLimiter,
    /// The limit sets made by [`policy`](Self::policy), swept by [`cleanup`](Self::cleanup).
    policies: policy::Registry,
}

impl LocalRateLimiter {
    /// Both strategies' keys count in `count` (the limiter's key budget).
    pub(crate) fn new(
        settings: Settings,
        clock: Time,
        random: Arc<dyn RandomSource>,
        count: &Arc<KeyCount>,
    ) -> Self {
        LocalRateLimiter {
            absolute: AbsoluteLocalRateLimiter {
                keys: LocalKeys::new(settings, clock.clone(), random.clone(), count),
            },
            suppressed: SuppressedLocalRateLimiter {
                keys: LocalKeys::new(settings, clock, random, count),
            },
            policies: policy::Registry::default(),
        }
    }

    /// The absolute strategy: admit up to capacity, reject the rest with a retry time.
    pub fn absolute(&self) -> &AbsoluteLocalRateLimiter {
        &self.absolute
    }

    /// The suppressed strategy: shed load probabilistically between capacity and the hard limit.
    pub fn suppressed(&self) -> &SuppressedLocalRateLimiter {
        &self.suppressed
    }

    /// A [`LimitSet`](crate::policy::LimitSet) decided on this provider, with this limiter's
    /// clock and random source: every limit admits a request or none counts it.
    /// Its keys are swept by [`cleanup`](Self::cleanup) while the policy lives.
    pub fn policy(&self, set: crate::policy::LimitSet) -> LocalPolicy {
        let policy = LocalPolicy::new(
            set,
            self.absolute.keys.clock.clone(),
            self.suppressed.keys.random.clone(),
        );
        self.policies.add(&policy);
        policy
    }

    /// Drops every key with no usage left in its window (and those of the limit sets made by
    /// [`policy`](Self::policy) too); returns how many were dropped.
    /// [`RateLimiter::run_cleanup_loop`](crate::RateLimiter::run_cleanup_loop) calls this.
    pub fn cleanup(&self) -> usize {
        self.absolute.keys.cleanup() + self.suppressed.keys.cleanup() + self.policies.cleanup()
    }
}

/// A strategy's per-key state, as the local provider drives it.
trait LocalState: Sized {
    /// The alignment of the key's table entry ([`store::Entry`]).
    type Align: Copy + std::fmt::Debug;
    fn new(rate: f64) -> Self;
    /// What the infallible `inc` answers for a malformed call.
    fn answer_for_invalid(err: &Error, window_seconds: u64) -> RateLimitDecision;
    /// Decides one checked call; `random` gives the draws.
    fn decide(
        &mut self,
        settings: &Settings,
        call: Call,
        random: &dyn RandomSource,
    ) -> RateLimitDecision;
    /// What the infallible `inc` answers for a new key the full key budget refuses.
    fn answer_for_full(window_seconds: u64) -> RateLimitDecision;
    /// Whether the key still has usage inside the window at `now_ms`.
    fn is_live(&mut self, settings: &Settings, now_ms: u64) -> bool;
    /// Whether the key may make room for a new one under a full key budget.
    fn spare(&mut self, settings: &Settings, now_ms: u64) -> Spare;
    /// Admitted (accepted) usage inside the window at `now_ms`.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    fn accepted(&mut self, settings: &Settings, now_ms: u64) -> u64;
}

impl LocalState for AbsoluteState {
    /// The key and its state fill 64 bytes: one line, when aligned to one.
    type Align = store::CacheLine;
    fn new(rate: f64) -> Self {
        AbsoluteState::new(rate)
    }
    fn answer_for_invalid(err: &Error, window_seconds: u64) -> RateLimitDecision {
        absolute::answer_for_invalid(err, window_seconds)
    }
    #[inline]
    fn decide(
        &mut self,
        settings: &Settings,
        call: Call,
        _: &dyn RandomSource,
    ) -> RateLimitDecision {
        self.inc(&settings.grid, call)
    }
    fn answer_for_full(window_seconds: u64) -> RateLimitDecision {
        RateLimitDecision::Rejected {
            window_size_seconds: window_seconds,
            retry_after_ms: window_seconds * 1000,
            remaining_after_waiting: 0,
        }
    }
    fn is_live(&mut self, settings: &Settings, now_ms: u64) -> bool {
        self.usage(&settings.grid, now_ms) > 0
    }
    fn spare(&mut self, settings: &Settings, now_ms: u64) -> Spare {
        let used = self.usage(&settings.grid, now_ms);
        spare_of(used, self.rate(), settings)
    }
    fn accepted(&mut self, settings: &Settings, now_ms: u64) -> u64 {
        self.usage(&settings.grid, now_ms)
    }
}

impl LocalState for SuppressedState {
    /// 88 bytes: two lines at best, so packed (aligned, they would take 128).
    type Align = ();
    fn new(rate: f64) -> Self {
        SuppressedState::new(rate)
    }
    fn answer_for_invalid(err: &Error, _: u64) -> RateLimitDecision {
        suppressed::answer_for_invalid(err)
    }
    #[inline]
    fn decide(
        &mut self,
        settings: &Settings,
        call: Call,
        random: &dyn RandomSource,
    ) -> RateLimitDecision {
        self.inc(&settings.grid, &settings.suppression, call, || {
            random.next_f64()
        })
    }
    fn answer_for_full(_: u64) -> RateLimitDecision {
        RateLimitDecision::Suppressed {
            suppression_factor: 1.0,
            is_allowed: false,
        }
    }
    fn is_live(&mut self, settings: &Settings, now_ms: u64) -> bool {
        self.usage(&settings.grid, now_ms).observed > 0
    }
    fn spare(&mut self, settings: &Settings, now_ms: u64) -> Spare {
        // Observed usage: what the hard limit is about, and at least the accepted usage.
        let used = self.usage(&settings.grid, now_ms).observed;
        spare_of(used, self.rate(), settings)
    }
    fn accepted(&mut self, settings: &Settings, now_ms: u64) -> u64 {
        self.usage(&settings.grid, now_ms).accepted
    }
}

/// Idle with no usage, light with at most half of the capacity at `rate`, kept otherwise.
fn spare_of(used: u64, rate: f64, settings: &Settings) -> Spare {
    if used == 0 {
        Spare::Idle
    } else if used as f64 * 2.0 <= crate::config::capacity::of(rate, settings.grid.window_seconds())
    {
        Spare::Light
    } else {
        Spare::Keep
    }
}

/// One strategy's keys with what deciding on them needs: `inc`, `try_inc` and cleanup,
/// written once for both strategies.
#[derive(Debug)]
struct LocalKeys<S: LocalState> {
    keys: KeyStore<S, S::Align>,
    settings: Settings,
    clock: Time,
    random: Arc<dyn RandomSource>,
}

impl<S: LocalState> LocalKeys<S> {
    fn new(
        settings: Settings,
        clock: Time,
        random: Arc<dyn RandomSource>,
        count: &Arc<KeyCount>,
    ) -> Self {
        LocalKeys {
            keys: KeyStore::new(count.clone(), true),
            settings,
            clock,
            random,
        }
    }

    #[inline]
    fn window_seconds(&self) -> u64 {
        self.settings.grid.window_seconds()
    }

    #[inline]
    fn inc(&self, key: &str, rate: &RateLimit, count: u64) -> RateLimitDecision {
        // Not through `try_inc`: moving its `Result` (the error type is large) costs more
        // than the rest of a call.
        match checked_capacity(rate.get(), self.window_seconds(), count) {
            Ok(cap) => match self.decide(key, rate.get(), count, cap) {
                Ok(decision) => decision,
                Err(_) => S::answer_for_full(self.window_seconds()),
            },
            Err(err) => S::answer_for_invalid(&err, self.window_seconds()),
        }
    }

    #[inline]
    fn try_inc(&self, key: &str, rate: &RateLimit, count: u64) -> Result<RateLimitDecision, Error> {
        let cap = checked_capacity(rate.get(), self.window_seconds(), count)?;
        Ok(self.decide(key, rate.get(), count, cap)?)
    }

    /// A well-formed call, decided on the key's state now; `Err` for a new key the full
    /// budget refuses.
    #[inline]
    fn decide(
        &self,
        key: &str,
        rate: f64,
        count: u64,
        cap: f64,
    ) -> Result<RateLimitDecision, Full> {
        let call = Call {
            now_ms: self.clock.now_ms(),
            rate,
            count,
            cap,
        };
        self.keys.try_with(
            key,
            || S::new(rate),
            |s| s.decide(&self.settings, call, &*self.random),
            |s| s.spare(&self.settings, call.now_ms),
        )
    }

    /// [`try_inc`](Self::try_inc), with the key's admitted usage right after the call,
    /// read in the same lookup (the layer's `RateLimit: r=` on admitted responses).
    #[inline]
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    fn try_inc_with_accepted(
        &self,
        key: &str,
        rate: &RateLimit,
        count: u64,
    ) -> Result<(RateLimitDecision, u64), Error> {
        let cap = checked_capacity(rate.get(), self.window_seconds(), count)?;
        Ok(self.inc_checked_with_accepted(key.as_bytes(), rate.get(), count, cap)?)
    }

    /// [`try_inc_with_accepted`](Self::try_inc_with_accepted) for a call checked once
    /// before (`cap` is `checked_capacity(rate, window, count)`): the layer's fixed rate
    /// and cost. `Err` for a new key the full budget refuses.
    #[inline]
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    fn inc_checked_with_accepted(
        &self,
        key: &[u8],
        rate: f64,
        count: u64,
        cap: f64,
    ) -> Result<(RateLimitDecision, u64), Full> {
        let call = Call {
            now_ms: self.clock.now_ms(),
            rate,
            count,
            cap,
        };
        self.keys.try_with_ascii(
            key,
            || S::new(call.rate),
            |s| {
                let decision = s.decide(&self.settings, call, &*self.random);
                (decision, s.accepted(&self.settings, call.now_ms))
            },
            |s| s.spare(&self.settings, call.now_ms),
        )
    }

    /// Runs `f` on an existing key's state now; creates nothing.
    fn peek<R>(&self, key: &str, f: impl FnOnce(&mut S, &Settings, u64) -> R) -> Option<R> {
        let now = self.clock.now_ms();
        self.keys.peek(key, |s| f(s, &self.settings, now))
    }

    fn cleanup(&self) -> usize {
        let now = self.clock.now_ms();
        self.keys.retain(|s| s.is_live(&self.settings, now))
    }
}

/// `inc`, `try_inc` and `key_count` of a strategy's limiter, the same for both: they hand
/// the call to its `LocalKeys`. The doc comment given documents `inc`.
macro_rules! inc_methods {
    ($(#[$inc_doc:meta])*) => {
        $(#[$inc_doc])*
        #[inline]
        pub fn inc(&self, key: &str, rate: &RateLimit, count: u64) -> RateLimitDecision {
            self.keys.inc(key, rate, count)
        }

        /// [`inc`](Self::inc), with malformed calls returned as errors.
        #[inline]
        pub fn try_inc(
            &self,
            key: &str,
            rate: &RateLimit,
            count: u64,
        ) -> Result<RateLimitDecision, Error> {
            self.keys.try_inc(key, rate, count)
        }

        /// [`try_inc`](Self::try_inc), with the key's admitted usage right after the call
        /// from the same lookup. Crate-internal: the layer's admitted `RateLimit` field.
        #[inline]
        #[cfg_attr(not(feature = "tower"), allow(dead_code))]
        pub(crate) fn try_inc_with_accepted(
            &self,
            key: &str,
            rate: &RateLimit,
            count: u64,
        ) -> Result<(RateLimitDecision, u64), Error> {
            self.keys.try_inc_with_accepted(key, rate, count)
        }

        /// [`try_inc_with_accepted`](Self::try_inc_with_accepted) for a call whose
        /// capacity `cap` was checked once (`checked_capacity(rate, window, count)`, at the
        /// layer's build time), the key given as ASCII bytes. Crate-internal: the layer's
        /// fixed-rate fast path.
        #[inline]
        #[cfg_attr(not(feature = "tower"), allow(dead_code))]
        pub(crate) fn inc_checked_with_accepted(
            &self,
            key: &[u8],
            rate: f64,
            count: u64,
            cap: f64,
        ) -> Result<(RateLimitDecision, u64), store::Full> {
            self.keys.inc_checked_with_accepted(key, rate, count, cap)
        }

        /// How many keys are held in memory.
        pub fn key_count(&self) -> usize {
            self.keys.keys.len()
        }
    };
}

/// `rl.local().absolute()`.
#[derive(Debug)]
pub struct AbsoluteLocalRateLimiter {
    keys: LocalKeys<AbsoluteState>,
}

impl AbsoluteLocalRateLimiter {
    inc_methods! {
        /// Admits `count` units for `key` iff the window's admitted usage plus `count` fits
        /// `rate × window`; an admitted call is recorded, a rejected one is not. Check and
        /// record are one atomic step. See the module docs for malformed calls.
    }

    /// Whether `inc(key, rate, 1)` at the key's latest rate would be admitted now, with the
    /// wait if not. Records nothing; an unknown key is `Allowed` and is not created.
    pub fn is_allowed(&self, key: &str) -> RateLimitDecision {
        self.keys
            .peek(key, |s, settings, now| s.check(&settings.grid, now))
            .unwrap_or(RateLimitDecision::Allowed)
    }

    /// Admitted usage of `key` inside the window now (0 for an unknown key).
    pub fn usage(&self, key: &str) -> u64 {
        self.keys
            .peek(key, |s, settings, now| s.usage(&settings.grid, now))
            .unwrap_or(0)
    }
}

/// `rl.local().suppressed()`.
#[derive(Debug)]
pub struct SuppressedLocalRateLimiter {
    keys: LocalKeys<SuppressedState>,
}

impl SuppressedLocalRateLimiter {
    inc_methods! {
        /// Decides one call: `Allowed` below capacity, `Suppressed { is_allowed, .. }` above
        /// it (always check `is_allowed`). Every call counts as observed. See the module docs
        /// for malformed calls.
    }

    /// The key's suppression factor now, in `[0, 1]`: 0 below capacity or for an unknown
    /// key, 1 over the hard limit. Records nothing and creates no key.
    pub fn get_suppression_factor(&self, key: &str) -> f64 {
        self.keys
            .peek(key, |s, settings, now| {
                s.factor_now(&settings.grid, &settings.suppression, now)
            })
            .unwrap_or(0.0)
    }

    /// `(accepted, observed)` usage of `key` inside the window now (zeros for an unknown key).
    pub fn usage(&self, key: &str) -> (u64, u64) {
        self.keys
            .peek(key, |s, settings, now| {
                let u = s.usage(&settings.grid, now);
                (u.accepted, u.observed)
            })
            .unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_sizes_are_the_ones_the_key_budget_docs_give() {
        // A table slot is an entry and a control byte (see `KeyBudget`'s memory docs).
        type Absolute = store::Entry<AbsoluteState, <AbsoluteState as LocalState>::Align>;
        type Suppressed = store::Entry<SuppressedState, <SuppressedState as LocalState>::Align>;
        assert_eq!((size_of::<Absolute>(), align_of::<Absolute>()), (64, 64));
        assert_eq!(size_of::<Suppressed>(), 88);
        // The key first: a short key's compare (one 32-byte load) stays on the entry's line.
        assert_eq!(std::mem::offset_of!(Absolute, 0), 0);
        assert_eq!(std::mem::offset_of!(Suppressed, 0), 0);
    }
}
