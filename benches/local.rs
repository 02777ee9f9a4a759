//! The local provider beside its peers, in one run: sluicegate, trypema 2.x's local provider
//! and governor's keyed limiter, grouped per case so criterion prints them side by side.
//!
//! ```text
//! cargo bench -p sluicegate-benches --bench local -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Every limiter is configured alike where the concepts map:
//! - window 10 s and 100 ms buckets for sluicegate and trypema (`WindowSizeSeconds(10)` /
//!   `WindowSize::seconds(10)`, `RateGroupSizeMs(100)` / `BucketSize::milliseconds(100)`);
//!   the suppressed strategy with hard limit factor 1.5 and a 100 ms factor cache in both;
//! - governor has no window: a quota of `rate × 10 s` cells as burst, refilled at `rate`/s,
//!   admits the same `rate × window` from idle (GCRA, one cell per call). It has no
//!   suppressed strategy, so it appears in the absolute groups only.
//! - trypema runs with its cleanup thread disabled, like ours (no loop is started here).
//!
//! Cases: a hot key that stays allowed (a huge rate), 1k and 1M keys visited round robin
//! (every key created before measuring), the reject path (a key kept over its limit), and
//! two threads on one hot key (the time shown is the wall time for each thread to make one
//! call while the other does the same).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use governor::{DefaultKeyedRateLimiter, Quota};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    HardLimitFactor, RateGroupSizeMs, RateLimit, RateLimitDecision, RateLimiter,
    RateLimiterBuilder, SuppressionFactorCacheMs, WindowSizeSeconds,
};
use trypema::RateLimiterBuilder as _;
use trypema::local::LocalRateLimiterProvider;

const WINDOW_S: u64 = 10;
const GROUP_MS: u64 = 100;
const HARD_LIMIT_FACTOR: f64 = 1.5;
const CACHE_MS: u64 = 100;

/// So large that no case ever fills the window (10^10 per window).
const HOT_RATE: f64 = 1e9;
/// One request a window: after the first call every call is refused.
const REJECT_RATE: f64 = 0.1;

fn ours() -> RateLimiter {
    RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(WINDOW_S).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(GROUP_MS).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(HARD_LIMIT_FACTOR).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::try_from(CACHE_MS).unwrap(),
    })
    .build()
    .unwrap()
}

fn trypema_local() -> Arc<LocalRateLimiterProvider> {
    LocalRateLimiterProvider::builder()
        .window_size(trypema::WindowSize::seconds_or_panic(WINDOW_S))
        .bucket_size(trypema::BucketSize::milliseconds_or_panic(GROUP_MS))
        .hard_limit_factor(trypema::HardLimitFactor::new_or_panic(HARD_LIMIT_FACTOR))
        .suppression_factor_cache_period(
            trypema::SuppressionFactorCachePeriod::milliseconds_or_panic(CACHE_MS),
        )
        .disable_cleanup()
        .build()
        .unwrap()
}

/// `rate × window` cells of burst, refilled at `rate` per second (see the module docs).
fn governor_keyed(rate: f64) -> DefaultKeyedRateLimiter<String> {
    let burst = (rate * WINDOW_S as f64).clamp(1.0, u32::MAX as f64) as u32;
    let quota = if rate >= 1.0 {
        Quota::per_second(NonZeroU32::new(rate.min(u32::MAX as f64) as u32).unwrap())
    } else {
        Quota::with_period(Duration::from_secs_f64(1.0 / rate)).unwrap()
    };
    DefaultKeyedRateLimiter::keyed(quota.allow_burst(NonZeroU32::new(burst).unwrap()))
}

/// Grows the heap once and gives it back, before the first 1M-key case: otherwise whichever
/// subject is measured first in the process pays for it (about 250 ns a call here, seen
/// by swapping the order).
fn warm_the_heap() {
    let blocks: Vec<Vec<u8>> = (0..4_000_000)
        .map(|i| vec![i as u8; 64 + i % 4 * 64])
        .collect();
    black_box(&blocks);
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user_{i:08}")).collect()
}

/// Runs `call` on `keys` round robin; every key was created before.
fn round_robin<T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    keys: &[String],
    call: impl Fn(&String) -> T,
) {
    let mut created = false;
    group.bench_function(name, |b| {
        // Here rather than before: a filtered-out case creates no keys.
        if !created {
            for key in keys {
                black_box(call(key));
            }
            created = true;
        }
        let mut i = 0;
        b.iter(|| {
            let key = &keys[i];
            i += 1;
            if i == keys.len() {
                i = 0;
            }
            black_box(call(black_box(key)))
        })
    });
}

/// Two threads calling `call` at once; the time of one iteration is the wall time for
/// both threads to make one call each.
fn two_threads<T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    call: impl Fn() -> T + Sync,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(3);
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        barrier.wait();
                        for _ in 0..iters {
                            black_box(call());
                        }
                    });
                }
                barrier.wait();
                let start = Instant::now();
                // Scoped threads are joined when the scope ends; the elapsed time includes it.
                start
            })
            .elapsed()
        })
    });
}

fn is_ours_allowed(d: RateLimitDecision) -> bool {
    d.is_allowed()
}

fn is_trypema_allowed(d: trypema::RateLimitDecision) -> bool {
    match d {
        trypema::RateLimitDecision::Allowed => true,
        trypema::RateLimitDecision::Rejected { .. } => false,
        trypema::RateLimitDecision::Suppressed { is_allowed, .. } => is_allowed,
    }
}

fn absolute(c: &mut Criterion) {
    let hot = RateLimit::try_from(HOT_RATE).unwrap();
    let t_hot = trypema::RateLimit::per_second_or_panic(HOT_RATE);

    {
        let mut g = c.benchmark_group("absolute/hot_key");
        let (rl, tr, gv) = (ours(), trypema_local(), governor_keyed(HOT_RATE));
        let key = String::from("user_hot");
        assert!(is_ours_allowed(rl.local().absolute().inc(&key, &hot, 1)));
        assert!(is_trypema_allowed(tr.absolute().inc(&key, &t_hot, 1)));
        assert!(gv.check_key(&key).is_ok());
        g.bench_function("sluicegate", |b| {
            b.iter(|| rl.local().absolute().inc(black_box(&key), &hot, 1))
        });
        g.bench_function("trypema", |b| {
            b.iter(|| tr.absolute().inc(black_box(&key), &t_hot, 1))
        });
        g.bench_function("governor", |b| b.iter(|| gv.check_key(black_box(&key))));
        assert!(is_ours_allowed(rl.local().absolute().inc(&key, &hot, 1)));
        assert!(is_trypema_allowed(tr.absolute().inc(&key, &t_hot, 1)));
        assert!(gv.check_key(&key).is_ok(), "hot key must stay allowed");
        g.finish();
    }

    for (label, n) in [("1k_keys", 1_000), ("1M_keys", 1_000_000)] {
        let mut g = c.benchmark_group(format!("absolute/{label}"));
        let keys = keys(n);
        // All three live until the group ends: none measures in memory another one freed
        // (with 1M keys every call starts a bucket, so the heap grows while measuring).
        let (rl, tr, gv) = (ours(), trypema_local(), governor_keyed(HOT_RATE));
        if n > 1_000 {
            warm_the_heap();
        }
        round_robin(&mut g, "sluicegate", &keys, |k| {
            rl.local().absolute().inc(k, &hot, 1)
        });
        assert!(
            [0, n].contains(&rl.local().absolute().key_count()),
            "0 if filtered out"
        );
        round_robin(&mut g, "trypema", &keys, |k| {
            tr.absolute().inc(k, &t_hot, 1)
        });
        round_robin(&mut g, "governor", &keys, |k| gv.check_key(k));
        assert!([0, n].contains(&gv.len()), "0 if filtered out");
        g.finish();
    }

    {
        let mut g = c.benchmark_group("absolute/reject");
        let slow = RateLimit::try_from(REJECT_RATE).unwrap();
        let t_slow = trypema::RateLimit::per_second_or_panic(REJECT_RATE);
        let (rl, tr, gv) = (ours(), trypema_local(), governor_keyed(REJECT_RATE));
        let key = String::from("user_over");
        rl.local().absolute().inc(&key, &slow, 1);
        tr.absolute().inc(&key, &t_slow, 1);
        let _ = gv.check_key(&key);
        assert!(matches!(
            rl.local().absolute().inc(&key, &slow, 1),
            RateLimitDecision::Rejected { .. }
        ));
        assert!(matches!(
            tr.absolute().inc(&key, &t_slow, 1),
            trypema::RateLimitDecision::Rejected { .. }
        ));
        assert!(gv.check_key(&key).is_err());
        g.bench_function("sluicegate", |b| {
            b.iter(|| rl.local().absolute().inc(black_box(&key), &slow, 1))
        });
        g.bench_function("trypema", |b| {
            b.iter(|| tr.absolute().inc(black_box(&key), &t_slow, 1))
        });
        g.bench_function("governor", |b| b.iter(|| gv.check_key(black_box(&key))));
        g.finish();
    }

    {
        let mut g = c.benchmark_group("absolute/2_threads_one_key");
        let (rl, tr, gv) = (ours(), trypema_local(), governor_keyed(HOT_RATE));
        let key = String::from("user_hot");
        two_threads(&mut g, "sluicegate", || {
            rl.local().absolute().inc(black_box(&key), &hot, 1)
        });
        two_threads(&mut g, "trypema", || {
            tr.absolute().inc(black_box(&key), &t_hot, 1)
        });
        two_threads(&mut g, "governor", || gv.check_key(black_box(&key)));
        assert!(is_ours_allowed(rl.local().absolute().inc(&key, &hot, 1)));
        assert!(gv.check_key(&key).is_ok());
        g.finish();
    }
}

fn suppressed(c: &mut Criterion) {
    let hot = RateLimit::try_from(HOT_RATE).unwrap();
    let t_hot = trypema::RateLimit::per_second_or_panic(HOT_RATE);

    {
        let mut g = c.benchmark_group("suppressed/hot_key");
        let (rl, tr) = (ours(), trypema_local());
        let key = String::from("user_hot");
        assert!(is_ours_allowed(rl.local().suppressed().inc(&key, &hot, 1)));
        assert!(is_trypema_allowed(tr.suppressed().inc(&key, &t_hot, 1)));
        g.bench_function("sluicegate", |b| {
            b.iter(|| rl.local().suppressed().inc(black_box(&key), &hot, 1))
        });
        g.bench_function("trypema", |b| {
            b.iter(|| tr.suppressed().inc(black_box(&key), &t_hot, 1))
        });
        assert_eq!(
            rl.local().suppressed().inc(&key, &hot, 1),
            RateLimitDecision::Allowed
        );
        assert!(matches!(
            tr.suppressed().inc(&key, &t_hot, 1),
            trypema::RateLimitDecision::Allowed
        ));
        g.finish();
    }

    for (label, n) in [("1k_keys", 1_000), ("1M_keys", 1_000_000)] {
        let mut g = c.benchmark_group(format!("suppressed/{label}"));
        let keys = keys(n);
        // Both live until the group ends, as for the absolute strategy.
        let (rl, tr) = (ours(), trypema_local());
        round_robin(&mut g, "sluicegate", &keys, |k| {
            rl.local().suppressed().inc(k, &hot, 1)
        });
        assert!(
            [0, n].contains(&rl.local().suppressed().key_count()),
            "0 if filtered out"
        );
        round_robin(&mut g, "trypema", &keys, |k| {
            tr.suppressed().inc(k, &t_hot, 1)
        });
        g.finish();
    }

    {
        // Over the hard limit: every call is declined with factor 1 and still counts as
        // observed, so the key stays over the limit for as long as it is called.
        let mut g = c.benchmark_group("suppressed/reject");
        let slow = RateLimit::try_from(REJECT_RATE).unwrap();
        let t_slow = trypema::RateLimit::per_second_or_panic(REJECT_RATE);
        let (rl, tr) = (ours(), trypema_local());
        let key = String::from("user_over");
        for _ in 0..3 {
            rl.local().suppressed().inc(&key, &slow, 1);
            tr.suppressed().inc(&key, &t_slow, 1);
        }
        assert_eq!(
            rl.local().suppressed().inc(&key, &slow, 1),
            RateLimitDecision::Suppressed {
                suppression_factor: 1.0,
                is_allowed: false
            }
        );
        assert!(!is_trypema_allowed(tr.suppressed().inc(&key, &t_slow, 1)));
        g.bench_function("sluicegate", |b| {
            b.iter(|| rl.local().suppressed().inc(black_box(&key), &slow, 1))
        });
        g.bench_function("trypema", |b| {
            b.iter(|| tr.suppressed().inc(black_box(&key), &t_slow, 1))
        });
        g.finish();
    }

    {
        let mut g = c.benchmark_group("suppressed/2_threads_one_key");
        let (rl, tr) = (ours(), trypema_local());
        let key = String::from("user_hot");
        two_threads(&mut g, "sluicegate", || {
            rl.local().suppressed().inc(black_box(&key), &hot, 1)
        });
        two_threads(&mut g, "trypema", || {
            tr.suppressed().inc(black_box(&key), &t_hot, 1)
        });
        assert_eq!(
            rl.local().suppressed().inc(&key, &hot, 1),
            RateLimitDecision::Allowed
        );
        g.finish();
    }
}

criterion_group!(benches, absolute, suppressed);
criterion_main!(benches);
