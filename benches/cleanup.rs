//! How long a call waits behind a cleanup pass: one thread calls on live keys in a loop and
//! times every call while another runs `cleanup()` over a million stale keys (both
//! strategies). Prints the calls' latency percentiles during the passes, and without any
//! pass beside them for reference; those of the same calls while another thread makes the
//! stale keys (new keys that grow the shards' tables); and those of the calls that made the
//! stale keys.
//!
//! ```text
//! cargo bench -p sluicegate-benches --bench cleanup            # 5 passes of 1M stale keys
//! cargo bench -p sluicegate-benches --bench cleanup -- 3 2000000   # passes, stale keys
//! ```
//!
//! Time is a `ManualClock`, so the stale keys expire at once and the live ones never do. On
//! a shared 2-core machine a call can also wait for a core: the reference run (no cleanup)
//! shows how much of the tail is that.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    HardLimitFactor, ManualClock, RateGroupSizeMs, RateLimit, RateLimiter, RateLimiterBuilder,
    SuppressionFactorCacheMs, WindowSizeSeconds,
};

const WINDOW_S: u64 = 10;
const LIVE_KEYS: usize = 1_000;

fn limiter(clock: &ManualClock) -> RateLimiter {
    RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(WINDOW_S).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(100).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(1.5).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::try_from(100).unwrap(),
    })
    .clock(clock.clone())
    .build()
    .unwrap()
}

/// Calls on the live keys until `stop`; returns every call's latency in ns.
fn time_calls(rl: &RateLimiter, live: &[String], stop: &AtomicBool) -> Vec<u64> {
    let rate = RateLimit::try_from(1e9).unwrap();
    let mut samples = Vec::with_capacity(1 << 22);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = &live[i % live.len()];
        let start = Instant::now();
        if i % 2 == 0 {
            black_box(rl.local().absolute().inc(key, &rate, 1));
        } else {
            black_box(rl.local().suppressed().inc(key, &rate, 1));
        }
        samples.push(start.elapsed().as_nanos() as u64);
        i += 1;
    }
    samples
}

fn report(label: &str, mut samples: Vec<u64>) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let over_1ms = samples.len() - samples.partition_point(|&ns| ns <= 1_000_000);
    println!(
        "| {label} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        samples.len(),
        at(0.5) as f64 / 1e3,
        at(0.99) as f64 / 1e3,
        at(0.999) as f64 / 1e3,
        at(0.9999) as f64 / 1e3,
        *samples.last().unwrap() as f64 / 1e3,
        over_1ms as f64 * 1e6 / samples.len() as f64,
    );
}

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let passes = numbers.first().copied().unwrap_or(5);
    let stale = numbers.get(1).copied().unwrap_or(1_000_000);
    let clock = ManualClock::new(0);
    let rl = Arc::new(limiter(&clock));
    let live: Vec<String> = (0..LIVE_KEYS).map(|i| format!("live_{i:06}")).collect();
    let one = RateLimit::try_from(1e9).unwrap();

    println!("{passes} cleanup passes over {stale} stale keys a strategy; call latency in µs\n");
    println!("| calls | samples | p50 | p99 | p99.9 | p99.99 | max | over 1 ms per M |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut during = Vec::new();
    let mut quiet = Vec::new();
    let mut pass_ms = Vec::new();
    let mut inserts = Vec::new();
    let mut growing = Vec::new();
    for pass in 0..passes {
        // Stale keys made at this pass's start, live keys touched later, so that at the
        // pass's time every stale key has expired and no live one has.
        let t0 = pass as u64 * 100_000;
        clock.set(t0);
        // The stale keys are new keys: their inserts grow the shards' tables, with a thread
        // calling on the live keys beside them (the waits growth causes).
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let caller = s.spawn(|| time_calls(&rl, &live, &stop));
            let mut key = String::new();
            for i in 0..stale {
                use std::fmt::Write as _;
                key.clear();
                write!(key, "stale_{pass}_{i:08}").unwrap();
                let start = Instant::now();
                rl.local().absolute().inc(&key, &one, 1);
                inserts.push(start.elapsed().as_nanos() as u64);
                let start = Instant::now();
                rl.local().suppressed().inc(&key, &one, 1);
                inserts.push(start.elapsed().as_nanos() as u64);
            }
            stop.store(true, Ordering::Relaxed);
            growing.extend(caller.join().unwrap());
        });
        clock.set(t0 + WINDOW_S * 1000 + 500);

        // Reference: the same calls for a moment, no cleanup beside them.
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let caller = s.spawn(|| time_calls(&rl, &live, &stop));
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
            quiet.extend(caller.join().unwrap());
        });

        // The pass, with the calls beside it.
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let caller = s.spawn(|| time_calls(&rl, &live, &stop));
            std::thread::sleep(Duration::from_millis(20));
            let started = Instant::now();
            let removed = rl.cleanup();
            pass_ms.push(started.elapsed().as_secs_f64() * 1e3);
            assert!(removed >= 2 * stale, "every stale key went: {removed}");
            stop.store(true, Ordering::Relaxed);
            during.extend(caller.join().unwrap());
        });
    }
    report("during cleanup", during);
    report("no cleanup", quiet);
    // Calls on live keys while another thread adds the stale keys (the tables grow: a
    // shard's keys move into a table twice the size, a step of buckets per new key).
    report("during growth", growing);
    // The new keys themselves: each may do one step of its shard's move.
    report("new keys (tables growing)", inserts);
    pass_ms.sort_by(f64::total_cmp);
    println!(
        "\ncleanup pass: {:.0}–{:.0} ms for {} keys",
        pass_ms[0],
        pass_ms[pass_ms.len() - 1],
        2 * stale
    );
}
