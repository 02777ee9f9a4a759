//! Cleanup drops keys whose window is empty and never one with usage still inside it,
//! checked at the exact instant a bucket expires; dropped keys come back as new keys.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    HardLimitFactor, ManualClock, RandomSource, RateGroupSizeMs, RateLimit, RateLimitDecision,
    RateLimiter, RateLimiterBuilder, SuppressionFactorCacheMs, WindowSizeSeconds,
};

/// Declines every shed call whose factor is above 0.
#[derive(Debug)]
struct AlwaysDecline;

impl RandomSource for AlwaysDecline {
    fn next_f64(&self) -> f64 {
        0.0
    }
}

fn limiter(window_s: u64, group_ms: u64, clock: &ManualClock) -> RateLimiter {
    RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(window_s).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(group_ms).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(1.5).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::try_from(0).unwrap(),
    })
    .clock(clock.clone())
    .random(AlwaysDecline)
    .build()
    .unwrap()
}

fn rate(per_second: f64) -> RateLimit {
    RateLimit::try_from(per_second).unwrap()
}

#[test]
fn a_key_is_kept_until_the_instant_its_last_bucket_expires() {
    // Window 10 s, groups of 100 ms: bucket b expires at (b + 1)·100 + 10 000.
    let clock = ManualClock::new(0);
    let rl = limiter(10, 100, &clock);
    let (absolute, suppressed) = (rl.local().absolute(), rl.local().suppressed());
    let r = rate(1.0);
    clock.set(250); // bucket 2: expires at 10 300
    absolute.inc("early", &r, 2);
    suppressed.inc("early", &r, 2);
    clock.set(4_999); // bucket 49: expires at 15 000
    absolute.inc("late", &r, 1);
    suppressed.inc("late", &r, 1);
    absolute.inc("early", &r, 1); // "early" now also has bucket 49
    assert_eq!(rl.cleanup(), 0);

    clock.set(10_299);
    assert_eq!(rl.cleanup(), 0, "bucket 2 still counts at 10 299");
    assert_eq!(absolute.usage("early"), 3);
    clock.set(10_300);
    assert_eq!(rl.cleanup(), 1, "suppressed \"early\" had only bucket 2");
    assert_eq!(
        absolute.usage("early"),
        1,
        "absolute \"early\" keeps bucket 49"
    );
    assert_eq!((absolute.key_count(), suppressed.key_count()), (2, 1));

    clock.set(14_999);
    assert_eq!(rl.cleanup(), 0, "bucket 49 still counts at 14 999");
    assert_eq!(absolute.usage("late"), 1);
    assert_eq!(suppressed.usage("late"), (1, 1));
    clock.set(15_000);
    assert_eq!(rl.cleanup(), 3);
    assert_eq!((absolute.key_count(), suppressed.key_count()), (0, 0));
    assert_eq!(rl.cleanup(), 0);
}

#[test]
fn group_of_one_ms_and_group_of_a_window_expire_on_their_boundaries() {
    for (group_ms, t, expires) in [(1, 777, 1_778), (1_000, 777, 2_000), (1_000, 0, 2_000)] {
        let clock = ManualClock::new(t);
        let rl = limiter(1, group_ms, &clock);
        rl.local().absolute().inc("k", &rate(3.0), 3);
        clock.set(expires - 1);
        assert_eq!(
            rl.cleanup(),
            0,
            "group {group_ms}: {t} still counts at {}",
            expires - 1
        );
        assert_eq!(rl.local().absolute().usage("k"), 3);
        clock.set(expires);
        assert_eq!(
            rl.cleanup(),
            1,
            "group {group_ms}: {t} expired at {expires}"
        );
    }
}

#[test]
fn suppressed_keys_with_only_declined_usage_are_kept() {
    // Declined calls are observed usage: they keep the key over its hard limit, so
    // dropping the key would forget that.
    let clock = ManualClock::new(0);
    let rl = limiter(10, 100, &clock);
    let suppressed = rl.local().suppressed();
    let r = rate(1.0); // capacity 10, hard limit 15
    for _ in 0..10 {
        assert_eq!(suppressed.inc("k", &r, 1), RateLimitDecision::Allowed);
    }
    // R = 10/s in the last second, sf = 0.9: a draw of 0 declines.
    assert!(!suppressed.inc("k", &r, 5).is_allowed());
    clock.set(5_000); // observed 15 = the hard limit
    assert_eq!(
        suppressed.inc("k", &r, 1),
        RateLimitDecision::Suppressed {
            suppression_factor: 1.0,
            is_allowed: false
        }
    );
    clock.set(10_100); // bucket 0 (all the accepted usage) expires
    assert_eq!(suppressed.usage("k"), (0, 1));
    assert_eq!(rl.cleanup(), 0, "one declined unit still counts");
    clock.set(15_099);
    assert_eq!(rl.cleanup(), 0);
    clock.set(15_100);
    assert_eq!(rl.cleanup(), 1);
}

#[test]
fn a_dropped_key_comes_back_as_a_new_key() {
    let clock = ManualClock::new(0);
    let rl = limiter(10, 100, &clock);
    let (absolute, suppressed) = (rl.local().absolute(), rl.local().suppressed());
    let slow = rate(0.5); // capacity 5
    assert_eq!(absolute.inc("k", &slow, 5), RateLimitDecision::Allowed);
    for _ in 0..8 {
        suppressed.inc("k", &slow, 1);
    }
    assert!(suppressed.get_suppression_factor("k") > 0.0);
    clock.advance(10_100);
    assert_eq!(rl.cleanup(), 2);

    // Reads of the dropped key answer as for an unknown key and bring nothing back.
    assert_eq!(absolute.is_allowed("k"), RateLimitDecision::Allowed);
    assert_eq!(suppressed.get_suppression_factor("k"), 0.0);
    assert_eq!((absolute.key_count(), suppressed.key_count()), (0, 0));

    // The new key starts empty, at the new call's rate.
    let fast = rate(2.0); // capacity 20
    assert_eq!(absolute.inc("k", &fast, 20), RateLimitDecision::Allowed);
    assert!(!absolute.inc("k", &fast, 1).is_allowed());
    assert!(
        !absolute.is_allowed("k").is_allowed(),
        "is_allowed uses the new rate"
    );
    for _ in 0..20 {
        assert_eq!(suppressed.inc("k", &fast, 1), RateLimitDecision::Allowed);
    }
    assert_eq!(suppressed.usage("k"), (20, 20));
    assert_eq!((absolute.key_count(), suppressed.key_count()), (1, 1));
}

#[test]
fn cleanup_racing_calls_never_drops_live_usage() {
    // 2 000 stale keys; four threads give each of them new usage while a fifth thread runs
    // cleanup in a loop. Whether cleanup sees a key before or after its new call, the usage
    // must survive: the second call on each key must be refused.
    const KEYS: usize = 2_000;
    const WORKERS: usize = 4;
    let clock = ManualClock::new(0);
    let rl = Arc::new(limiter(1, 100, &clock));
    let r = rate(5.0); // capacity 5 a 1 s window
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user-{i}")).collect());
    for key in keys.iter() {
        assert!(rl.local().absolute().inc(key, &r, 5).is_allowed());
        assert!(rl.local().suppressed().inc(key, &r, 5).is_allowed());
    }
    clock.advance(1_100); // every key's window is empty now

    let stop = Arc::new(AtomicBool::new(false));
    let removed = Arc::new(AtomicUsize::new(0));
    let cleaner = {
        let (rl, stop, removed) = (Arc::clone(&rl), Arc::clone(&stop), Arc::clone(&removed));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                removed.fetch_add(rl.cleanup(), Ordering::Relaxed);
            }
        })
    };
    let start = Arc::new(Barrier::new(WORKERS));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (rl, keys, start) = (Arc::clone(&rl), Arc::clone(&keys), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for key in keys.iter().skip(w).step_by(WORKERS) {
                    let (absolute, suppressed) = (rl.local().absolute(), rl.local().suppressed());
                    assert!(absolute.inc(key, &r, 3).is_allowed(), "{key}");
                    assert!(!absolute.inc(key, &r, 3).is_allowed(), "{key}: usage lost");
                    assert_eq!(suppressed.inc(key, &r, 3), RateLimitDecision::Allowed);
                    assert_eq!(suppressed.usage(key), (3, 3), "{key}: usage lost");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    cleaner.join().unwrap();

    assert_eq!(rl.cleanup(), 0, "every key has live usage");
    let removed = removed.load(Ordering::Relaxed);
    assert!(removed <= 2 * KEYS, "{removed}");
    for key in keys.iter() {
        assert_eq!(rl.local().absolute().usage(key), 3, "{key}");
        assert_eq!(rl.local().suppressed().usage(key), (3, 3), "{key}");
    }
    assert_eq!(rl.local().absolute().key_count(), KEYS);
    assert_eq!(rl.local().suppressed().key_count(), KEYS);
}

#[test]
fn the_cleanup_loop_drops_expired_keys_on_its_own() {
    // The loop runs on a real thread every millisecond; the test waits for its effect,
    // bounded by a deadline, instead of sleeping a guessed time.
    let clock = ManualClock::new(0);
    let rl = Arc::new(limiter(1, 100, &clock));
    let r = rate(10.0);
    for i in 0..100 {
        rl.local().absolute().inc(&format!("k{i}"), &r, 1);
        rl.local().suppressed().inc(&format!("k{i}"), &r, 1);
    }
    rl.run_cleanup_loop_every(Duration::from_millis(1));
    // (That it keeps live keys is the boundary tests' job: the loop calls `cleanup`.)
    clock.set(1_100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rl.local().absolute().key_count() + rl.local().suppressed().key_count() > 0 {
        assert!(Instant::now() < deadline, "the cleanup loop never ran");
        thread::yield_now();
    }
}

/// `run_cleanup_loop()` with its default period, half a window between 1 s and 60 s: keys
/// already stale when it starts go at its first pass, one period later (a period is a
/// `recv_timeout`, never shorter), and well before a second period.
fn default_period_is_half_a_window_at_least_a_second(window_s: u64, period: Duration) {
    let clock = ManualClock::new(0);
    let rl = Arc::new(limiter(window_s, 100, &clock));
    let r = rate(10.0);
    for i in 0..10 {
        rl.local().absolute().inc(&format!("k{i}"), &r, 1);
    }
    // Stale before the loop starts: the first pass removes them all.
    clock.set(window_s * 1000 + 100);
    let started = Instant::now();
    rl.run_cleanup_loop();
    rl.run_cleanup_loop(); // a second call starts nothing (and does not reset the period)
    let deadline = started + period * 2;
    while rl.local().absolute().key_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "no cleanup pass within two default periods ({period:?})"
        );
        thread::yield_now();
    }
    let took = started.elapsed();
    assert!(
        took >= period,
        "the first pass came after {took:?}, before the period {period:?}"
    );
    eprintln!("{window_s} s window: first pass after {took:?} (period {period:?})");
}

#[test]
fn default_cleanup_period_of_a_one_second_window_is_one_second() {
    // Half of 1 s is 500 ms, raised to the 1 s floor.
    default_period_is_half_a_window_at_least_a_second(1, Duration::from_secs(1));
}

#[test]
fn default_cleanup_period_of_a_four_second_window_is_two_seconds() {
    default_period_is_half_a_window_at_least_a_second(4, Duration::from_secs(2));
}
