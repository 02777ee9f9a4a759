//! The suppressed strategy (probabilistic shedding, after Ably).
//!
//! In order: over the hard limit → declined with factor 1; below capacity → `Allowed`;
//! otherwise admit with probability `1 − sf`, where `sf = clamp(1 − r / R, 0, 1)` and `R` is
//! the key's perceived rate, `max(O / W, observed usage in the last second)` (each sum over
//! the time its bucket positions cover, so coarse groups do not bias it). At a steady
//! offered load of `k·r` (`1 < k < h`) this admits `r`; at `h·r` or more the observed usage
//! stays at or over the hard limit and everything is shed.

use crate::RateLimitDecision;
use crate::call::Call;
use crate::config::capacity;
use crate::settings::SuppressionParams;
use crate::window::{Usage, Window, WindowGrid};

/// The span over which the "last second" observed usage is taken.
const RECENT_MS: u64 = 1000;

/// What the infallible suppressed `inc` answers for a malformed call: a zero count is a
/// free probe (`Allowed`), anything that can never fit is declined with factor 1.
pub(crate) fn answer_for_invalid(err: &crate::Error) -> RateLimitDecision {
    match err {
        crate::Error::ZeroCount => RateLimitDecision::Allowed,
        _ => RateLimitDecision::Suppressed {
            suppression_factor: 1.0,
            is_allowed: false,
        },
    }
}

/// The factor from a key's observed usage: `observed` in its whole window and `recent` in
/// the buckets overlapping the last second, at `now_ms`. Shared with the hybrid provider,
/// which gets both sums from Redis.
///
/// `clamp(1 − r / R, 0, 1)`, where the perceived rate `R` is the larger of the window's
/// and the last second's observed rate. Each sum is divided by the time its bucket
/// positions cover (from the grid start of the oldest position it may include, up to now,
/// at least a second), not by a nominal span: live buckets reach back up to one group
/// further than the window (or the second), so a nominal divisor overstates the rate when
/// groups are coarse. With fine groups this is `O / W`.
pub(crate) fn factor_of(
    geo: &WindowGrid,
    now_ms: u64,
    rate: f64,
    observed: u64,
    recent: u64,
) -> f64 {
    let per_second = |observed: u64, first_bucket: u64| {
        let covered_ms = now_ms
            .saturating_sub(first_bucket * geo.group_ms())
            .max(RECENT_MS);
        observed as f64 * 1000.0 / covered_ms as f64
    };
    let average = per_second(observed, geo.oldest_live(now_ms));
    let last_second = per_second(recent, geo.bucket_of(now_ms.saturating_sub(RECENT_MS)));
    let perceived = average.max(last_second);
    if perceived <= 0.0 {
        return 0.0;
    }
    (1.0 - rate / perceived).clamp(0.0, 1.0)
}

/// Where a suppressed call stands, whatever keeps the counts (the local core's window, the
/// hybrid provider's view of Redis): the strategy's three cases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Regime {
    /// Observed usage reached the hard limit: declined, factor 1.
    OverHardLimit,
    /// The call fits the capacity: `Allowed`.
    UnderCapacity,
    /// Between the two: admitted with probability `1 − factor`.
    Shedding,
}

impl Regime {
    /// The case of a call: `observed` the key's observed usage, `hard_limit` its capacity
    /// times the hard limit factor, `fits` whether the call fits (asked only under the
    /// hard limit).
    #[inline]
    pub(crate) fn of(observed: u64, hard_limit: f64, fits: impl FnOnce() -> bool) -> Regime {
        if capacity::reaches(observed, hard_limit) {
            Regime::OverHardLimit
        } else if fits() {
            Regime::UnderCapacity
        } else {
            Regime::Shedding
        }
    }

    /// The decision: `factor` is asked only when shedding, and `draw` (uniform in
    /// `[0, 1)`) after it.
    #[inline]
    pub(crate) fn decide(
        self,
        factor: impl FnOnce() -> f64,
        draw: impl FnOnce() -> f64,
    ) -> RateLimitDecision {
        match self {
            Regime::OverHardLimit => RateLimitDecision::Suppressed {
                suppression_factor: 1.0,
                is_allowed: false,
            },
            Regime::UnderCapacity => RateLimitDecision::Allowed,
            Regime::Shedding => {
                let factor = factor();
                RateLimitDecision::Suppressed {
                    suppression_factor: factor,
                    is_allowed: draw() >= factor,
                }
            }
        }
    }

    /// The factor a call would see: 1 over the hard limit, 0 while it fits, `formula`
    /// otherwise.
    pub(crate) fn factor(self, formula: impl FnOnce() -> f64) -> f64 {
        match self {
            Regime::OverHardLimit => 1.0,
            Regime::UnderCapacity => 0.0,
            Regime::Shedding => formula(),
        }
    }
}

/// Units a decision on `count` offered units accepts (every offered unit is observed).
#[inline]
pub(crate) fn accepted(decision: &RateLimitDecision, count: u64) -> u64 {
    if decision.is_allowed() { count } else { 0 }
}

/// A key's factor, reused for `suppression_factor_cache_ms` after it is computed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FactorCache {
    factor: f64,
    /// The factor is reused while `now < until`.
    until: u64,
}

impl FactorCache {
    /// The cached factor, or `compute`'s, cached from `now_ms` for `cache_ms`.
    #[inline]
    pub(crate) fn get(&mut self, now_ms: u64, cache_ms: u64, compute: impl FnOnce() -> f64) -> f64 {
        if now_ms >= self.until {
            self.factor = compute();
            self.until = now_ms.saturating_add(cache_ms);
        }
        self.factor
    }

    /// Forgets the factor (the key's rate changed).
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.until = 0;
    }
}

/// One key under the suppressed strategy.
#[derive(Debug, Clone)]
pub(crate) struct SuppressedState {
    /// The rate of the latest `inc`, used by `get_suppression_factor`.
    rate: f64,
    window: Window<Usage>,
    factor: FactorCache,
}

impl SuppressedState {
    /// The rate of the latest call (the key budget's eviction test reads it).
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    pub(crate) fn new(rate: f64) -> Self {
        SuppressedState {
            rate,
            window: Window::default(),
            factor: FactorCache::default(),
        }
    }

    /// Decides one call; `draw` gives a uniform number in `[0, 1)` and is called only when
    /// the decision is probabilistic.
    #[inline]
    pub(crate) fn inc(
        &mut self,
        geo: &WindowGrid,
        params: &SuppressionParams,
        call: Call,
        draw: impl FnOnce() -> f64,
    ) -> RateLimitDecision {
        let Some(regime) = self.regime_of(geo, params, call) else {
            return RateLimitDecision::Suppressed {
                suppression_factor: 1.0,
                is_allowed: false,
            };
        };
        let Call { now_ms, rate, .. } = call;
        let (cache, window) = (&mut self.factor, &self.window);
        let decision = regime.decide(
            || {
                cache.get(now_ms, params.cache_ms, || {
                    formula(window, geo, now_ms, rate)
                })
            },
            draw,
        );
        self.record(geo, now_ms, accepted(&decision, call.count), call.count);
        decision
    }

    /// The case `call` is in on this key now; `None` when its observed usage could not be
    /// recorded (past `MAX_OBSERVED`, 2^53), which is declined as over the limit. Records
    /// nothing.
    #[inline]
    fn regime_of(
        &mut self,
        geo: &WindowGrid,
        params: &SuppressionParams,
        call: Call,
    ) -> Option<Regime> {
        if call.rate != self.rate {
            self.rate = call.rate;
            self.factor.clear();
        }
        self.window.expire(geo, call.now_ms);
        let total = self.window.total();
        // Observed usage past `MAX_OBSERVED` (2^53) is not recorded, so no provider's sum
        // ever loses exactness or overflows: declined as over the limit, recording nothing.
        if !capacity::fits_observed(total.observed, call.count) {
            return None;
        }
        let regime = Regime::of(total.observed, call.cap * params.hard_limit_factor, || {
            capacity::fits_more(total.accepted, call.count, call.cap)
        });
        Some(regime)
    }

    /// Where `call` stands now and the factor it would see (cached as `inc` caches it),
    /// recording nothing: a limit set's verdict, counted afterwards with [`record`](Self::record).
    #[cfg(feature = "redis-tokio")]
    pub(crate) fn standing(
        &mut self,
        geo: &WindowGrid,
        params: &SuppressionParams,
        call: Call,
    ) -> (Regime, f64) {
        let Some(regime) = self.regime_of(geo, params, call) else {
            return (Regime::OverHardLimit, 1.0);
        };
        let (cache, window) = (&mut self.factor, &self.window);
        let factor = regime.factor(|| {
            cache.get(call.now_ms, params.cache_ms, || {
                formula(window, geo, call.now_ms, call.rate)
            })
        });
        (regime, factor)
    }

    /// The factor a call would see now, at the latest rate: 1 over the hard limit, 0 while one
    /// more unit fits, the formula otherwise. Never cached, records nothing.
    pub(crate) fn factor_now(
        &mut self,
        geo: &WindowGrid,
        params: &SuppressionParams,
        now_ms: u64,
    ) -> f64 {
        self.window.expire(geo, now_ms);
        let cap = capacity::of(self.rate, geo.window_seconds());
        let total = self.window.total();
        Regime::of(total.observed, cap * params.hard_limit_factor, || {
            capacity::fits_more(total.accepted, 1, cap)
        })
        .factor(|| formula(&self.window, geo, now_ms, self.rate))
    }

    /// Records a call's outcome.
    #[inline]
    pub(crate) fn record(&mut self, geo: &WindowGrid, now_ms: u64, accepted: u64, observed: u64) {
        self.window.add(geo, now_ms, Usage { accepted, observed });
    }

    /// Accepted and observed usage still inside the window at `now_ms`.
    pub(crate) fn usage(&mut self, geo: &WindowGrid, now_ms: u64) -> Usage {
        self.window.expire(geo, now_ms);
        self.window.total()
    }
}

/// [`factor_of`] on a window's observed usage: in the whole window and in the buckets that
/// overlap the last second.
fn formula(window: &Window<Usage>, geo: &WindowGrid, now_ms: u64, rate: f64) -> f64 {
    factor_of(
        geo,
        now_ms,
        rate,
        window.total().observed,
        window.recent(geo, now_ms, RECENT_MS).observed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> WindowGrid {
        WindowGrid::for_tests(10, 100)
    }

    fn call(now_ms: u64) -> Call {
        Call {
            now_ms,
            rate: 1.0,
            count: 1,
            cap: 10.0,
        }
    }

    const PARAMS: SuppressionParams = SuppressionParams {
        hard_limit_factor: 1.5,
        cache_ms: 0,
    };

    #[test]
    fn three_regimes_in_order() {
        let g = geo();
        let mut s = SuppressedState::new(1.0); // capacity 10, hard limit 15
        for t in 0..10 {
            assert_eq!(
                s.inc(&g, &PARAMS, call(t * 100), || 0.99),
                RateLimitDecision::Allowed
            );
        }
        // Over capacity: 10 observed in the last second → R = 10/s, sf = 0.9; draw 0.95 admits.
        match s.inc(&g, &PARAMS, call(1000), || 0.95) {
            RateLimitDecision::Suppressed {
                suppression_factor,
                is_allowed,
            } => {
                assert!(
                    (suppression_factor - 0.9).abs() < 1e-9,
                    "{suppression_factor}"
                );
                assert!(is_allowed);
            }
            other => panic!("{other:?}"),
        }
        for _ in 0..4 {
            let d = s.inc(&g, &PARAMS, call(1000), || 0.0);
            assert!(!d.is_allowed());
        }
        // 15 observed: the hard limit, whatever the draw.
        assert_eq!(
            s.inc(&g, &PARAMS, call(1000), || 0.999),
            RateLimitDecision::Suppressed {
                suppression_factor: 1.0,
                is_allowed: false
            }
        );
        assert_eq!(s.factor_now(&g, &PARAMS, 1000), 1.0);
        assert_eq!(
            s.usage(&g, 1000),
            Usage {
                accepted: 11,
                observed: 16
            }
        );
    }

    #[test]
    fn cached_factor_never_decides_steps_one_and_two() {
        let g = geo();
        let params = SuppressionParams {
            hard_limit_factor: 1.5,
            cache_ms: 60_000,
        };
        let mut s = SuppressedState::new(1.0);
        for _ in 0..10 {
            s.inc(&g, &params, call(0), || 0.5);
        }
        // Factor computed and cached at t=0 (0.9), reused for a minute...
        assert!(matches!(
            s.inc(&g, &params, call(0), || 0.95),
            RateLimitDecision::Suppressed { .. }
        ));
        // ...but once the window empties, step 2 admits outright.
        assert_eq!(
            s.inc(&g, &params, call(20_000), || 0.0),
            RateLimitDecision::Allowed
        );
    }
}
