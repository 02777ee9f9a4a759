//! How long a hybrid call waits behind the committer's pass (issue 13: at most about 1 ms).
//!
//! The hybrid provider decides in memory; its committer walks every key with unsent
//! increments each sync interval, a chunk of a shard's table per lock hold, and sends them to
//! Redis. Here one thread times every call on 1,000 live keys while the committer flushes a
//! million other keys' increments (made just before, untimed). Reference rows: the same calls
//! with nothing to flush beside them, and with the million keys held but idle.
//!
//! ```text
//! cargo bench -p sluicegate-benches --bench committer              # 3 rounds, 1M keys
//! cargo bench -p sluicegate-benches --bench committer -- 5 500000  # rounds, keys
//! SLUICEGATE_REDIS_URL=redis://127.0.0.1:6379/ cargo bench -p sluicegate-benches --bench committer
//! ```
//!
//! Starts its own `redis-server` on a free loopback port unless the variable names one. On
//! a shared 2-core machine a call can also wait for a core (the committer's thread, Redis
//! itself): the reference rows show how much of the tail is that.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis_server::Server;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisKey, RedisSettings};
use sluicegate::{RateLimit, RateLimiter, RateLimiterBuilder};

const LIVE_KEYS: usize = 1_000;
const SYNC_MS: u64 = 50;

/// Calls on the live keys until `stop`; every call's latency in ns.
fn time_calls(rl: &RateLimiter, live: &[RedisKey], stop: &AtomicBool) -> Vec<u64> {
    let rate = RateLimit::try_from(1e9).unwrap();
    let mut samples = Vec::with_capacity(1 << 22);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = &live[i % live.len()];
        let start = Instant::now();
        black_box(rl.hybrid().absolute().inc_sync(key, &rate, 1).unwrap());
        samples.push(start.elapsed().as_nanos() as u64);
        i += 1;
    }
    samples
}

fn report(label: &str, mut samples: Vec<u64>, flushed: u64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let over_1ms = samples.len() - samples.partition_point(|&ns| ns <= 1_000_000);
    println!(
        "| {label} | {} | {flushed} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        samples.len(),
        at(0.5) as f64 / 1e3,
        at(0.99) as f64 / 1e3,
        at(0.999) as f64 / 1e3,
        at(0.9999) as f64 / 1e3,
        *samples.last().unwrap() as f64 / 1e3,
        over_1ms as f64 * 1e6 / samples.len() as f64,
    );
}

/// Times calls on `live` for `run`, while the committer does what it has to; the samples
/// and the units it flushed meanwhile.
fn measure(rl: &Arc<RateLimiter>, live: &Arc<Vec<RedisKey>>, run: Duration) -> (Vec<u64>, u64) {
    let before = rl.hybrid().stats().units_flushed;
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let (rl, live, stop) = (rl.clone(), live.clone(), stop.clone());
        std::thread::spawn(move || time_calls(&rl, &live, &stop))
    };
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    let samples = timer.join().unwrap();
    (samples, rl.hybrid().stats().units_flushed - before)
}

/// Waits until the committer has flushed `units` more than `from` (or 60 s).
fn drain(rl: &RateLimiter, from: u64, units: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rl.hybrid().stats().units_flushed < from + units && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = args.first().map_or(3, |a| a.parse().expect("rounds"));
    let keys: usize = args.get(1).map_or(1_000_000, |a| a.parse().expect("keys"));

    // The committer's warnings (a failed flush, dropped units) on stderr.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    let server = Server::get();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let local = LocalRateLimiterOptions {
        window_size_seconds: 600.try_into().unwrap(),
        rate_group_size_ms: 1000.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: Default::default(),
    };
    let settings = RedisSettings {
        prefix: Some(
            RedisKey::try_from(format!("bench_committer_{}", std::process::id())).unwrap(),
        ),
        window_size_seconds: local.window_size_seconds,
        rate_group_size_ms: local.rate_group_size_ms,
        hard_limit_factor: local.hard_limit_factor,
        suppression_factor_cache_ms: local.suppression_factor_cache_ms,
        sync_interval_ms: SyncIntervalMs::try_from(SYNC_MS).unwrap(),
    };
    let rl = Arc::new(runtime.block_on(async {
        RateLimiterBuilder::new(local)
            .redis_client(redis::Client::open(server.1.as_str()).unwrap(), settings)
            .build()
            .unwrap()
    }));
    let live: Arc<Vec<RedisKey>> = Arc::new(
        (0..LIVE_KEYS)
            .map(|i| RedisKey::try_from(format!("live{i}")).unwrap())
            .collect(),
    );
    let sprayed: Vec<RedisKey> = (0..keys)
        .map(|i| RedisKey::try_from(format!("k{i}")).unwrap())
        .collect();
    let rate = RateLimit::try_from(1e6).unwrap();
    // Warm the live keys up (leases in place) and let the committer settle.
    let _ = measure(&rl, &live, Duration::from_millis(500));

    println!(
        "hybrid absolute, calls on {LIVE_KEYS} live keys (one thread), sync interval {SYNC_MS} ms; µs"
    );
    println!(
        "| while | calls | units flushed | p50 | p99 | p99.9 | p99.99 | max | calls > 1 ms per million |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (samples, flushed) = measure(&rl, &live, Duration::from_secs(2));
    report("nothing else held", samples, flushed);
    for round in 0..rounds {
        // One increment on every other key, untimed: the committer's next passes send them.
        let from = rl.hybrid().stats().units_flushed;
        let start = Instant::now();
        for key in &sprayed {
            black_box(rl.hybrid().absolute().inc_sync(key, &rate, 1).unwrap());
        }
        let made = start.elapsed();
        let (samples, flushed) = measure(&rl, &live, Duration::from_secs(3));
        report(
            &format!("committer flushing {keys} keys (round {round}, made in {made:.1?})"),
            samples,
            flushed,
        );
        drain(&rl, from, keys as u64);
        let (samples, flushed) = measure(&rl, &live, Duration::from_secs(2));
        report(&format!("{keys} keys held, flushed"), samples, flushed);
    }
    let stats = rl.hybrid().stats();
    println!(
        "committer: {} cycles, {} flush errors, {} units flushed, {} dropped",
        stats.flushes, stats.flush_errors, stats.units_flushed, stats.units_dropped
    );
    drop(rl);
    drop(runtime);
}
