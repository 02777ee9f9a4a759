//! The local provider under steady overload, on an injected clock: over whole windows it
//! admits exactly the rate, while a span that is not a multiple of the window misreads it
//! (admissions come in a pattern that repeats every window). The hybrid provider's accuracy
//! test reads its rates over whole windows for this reason.

use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{ManualClock, RateLimit, RateLimiterBuilder};

/// Admission times (ms) of `per_second` evenly spaced calls for `seconds` at 100/s.
fn admissions(window_s: u64, group_ms: u64, per_second: u64, seconds: u64) -> Vec<u64> {
    let clock = ManualClock::new(1_000_000);
    let local = LocalRateLimiterOptions {
        window_size_seconds: window_s.try_into().unwrap(),
        rate_group_size_ms: group_ms.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    let rl = RateLimiterBuilder::new(local)
        .clock(clock.clone())
        .build()
        .unwrap();
    let rate = RateLimit::try_from(100.0).unwrap();
    let mut times = Vec::new();
    for i in 0..per_second * seconds {
        let t = i * 1000 / per_second;
        clock.set(1_000_000 + t);
        if rl.local().absolute().inc("k", &rate, 1).is_allowed() {
            times.push(t);
        }
    }
    times
}

fn count(times: &[u64], from_ms: u64, to_ms: u64) -> usize {
    times
        .iter()
        .filter(|&&t| (from_ms..to_ms).contains(&t))
        .count()
}

#[test]
fn steady_overload_admits_the_rate_over_whole_windows() {
    for (window_s, group_ms) in [(2, 10), (5, 10), (5, 100)] {
        let times = admissions(window_s, group_ms, 150, 20);
        let w = window_s * 1000;
        // Two whole windows after the first: 2 x capacity, to the unit when the span starts
        // on the window's grid; off the grid, within the calls offered in a group's width at
        // each end (units come free a group at a time).
        let off_grid = 2 * (150 * group_ms / 1000) as usize + 2;
        for (from, slack) in [(w, 1), (2 * w, 1), (w + 1_234, off_grid)] {
            let n = count(&times, from, from + 2 * w);
            assert!(
                (2 * 100 * window_s as usize).abs_diff(n) <= slack,
                "{window_s} s window, group {group_ms} ms: {n} admitted over {from}..{} ms",
                from + 2 * w
            );
        }
    }
    // Over 3..9 s (not whole windows) a 5 s window admits 550: 91.7/s, not 100/s.
    let times = admissions(5, 10, 150, 20);
    assert_eq!(count(&times, 3_000, 9_000), 550);
}
