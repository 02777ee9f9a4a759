//! The suppressed strategy on a hybrid key: the local core's three cases
//! ([`Regime`]) on the key's Redis-wide usage within a lease; the local core itself on
//! this instance's share without one.

use super::key::KeyState;
use super::mode::{Conditions, Mode, Now, View};
use crate::RateLimitDecision;
use crate::call::Call;
use crate::config::capacity;
use crate::suppressed::{Regime, SuppressedState, accepted, factor_of};
use crate::window::{Usage, WindowGrid};

/// The local core's formula on the key's Redis-wide observed usage at the refresh.
fn formula(c: &Conditions<'_>, view: &View, rate: f64) -> f64 {
    factor_of(c.grid, view.at, rate, view.observed, view.recent)
}

/// One key under the suppressed strategy.
pub(crate) type SuppressedKey = KeyState<SuppressedState, Usage>;

impl SuppressedKey {
    pub(crate) fn new(rate: f64, cap: f64, now_local: u64) -> Self {
        Self::with_own(SuppressedState::new(rate), rate, cap, now_local)
    }

    /// Counts a decided call: `observed` units offered, `accepted` of them admitted.
    pub(crate) fn record(&mut self, c: &Conditions<'_>, now: Now, accepted: u64, observed: u64) {
        self.own.usage(c.grid, now.server);
        self.own.record(c.grid, now.server, accepted, observed);
        self.push(c.grid, now, Usage { accepted, observed });
    }

    /// The key's observed usage: Redis's at the refresh, plus what this instance observed
    /// since, times the holders (the others observe about as much).
    fn observed_estimate(&self, view: &View) -> u64 {
        view.observed
            .saturating_add(self.observed_since.saturating_mul(view.holders))
    }

    /// The case a call of `count` units at capacity `cap` is in, within a lease.
    fn regime(&self, c: &Conditions<'_>, now: Now, view: &View, count: u64, cap: f64) -> Regime {
        Regime::of(
            self.observed_estimate(view),
            cap * c.params.hard_limit_factor,
            || self.lease_fits(c, now, view, count, cap),
        )
    }

    /// Decides one checked call from local state; `draw` as in the local core.
    #[inline]
    pub(crate) fn inc(
        &mut self,
        c: &Conditions<'_>,
        now: Now,
        call: Call,
        draw: impl FnOnce() -> f64,
    ) -> RateLimitDecision {
        // Observed usage past `MAX_OBSERVED` is never recorded (the local core's rule; it
        // decides the other modes).
        if let Some(view) = &self.view
            && !capacity::fits_observed(self.observed_estimate(view), call.count)
        {
            // Refreshed next cycle: the window may have emptied since this view.
            self.touched = true;
            return RateLimitDecision::Suppressed {
                suppression_factor: 1.0,
                is_allowed: false,
            };
        }
        // The common case, kept small: a live lease with room, under the hard limit.
        if let Some(view) = &self.view {
            if call.rate == self.rate
                && now.local < view.valid_until
                && capacity::fits_more(self.spent, call.count, view.lease)
                && capacity::fits_more(view.used + self.spent, call.count, call.cap)
                && !capacity::reaches(
                    self.observed_estimate(view),
                    call.cap * c.params.hard_limit_factor,
                )
            {
                self.touched = true;
                self.record(c, now, call.count, call.count);
                return RateLimitDecision::Allowed;
            }
        }
        self.inc_slow(c, now, call, draw)
    }

    #[inline(never)]
    fn inc_slow(
        &mut self,
        c: &Conditions<'_>,
        now: Now,
        call: Call,
        draw: impl FnOnce() -> f64,
    ) -> RateLimitDecision {
        if call.rate != self.rate {
            self.factor.clear();
        }
        self.rate = call.rate;
        self.cap = call.cap;
        self.touched = true;
        let n = call.count;
        match self.mode(c, now) {
            Mode::Lease(view) => {
                let regime = self.regime(c, now, &view, n, call.cap);
                if regime == Regime::Shedding {
                    self.wanted = self.wanted.max(n);
                }
                let rate = self.rate;
                let cache = &mut self.factor;
                let decision = regime.decide(
                    || cache.get(now.server, c.params.cache_ms, || formula(c, &view, rate)),
                    draw,
                );
                self.record(c, now, accepted(&decision, n), n);
                decision
            }
            // No lease yet or Redis away: the local core on this instance's own usage.
            Mode::Provisional | Mode::Outage(_) => {
                let share = self.share(now, call);
                let decision = self.own.inc(c.grid, c.params, share, draw);
                self.push(
                    c.grid,
                    now,
                    Usage {
                        accepted: accepted(&decision, n),
                        observed: n,
                    },
                );
                decision
            }
        }
    }

    /// A limit set's verdict on `call`, recording nothing ([`record`](Self::record) counts it):
    /// the case it is in and the factor it would see, on the key's Redis-wide usage within a
    /// lease, on this instance's share (the local core) without one.
    pub(crate) fn verdict(&mut self, c: &Conditions<'_>, now: Now, call: Call) -> (Regime, f64) {
        if call.rate != self.rate {
            self.factor.clear();
        }
        self.rate = call.rate;
        self.cap = call.cap;
        self.touched = true;
        match self.mode(c, now) {
            Mode::Lease(view) => {
                let regime = self.regime(c, now, &view, call.count, call.cap);
                if regime == Regime::Shedding {
                    self.wanted = self.wanted.max(call.count);
                }
                let (rate, cache) = (self.rate, &mut self.factor);
                let factor = regime.factor(|| {
                    cache.get(now.server, c.params.cache_ms, || formula(c, &view, rate))
                });
                (regime, factor)
            }
            Mode::Provisional | Mode::Outage(_) => {
                let share = self.share(now, call);
                self.own.standing(c.grid, c.params, share)
            }
        }
    }

    /// This instance's share of `call` without a lease: `1 / N` of its rate and capacity,
    /// `N` the holders last seen.
    fn share(&self, now: Now, call: Call) -> Call {
        let holders = self.holders_last.max(1) as f64;
        Call {
            now_ms: now.server,
            rate: call.rate / holders,
            cap: call.cap / holders,
            count: call.count,
        }
    }

    /// The factor a call would see now; records nothing.
    pub(crate) fn factor(&mut self, c: &Conditions<'_>, now: Now) -> f64 {
        match self.mode(c, now) {
            Mode::Lease(view) => self
                .regime(c, now, &view, 1, self.cap)
                .factor(|| formula(c, &view, self.rate)),
            Mode::Provisional | Mode::Outage(_) => {
                self.own.factor_now(c.grid, c.params, now.server)
            }
        }
    }

    /// Whether cleanup may drop the key.
    pub(crate) fn idle(&mut self, geo: &WindowGrid, now: Now) -> bool {
        self.own.usage(geo, now.server).observed == 0 && self.is_idle(now.local)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{at, call, ctx, geo, view};
    use super::*;

    #[test]
    fn suppressed_sheds_with_the_redis_wide_factor_past_its_lease() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = SuppressedKey::new(10.0, 100.0, 0);
        let mut refresh = view(0.0, 100, 1, at(0));
        // 120 observed in the window, 20 in the last second: R = max(12, 20) = 20/s.
        refresh.view.observed = 120;
        refresh.view.recent = 20;
        key.refreshed(0, refresh);
        // Worked by hand: the window's 120 over the 10 s its buckets cover is 12/s, the last
        // second's 20 over 1 s is 20/s; R = 20/s, so 1 - 10/20.
        let expected = 0.5;
        match key.inc(&c, at(1), call(at(1), 1), || 0.0) {
            RateLimitDecision::Suppressed {
                suppression_factor,
                is_allowed,
            } => {
                assert_eq!(suppression_factor, expected);
                assert!(!is_allowed);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(key.factor(&c, at(2)), expected);
        // The hard limit (150) on Redis-wide observed usage: factor 1.
        let mut over = view(0.0, 100, 1, at(3));
        over.view.observed = 150;
        key.refreshed(0, over);
        assert_eq!(key.factor(&c, at(3)), 1.0);
    }
}
