//! The suppressed strategy's long-run behaviour on a simulated clock (SPEC §4).
//!
//! An evenly spaced offered load of `k × r` is played against one key on a `ManualClock`
//! for four windows, with seeded draws so every run is the same. Between the capacity and
//! the hard limit (`1 < k < h`) the admitted rate settles at `r`; at or above `h × r` the
//! observed usage stays at or over the hard limit and every call after the first window is
//! declined with factor 1; with `h = 1` the strategy is a hard cutoff.
//!
//! Why a 60 s window at 100/s: the admissions in a window are a sum of thousands of draws,
//! whose spread is about `sqrt(k·r·W·p·(1 − p))` calls. At `C = 6000` that is about 0.7 % of
//! the capacity, so a 5 % bound would be several spreads away and hold for any seed (measured
//! over seeds 1 to 8 and groups of 1 ms to 1 s: every window-long span after the first
//! window admitted between 5855 and 6151). At `C = 1000` (10 s) the spread is about 1.7 %
//! and an unlucky seed does reach +6.7 % in one window: that is noise, not bias. The seeds
//! are fixed, so the bands below are the spread over the seeds the test runs, and the factor
//! itself (which depends on observed usage only, not on the draws) is checked against the
//! value worked out by hand.

use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    HardLimitFactor, ManualClock, RateGroupSizeMs, RateLimit, RateLimitDecision,
    RateLimiterBuilder, SeededRandom, SuppressionFactorCacheMs, WindowSizeSeconds,
};

const RATE: f64 = 100.0;
const WINDOW_S: u64 = 60;
const WINDOW_MS: u64 = WINDOW_S * 1000;
const SEEDS: [u64; 3] = [1, 0x5EED, 0xDEAD_BEEF];

/// What happened to the calls made within one window-long span of the run.
#[derive(Debug, Clone, Copy)]
struct Span {
    offered: u64,
    admitted: u64,
    /// Declined over the hard limit: factor exactly 1.
    declined_at_hard_limit: u64,
    /// Decided by a factor strictly between 0 and 1 (either way).
    shed_by_factor: u64,
    /// The smallest and largest factor strictly between 0 and 1 (`1, 0` if none).
    factor_low: f64,
    factor_high: f64,
}

impl Default for Span {
    fn default() -> Self {
        Span {
            offered: 0,
            admitted: 0,
            declined_at_hard_limit: 0,
            shed_by_factor: 0,
            factor_low: 1.0,
            factor_high: 0.0,
        }
    }
}

/// Plays `load × RATE` calls a second, evenly spaced, for `windows` windows; returns one
/// `Span` per second.
fn simulate(
    load: f64,
    hard_limit_factor: f64,
    group_ms: u64,
    seed: u64,
    windows: u64,
) -> Vec<Span> {
    let clock = ManualClock::new(0);
    let rl = RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(WINDOW_S).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(group_ms).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(hard_limit_factor).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::default(),
    })
    .clock(clock.clone())
    .random(SeededRandom::new(seed))
    .build()
    .unwrap();
    let rate = RateLimit::try_from(RATE).unwrap();
    let per_second = load * RATE;
    let mut spans = vec![Span::default(); (windows * WINDOW_S) as usize];
    for i in 0.. {
        // Call i at i / (k·r) seconds, rounded down to the millisecond.
        let t_ms = (i as f64 * 1000.0 / per_second) as u64;
        if t_ms >= windows * WINDOW_MS {
            break;
        }
        clock.set(t_ms);
        let span = &mut spans[(t_ms / 1000) as usize];
        span.offered += 1;
        match rl.local().suppressed().inc("k", &rate, 1) {
            RateLimitDecision::Allowed => span.admitted += 1,
            RateLimitDecision::Suppressed {
                suppression_factor,
                is_allowed,
            } => {
                assert!((0.0..=1.0).contains(&suppression_factor));
                if is_allowed {
                    span.admitted += 1;
                }
                if suppression_factor == 1.0 {
                    assert!(!is_allowed, "a factor of 1 admits nothing");
                    span.declined_at_hard_limit += 1;
                } else if suppression_factor > 0.0 {
                    span.shed_by_factor += 1;
                    span.factor_low = span.factor_low.min(suppression_factor);
                    span.factor_high = span.factor_high.max(suppression_factor);
                }
            }
            other => panic!("the suppressed strategy answered {other:?}"),
        }
    }
    spans
}

/// Sums `seconds[from..from + WINDOW_S]`.
fn window_from(seconds: &[Span], from: usize) -> Span {
    seconds[from..from + WINDOW_S as usize]
        .iter()
        .fold(Span::default(), |mut sum, s| {
            sum.offered += s.offered;
            sum.admitted += s.admitted;
            sum.declined_at_hard_limit += s.declined_at_hard_limit;
            sum.shed_by_factor += s.shed_by_factor;
            sum.factor_low = sum.factor_low.min(s.factor_low);
            sum.factor_high = sum.factor_high.max(s.factor_high);
            sum
        })
}

/// Every window-long span after the first window, one second apart.
fn spans_after_the_first_window(seconds: &[Span]) -> impl Iterator<Item = (usize, Span)> + '_ {
    let w = WINDOW_S as usize;
    (w..=seconds.len() - w).map(move |from| (from, window_from(seconds, from)))
}

const CAPACITY: u64 = (RATE as u64) * WINDOW_S;

/// Measured on seeds 1, 0x5EED, 0xDEAD_BEEF and groups of 1, 100 and 1000 ms at loads
/// 1.25 and 1.4 (deterministic: every run gives the same numbers): every window-long span
/// after the first window admitted 5955..=6111, windows 2 to 4 together 18010..=18132, and
/// every factor between 0 and 1 after the first window was within 0.0006 of `1 − 1/k`.
/// The bands are those, rounded outwards. Shedding 3 % too little (`1 − 1.03·r/R`) admits
/// 6081..=6293 a window and 18456..=18586 over three, shedding 3 % too much (`1 − 0.97·r/R`)
/// gives factors 0.024 off `1 − 1/k`: each fails here.
const SPAN_BAND: std::ops::RangeInclusive<u64> = 5950..=6120;
const THREE_WINDOWS_BAND: std::ops::RangeInclusive<u64> = 17_990..=18_150;
const FACTOR_TOLERANCE: f64 = 0.001;

#[test]
fn load_between_capacity_and_hard_limit_settles_at_the_rate() {
    for load in [1.25, 1.4] {
        // Worked by hand: after the first window the observed usage is the offered load, so
        // the perceived rate is `k·r` and the factor `1 − r/(k·r) = 1 − 1/k`.
        let factor = 1.0 - 1.0 / load;
        // Groups up to a sixtieth of the window. Much coarser groups admit less than `r` in
        // the long run with either strategy, by design: an increment counts for between `W`
        // and `W + g` (so no W-long interval ever holds more than the capacity), which puts
        // the long-run rate between `C / (W + g)` and `C / W` (15 s groups on this 60 s
        // window: about 17 % under).
        for group_ms in [1, 100, 1000] {
            for seed in SEEDS {
                let seconds = simulate(load, 1.5, group_ms, seed, 4);
                let what = format!("load {load}× r, group {group_ms} ms, seed {seed}");
                let mut shed = 0;
                let (mut low, mut high) = (u64::MAX, 0);
                let (mut factor_low, mut factor_high) = (1.0f64, 0.0f64);
                for (from, span) in spans_after_the_first_window(&seconds) {
                    low = low.min(span.admitted);
                    high = high.max(span.admitted);
                    factor_low = factor_low.min(span.factor_low);
                    factor_high = factor_high.max(span.factor_high);
                    assert!(
                        SPAN_BAND.contains(&span.admitted),
                        "{what}: {} admitted in [{from} s, {} s), want {SPAN_BAND:?}",
                        span.admitted,
                        from + WINDOW_S as usize,
                    );
                    assert_eq!(
                        span.declined_at_hard_limit, 0,
                        "{what}: below the hard limit"
                    );
                    shed += span.shed_by_factor;
                }
                let later: u64 = (1..4)
                    .map(|w| window_from(&seconds, w * WINDOW_S as usize).admitted)
                    .sum();
                println!(
                    "{what}: every window after the first admitted {low}..={high} of \
                     {CAPACITY}; windows 2 to 4 {later}; factors {factor_low:.4}..={factor_high:.4}"
                );
                assert!(
                    THREE_WINDOWS_BAND.contains(&later),
                    "{what}: windows 2 to 4 admitted {later}, want {THREE_WINDOWS_BAND:?}"
                );
                // The rate is held by shedding, not by step 2 alone, at the factor worked out.
                assert!(shed > 0, "{what}: no call was shed");
                assert!(
                    (factor_low - factor).abs() <= FACTOR_TOLERANCE
                        && (factor_high - factor).abs() <= FACTOR_TOLERANCE,
                    "{what}: factors {factor_low}..={factor_high}, want {factor} ± {FACTOR_TOLERANCE}"
                );
                let first = window_from(&seconds, 0);
                assert_eq!(
                    first.offered,
                    (load * CAPACITY as f64).round() as u64,
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn load_at_or_over_the_hard_limit_is_fully_suppressed_after_one_window() {
    // At exactly 1.5 × r the live buckets always hold the last W seconds of calls, i.e. at
    // least 1.5 × r × W = H observed: exact, so there is no tolerance to state.
    for load in [1.5, 2.0, 3.0] {
        for group_ms in [1, 100, 1000, WINDOW_MS] {
            for seed in SEEDS {
                let seconds = simulate(load, 1.5, group_ms, seed, 3);
                let what = format!("load {load}× r, group {group_ms} ms, seed {seed}");
                for (second, span) in seconds.iter().enumerate().skip(WINDOW_S as usize) {
                    assert_eq!(span.admitted, 0, "{what}: second {second}: {span:?}");
                    assert_eq!(
                        span.declined_at_hard_limit, span.offered,
                        "{what}: second {second}: every call declined with factor 1"
                    );
                }
                // The first window admits above the capacity (shedding ramps up), never
                // above the hard limit.
                let first = window_from(&seconds, 0).admitted;
                assert!(
                    first >= CAPACITY && first as f64 <= 1.5 * CAPACITY as f64,
                    "{what}: first window admitted {first}"
                );
            }
        }
    }
}

#[test]
fn hard_limit_factor_one_is_a_hard_cutoff() {
    for seed in SEEDS {
        // Below the rate: everything is admitted, nothing is ever shed.
        let seconds = simulate(0.9, 1.0, 100, seed, 3);
        for span in &seconds {
            assert_eq!(span.admitted, span.offered);
            assert_eq!(span.shed_by_factor + span.declined_at_hard_limit, 0);
        }
        // Above it: exactly the capacity gets in, then everything is declined with factor 1
        // (declined calls count as observed, so the load keeps O at the hard limit). No
        // call is ever decided by a factor between 0 and 1.
        for load in [1.25, 3.0] {
            let seconds = simulate(load, 1.0, 100, seed, 3);
            assert_eq!(window_from(&seconds, 0).admitted, CAPACITY, "load {load}");
            for span in &seconds {
                assert_eq!(span.shed_by_factor, 0, "load {load}: {span:?}");
                assert_eq!(
                    span.admitted + span.declined_at_hard_limit,
                    span.offered,
                    "load {load}: {span:?}"
                );
            }
            for (_, span) in spans_after_the_first_window(&seconds) {
                assert_eq!(span.admitted, 0, "load {load}");
            }
        }
    }
}
