//! Reservations and refunds on the local provider: units a call admitted, given back
//! (counting by outcome: the layer reserves before the handler and refunds a response it
//! does not count).

use super::{AbsoluteLocalRateLimiter, LocalKeys, LocalState, SuppressedLocalRateLimiter};
use crate::absolute::AbsoluteState;
use crate::suppressed::SuppressedState;
use crate::window::{Counts, Refund, Usage, Window, WindowGrid};
use crate::{Error, RateLimit, RateLimitDecision};

/// When an admitted call (a `reserve`) was decided: what a `refund` of its units needs.
///
/// It holds two readings of the provider's clock, one just before the call and one just
/// after; the units are in a bucket between the two. A refund takes them from the oldest
/// bucket of that span that holds any, so what is left is never attributed to an older
/// bucket than its own and never expires earlier than it would have: a refund can make a
/// limit stricter by the span's width, never looser. It names no key: give the refund the
/// key and count of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub(crate) before_ms: u64,
    pub(crate) after_ms: u64,
}

impl Reservation {
    /// `decide`'s answer with the reservation around it: the clock `now_ms` read just
    /// before and just after the decision (every provider's `reserve`).
    pub(crate) fn around<D>(
        now_ms: impl Fn() -> u64,
        decide: impl FnOnce() -> Result<D, Error>,
    ) -> Result<(D, Reservation), Error> {
        let before_ms = now_ms();
        let decision = decide()?;
        Ok((
            decision,
            Reservation {
                before_ms,
                after_ms: now_ms(),
            },
        ))
    }

    /// [`around`](Self::around) for a decision that awaits Redis: `decide` runs (is first
    /// polled) after the first reading.
    #[cfg(feature = "redis-tokio")]
    pub(crate) async fn around_async<D>(
        now_ms: impl Fn() -> u64,
        decide: impl Future<Output = Result<D, Error>>,
    ) -> Result<(D, Reservation), Error> {
        let before_ms = now_ms();
        let decision = decide.await?;
        Ok((
            decision,
            Reservation {
                before_ms,
                after_ms: now_ms(),
            },
        ))
    }

    /// The buckets the units may be in, on `grid`, for times shifted by `offset_ms` (the
    /// hybrid provider's server grid).
    pub(crate) fn buckets(&self, grid: &WindowGrid, offset_ms: i64) -> (u64, u64) {
        let shift = |t: u64| (t as i64).saturating_add(offset_ms).max(0) as u64;
        (
            grid.bucket_of(shift(self.before_ms)),
            grid.bucket_of(shift(self.after_ms.max(self.before_ms))),
        )
    }
}

/// The limits of a set of `len` that a refund's `mask` names (bit `i`: limit `i`), in order.
pub(crate) fn masked(len: usize, mask: u16) -> impl Iterator<Item = usize> + Clone {
    (0..len).filter(move |i| mask & (1 << i) != 0)
}

/// A strategy's state with a window a refund can take units out of.
pub(crate) trait Refundable {
    type Counts: Refund;
    fn window_mut(&mut self) -> &mut Window<Self::Counts>;
    /// `count` admitted units as the window counts them.
    fn units(count: u64) -> Self::Counts;
}

impl Refundable for AbsoluteState {
    type Counts = u64;
    fn window_mut(&mut self) -> &mut Window<u64> {
        AbsoluteState::window_mut(self)
    }
    fn units(count: u64) -> u64 {
        count
    }
}

impl Refundable for SuppressedState {
    type Counts = Usage;
    fn window_mut(&mut self) -> &mut Window<Usage> {
        SuppressedState::window_mut(self)
    }
    fn units(count: u64) -> Usage {
        Usage {
            accepted: count,
            observed: count,
        }
    }
}

/// Takes `count` admitted units back from `state`'s buckets of `at` (after expiring what
/// no longer counts at `now_ms`); returns the units it did not find.
pub(crate) fn refund_state<S: Refundable>(
    state: &mut S,
    grid: &WindowGrid,
    now_ms: u64,
    (from, to): (u64, u64),
    count: u64,
) -> u64 {
    let window = state.window_mut();
    window.expire(grid, now_ms);
    window.take_back(from, to, S::units(count)).accepted()
}

impl<S: LocalState + Refundable> LocalKeys<S> {
    /// `try_inc`, with when it was decided.
    fn reserve(
        &self,
        key: &str,
        rate: &RateLimit,
        count: u64,
    ) -> Result<(RateLimitDecision, Reservation), Error> {
        let before_ms = self.clock.now_ms();
        let decision = self.try_inc(key, rate, count)?;
        let after_ms = self.clock.now_ms();
        Ok((
            decision,
            Reservation {
                before_ms,
                after_ms,
            },
        ))
    }

    /// Gives back `count` units admitted for `key` at `at`; returns how many were not found
    /// (the key gone, or its bucket out of the window: they no longer counted).
    fn refund(&self, key: &str, count: u64, at: Reservation) -> u64 {
        let grid = self.settings.grid;
        let span = at.buckets(&grid, 0);
        self.peek(key, |state, _, now| {
            refund_state(state, &grid, now, span, count)
        })
        .unwrap_or(count)
    }
}

impl super::LocalRateLimiter {
    /// The limiter's clock now: local reservations are read on it.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn now_ms(&self) -> u64 {
        self.absolute.keys.clock.now_ms()
    }
}

/// `reserve` and `refund`, the same for both strategies.
macro_rules! refund_methods {
    () => {
        /// [`try_inc`](Self::try_inc), with the [`Reservation`] a later
        /// [`refund`](Self::refund) of its units needs (counting by outcome: reserve before
        /// the work, give the units back if its outcome is not to count).
        pub fn reserve(
            &self,
            key: &str,
            rate: &RateLimit,
            count: u64,
        ) -> Result<(RateLimitDecision, Reservation), Error> {
            self.keys.reserve(key, rate, count)
        }

        /// Gives back `count` units that an admitted [`reserve`](Self::reserve) for `key`
        /// recorded; returns how many it did not find (the key's window had dropped them:
        /// they no longer counted). A limit that only some outcomes should count still
        /// holds under concurrency: every call in flight holds its units until refunded.
        pub fn refund(&self, key: &str, count: u64, reservation: Reservation) -> u64 {
            self.keys.refund(key, count, reservation)
        }
    };
}

impl AbsoluteLocalRateLimiter {
    refund_methods!();
}

/// A refund gives the units back as accepted and observed (units the strategy declined
/// stay observed).
impl SuppressedLocalRateLimiter {
    refund_methods!();
}

#[cfg(test)]
mod tests {
    use crate::local::LocalRateLimiterOptions;
    use crate::{ManualClock, RateLimit, RateLimiterBuilder};

    fn limiter(clock: &ManualClock) -> crate::RateLimiter {
        RateLimiterBuilder::new(LocalRateLimiterOptions {
            window_size_seconds: 10.try_into().unwrap(),
            rate_group_size_ms: 100.try_into().unwrap(),
            hard_limit_factor: Default::default(),
            suppression_factor_cache_ms: Default::default(),
        })
        .clock(clock.clone())
        .build()
        .unwrap()
    }

    #[test]
    fn a_refunded_unit_no_longer_counts_and_a_kept_one_expires_on_time() {
        let clock = ManualClock::new(1_000);
        let rl = limiter(&clock);
        let abs = rl.local().absolute();
        let rate = RateLimit::try_from(0.3).unwrap(); // 3 a window
        let reserve = || {
            let (d, at) = abs.reserve("k", &rate, 1).unwrap();
            (d.is_allowed(), at)
        };
        let (ok, first) = reserve();
        assert!(ok);
        clock.advance(2_000);
        for _ in 0..2 {
            assert!(reserve().0);
        }
        assert!(!reserve().0, "three reserved: full");
        clock.advance(500);
        // The first one (bucket 10) is given back: one more fits, the others still count.
        assert_eq!(abs.refund("k", 1, first), 0);
        assert_eq!(abs.usage("k"), 2);
        assert!(reserve().0);
        assert!(!reserve().0);
        // A unit of a bucket already out of the window is not found, and nothing changes.
        clock.advance(20_000);
        assert_eq!(abs.refund("k", 1, first), 1);
        assert_eq!(abs.refund("missing", 2, first), 2);
        assert_eq!(abs.usage("k"), 0);
    }

    #[test]
    fn a_suppressed_refund_returns_accepted_and_observed() {
        let clock = ManualClock::new(0);
        let rl = limiter(&clock);
        let sup = rl.local().suppressed();
        let rate = RateLimit::try_from(1.0).unwrap();
        let (decision, at) = sup.reserve("k", &rate, 2).unwrap();
        assert!(decision.is_allowed());
        assert_eq!(sup.refund("k", 1, at), 0);
        assert_eq!(sup.usage("k"), (1, 1));
        assert_eq!(sup.refund("k", 5, at), 4);
        assert_eq!(sup.usage("k"), (0, 0));
    }
}
