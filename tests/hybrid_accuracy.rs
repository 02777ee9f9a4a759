//! Several hybrid instances (each its own `RateLimiter` and connection) on one key of one
//! real Redis: how close to the limit they stay together, and how often they refresh.
#![cfg(feature = "redis-tokio")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{RateLimit, RateLimiter, RateLimiterBuilder, SeededRandom};
use support::TestRedis;

/// These tests measure rates on a shared machine: one at a time, so they do not starve
/// each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn instance(
    manager: redis::aio::ConnectionManager,
    seed: u64,
    prefix: &RedisKey,
    window_s: u64,
    group_ms: u64,
    hard_limit_factor: f64,
) -> Arc<RateLimiter> {
    let local = LocalRateLimiterOptions {
        window_size_seconds: window_s.try_into().unwrap(),
        rate_group_size_ms: group_ms.try_into().unwrap(),
        hard_limit_factor: hard_limit_factor.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    Arc::new(
        RateLimiterBuilder::new(local)
            // Each instance its own seeded draws: a suppressed run replays the same draws.
            .random(SeededRandom::new(seed))
            .redis_connection(
                manager,
                support::redis_settings(&local, prefix, SyncIntervalMs::try_from(10).unwrap()),
            )
            .build()
            .unwrap(),
    )
}

async fn instances(
    redis: &TestRedis,
    prefix: &RedisKey,
    n: usize,
    window_s: u64,
    group_ms: u64,
    h: f64,
) -> Vec<Arc<RateLimiter>> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(instance(
            redis.manager().await,
            0x5EED + i as u64,
            prefix,
            window_s,
            group_ms,
            h,
        ));
    }
    out
}

/// Hammers `key` from `tasks_each` tasks per instance for `run`, as fast as they go
/// (yielding now and then so the committers run); returns the admitted count.
async fn hammer(
    rls: &[Arc<RateLimiter>],
    key: &RedisKey,
    rate: RateLimit,
    tasks_each: usize,
    run: Duration,
) -> (u64, u64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let offered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for rl in rls {
        for _ in 0..tasks_each {
            let (rl, key, admitted, offered, stop) = (
                rl.clone(),
                key.clone(),
                admitted.clone(),
                offered.clone(),
                stop.clone(),
            );
            handles.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let d = rl.hybrid().absolute().inc(&key, &rate, 1).await.unwrap();
                    if d.is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                    if i % 32 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                offered.fetch_add(i, Ordering::Relaxed);
            }));
        }
    }
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    (
        admitted.load(Ordering::Relaxed),
        offered.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_far_over_capacity_admit_about_the_capacity() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_four");
    // 100/s over 10 s: capacity 1000, none of it expires during the 3 s run.
    let rls = instances(&redis, &prefix, 4, 10, 100, 1.5).await;
    let key = RedisKey::try_from("hot").unwrap();
    let rate = RateLimit::try_from(100.0).unwrap();
    let (admitted, offered) = hammer(&rls, &key, rate, 2, Duration::from_secs(3)).await;
    for rl in &rls {
        rl.hybrid().flush().await.unwrap();
    }
    eprintln!("4 instances: offered {offered}, admitted {admitted} of capacity 1000");
    assert!(
        offered > 40_000,
        "the load was not far over capacity: {offered}"
    );
    // The documented bound is `C + N × max(1, rate × (T + sync_interval))`, with `T` the
    // wait for an instance's first refresh: 1008 when `T` is one 10 ms interval. Measured
    // 1000..=1018 over 12 runs on a 2-core machine loaded by other builds, which delays the
    // first refresh (`T` of 20 to 35 ms); never below the capacity, as leases hand all of it
    // out. A hybrid that over-admits 4 % (1045) fails.
    assert!(
        (1000..=1025).contains(&admitted),
        "admitted {admitted} of capacity 1000, want 1000..=1025"
    );
    let mut conn = redis.manager().await;
    let total: i64 = conn
        .hget(format!("{}:{{hot}}:a:h", prefix.as_str()), "t")
        .await
        .unwrap();
    assert_eq!(
        total as u64, admitted,
        "Redis holds exactly what was admitted"
    );
}

/// Offers `per_second` calls a second, evenly, from one instance until `stop`; records
/// every call's time (ms since `start`) and whether it was admitted.
async fn steady(
    rl: Arc<RateLimiter>,
    key: RedisKey,
    rate: RateLimit,
    per_second: f64,
    suppressed: bool,
    start: Instant,
    run: Duration,
) -> Vec<(u64, bool)> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    let mut calls = Vec::new();
    while start.elapsed() < run {
        tick.tick().await;
        let d = if suppressed {
            rl.hybrid().suppressed().inc(&key, &rate, 1).await.unwrap()
        } else {
            rl.hybrid().absolute().inc(&key, &rate, 1).await.unwrap()
        };
        calls.push((start.elapsed().as_millis() as u64, d.is_allowed()));
    }
    calls
}

/// Under steady overload a sliding window admits in a pattern that repeats every window
/// (with the local provider too: at 1.5x the rate it admits for two thirds of each window
/// and then waits for the oldest units to expire), so the admitted rate is read over whole
/// windows: over 3..9 s a 5 s window admits 91.7/s, and over 5..15 s exactly 100/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_at_one_and_a_half_times_the_rate_admit_the_rate() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_two");
    // 100/s, hard limit 2x (so 1.5x is inside the suppressed band), on a 2 s and a 5 s
    // window at once: two instances each.
    let rate = RateLimit::try_from(100.0).unwrap();
    let start = Instant::now();
    let run = Duration::from_secs(16);
    // (window, group, first second measured): the span is whole windows after the first.
    let windows = [(2u64, 10u64, 3u64, 6u64), (5, 100, 5, 2)];
    let mut handles = Vec::new();
    for (w, g, from, windows_measured) in windows {
        let rls = instances(&redis, &prefix, 2, w, g, 2.0).await;
        for (strategy, suppressed) in [("suppressed", true), ("absolute", false)] {
            for rl in &rls {
                let key = RedisKey::try_from(format!("steady_{strategy}_{w}s")).unwrap();
                let span = (from * 1000, (from + windows_measured * w) * 1000);
                handles.push((
                    (strategy, w, span),
                    tokio::spawn(steady(rl.clone(), key, rate, 75.0, suppressed, start, run)),
                ));
            }
        }
    }
    // (strategy, window, measured span in ms) -> calls of both instances.
    type Run = (&'static str, u64, (u64, u64));
    let mut calls: std::collections::BTreeMap<Run, Vec<(u64, bool)>> = Default::default();
    for (name, h) in handles {
        calls.entry(name).or_default().extend(h.await.unwrap());
    }
    let mut failures = Vec::new();
    for ((strategy, w, (from, to)), calls) in calls {
        let in_span: Vec<bool> = calls
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|&(_, allowed)| allowed)
            .collect();
        let seconds = (to - from) as f64 / 1000.0;
        let offered = in_span.len() as f64 / seconds;
        let per_second = in_span.iter().filter(|&&a| a).count() as f64 / seconds;
        eprintln!(
            "{strategy}, {w} s window: admitted {per_second:.1}/s over {from}..{to} ms at a \
             rate of 100/s, offered {offered:.1}/s"
        );
        // The load is what the test says it is: two instances at 75/s each (the interval
        // catches up after a late tick, so a busy machine shifts calls, not drops them).
        if !(148.0..=152.0).contains(&offered) {
            failures.push(format!(
                "{strategy}, {w} s window: offered {offered:.1}/s, want 150/s"
            ));
        }
        // Measured over 12 runs on a loaded 2-core machine (other helpers building), each
        // instance with its own seeded draws: absolute 97.0..=99.6/s, suppressed
        // 101.2..=103.8/s (above the rate by design: the factor lags Redis by a sync
        // interval; earlier runs measured 100.7 to 103.7/s), offered 149.8..=150.2/s. The
        // bands are those spreads and about 1/s more; a hybrid that over-admits 4 %
        // (103.3/s absolute, about 107/s suppressed) fails them.
        let band = if strategy == "suppressed" {
            100.0..=105.0
        } else {
            96.0..=101.0
        };
        if !band.contains(&per_second) {
            failures.push(format!(
                "{strategy}, {w} s window: admitted {per_second:.1}/s, want 100/s within {band:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_on_an_exhausted_key_cause_one_refresh_per_cycle() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_herd");
    let rls = instances(&redis, &prefix, 1, 10, 100, 1.5).await;
    let key = RedisKey::try_from("herd").unwrap();
    let rate = RateLimit::try_from(10.0).unwrap(); // capacity 100: exhausted at once
    let mut conn = redis.manager().await;
    let before = evalsha_calls(&mut conn).await;
    let (admitted, offered) = hammer(&rls, &key, rate, 50, Duration::from_secs(1)).await;
    let stats = rls[0].hybrid().stats();
    let after = evalsha_calls(&mut conn).await;
    eprintln!(
        "herd: {offered} calls, {admitted} admitted, {stats:?}, {} EVALSHA",
        after - before
    );
    assert_eq!(admitted, 100);
    assert!(offered > 10_000, "{offered}");
    // One key, one refresh per 10 ms cycle at most, whatever the number of callers.
    assert!(
        stats.refreshes <= stats.flushes + stats.flush_errors + 1,
        "{stats:?}"
    );
    assert!(stats.refreshes <= 1_000 / 10 + 10, "{stats:?}");
    assert!(
        stats.refreshes >= 5,
        "the committer kept refreshing: {stats:?}"
    );
    assert!(
        after - before <= stats.refreshes + 5,
        "{} EVALSHA",
        after - before
    );
}

async fn evalsha_calls(conn: &mut redis::aio::ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
