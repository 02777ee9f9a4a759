//! Refunds on the local provider: units a call admitted, given back (counting by outcome:
//! the layer reserves before the handler and refunds a response it does not count).

use super::{AbsoluteLocalRateLimiter, LocalKeys, LocalRateLimiter, LocalState, SuppressedLocalRateLimiter};
use crate::absolute::AbsoluteState;
use crate::suppressed::SuppressedState;
use crate::window::{Counts, Refund, Usage, Window, WindowGrid};

/// When a reservation was decided, on the limiter's clock: a reading taken just before the
/// call and one just after it. The units it admitted are in a bucket between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReservedAt {
    pub(crate) before_ms: u64,
    pub(crate) after_ms: u64,
}

impl ReservedAt {
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
    /// Gives back `count` units admitted for `key` at `at`; returns how many were not found
    /// (the key gone, or its bucket out of the window: they no longer counted).
    fn refund(&self, key: &str, count: u64, at: ReservedAt) -> u64 {
        let grid = self.settings.grid;
        let span = at.buckets(&grid, 0);
        self.peek(key, |state, _, now| refund_state(state, &grid, now, span, count))
            .unwrap_or(count)
    }
}

impl LocalRateLimiter {
    /// The limiter's clock now (the time the local provider decides on).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn now_ms(&self) -> u64 {
        self.absolute.keys.clock.now_ms()
    }
}

impl AbsoluteLocalRateLimiter {
    /// Gives back `count` units an admitted call for `key` recorded at `at`; returns how
    /// many it did not find (they no longer counted).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn refund(&self, key: &str, count: u64, at: ReservedAt) -> u64 {
        self.keys.refund(key, count, at)
    }
}

impl SuppressedLocalRateLimiter {
    /// As [`AbsoluteLocalRateLimiter::refund`]: the units go back as accepted and observed.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn refund(&self, key: &str, count: u64, at: ReservedAt) -> u64 {
        self.keys.refund(key, count, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let before_ms = rl.local().now_ms();
            let d = abs.inc("k", &rate, 1);
            let at = ReservedAt {
                before_ms,
                after_ms: rl.local().now_ms(),
            };
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
        let at = ReservedAt {
            before_ms: 0,
            after_ms: 0,
        };
        assert!(sup.inc("k", &rate, 2).is_allowed());
        assert_eq!(sup.refund("k", 1, at), 0);
        assert_eq!(sup.usage("k"), (1, 1));
        assert_eq!(sup.refund("k", 5, at), 4);
        assert_eq!(sup.usage("k"), (0, 0));
    }
}
