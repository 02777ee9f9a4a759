//! Limit sets on the hybrid provider: decided from memory, all or nothing, the counts
//! batched into the Redis sets' keys; four instances on one real Redis stay within the
//! documented bound on every limit, and count exactly what they admitted; a key per limit
//! on a 3-master cluster.
#![cfg(feature = "redis-tokio")]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::policy::{LimitSet, Outcome};
use sluicegate::redis::{RedisConnection, RedisKey};
use sluicegate::{Error, ManualClock, RateLimiter, RateLimiterBuilder};

fn local() -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: 0.try_into().unwrap(),
    }
}

fn key(k: &str) -> RedisKey {
    RedisKey::try_from(k).unwrap()
}

fn limiter(
    conn: RedisConnection,
    prefix: &RedisKey,
    sync_ms: u64,
    clock: Option<&ManualClock>,
) -> RateLimiter {
    let builder = RateLimiterBuilder::new(local()).redis_connection(
        conn,
        support::redis_settings(&local(), prefix, SyncIntervalMs::try_from(sync_ms).unwrap()),
    );
    match clock {
        Some(clock) => builder
            .clock(clock.clone())
            .redis_time_from_clock_for_tests_only(clock.clone()),
        None => builder,
    }
    .build()
    .unwrap()
}

/// A server, a prefix of the test's own and a manual clock.
fn clocked(tag: &str) -> (support::TestRedis, RedisKey, ManualClock) {
    (
        support::TestRedis::get(),
        support::unique_prefix(tag),
        ManualClock::new(1_000_000_000_000),
    )
}

/// Accepted units Redis holds for `key` under the set limit `name` (absolute counter).
async fn redis_used(
    conn: &mut redis::aio::ConnectionManager,
    prefix: &RedisKey,
    key: &str,
    name: &str,
) -> u64 {
    let total: Option<u64> = conn
        .hget(format!("{}:{{{key}}}:p:{name}:h", prefix.as_str()), "t")
        .await
        .unwrap();
    total.unwrap_or(0)
}

/// A refusal by one limit spends nothing in the other, the counts reach Redis in the keys
/// the Redis provider's sets use (so a Redis policy of the same set sees them), and malformed
/// calls are errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decided_in_memory_counted_in_the_redis_sets_keys() {
    let (redis, prefix, clock) = clocked("phybrid");
    let rl = limiter(
        redis.manager().await.into(),
        &prefix,
        3_600_000,
        Some(&clock),
    );
    let set: LimitSet = "burst = 3/s; minute = 5/m".parse().unwrap();
    let hybrid = rl.hybrid().policy(set.clone()).unwrap();
    let remote = rl.redis().policy(set.clone()).unwrap();
    let k = key("user1");
    rl.hybrid().flush().await.unwrap();
    for left in [2, 1, 0] {
        let d = hybrid.inc(&k, 1).unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.limits()[0].remaining, left);
    }
    let d = hybrid.inc(&k, 1).unwrap();
    assert_eq!(d.outcome(), Outcome::Rejected);
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![0]);
    assert_eq!(
        d.limits()[1].remaining,
        2,
        "the refusal spent nothing in the minute"
    );
    rl.hybrid().flush().await.unwrap();
    let seen = remote.check(&k, 1).await.unwrap();
    assert_eq!(seen.limits()[0].remaining, 0);
    assert_eq!(
        seen.limits()[1].remaining,
        2,
        "3 counted, the refused request not"
    );
    // The Redis policy counts in the same keys; the hybrid sees it at the next refresh of
    // the key, which a decision on it (here a check) asks for.
    clock.set(1_000_000_000_000 + 1100);
    assert!(remote.inc(&k, 1).await.unwrap().is_allowed());
    assert_eq!(
        hybrid.check(&k, 1).unwrap().limits()[1].remaining,
        2,
        "not yet seen"
    );
    rl.hybrid().flush().await.unwrap();
    let d = hybrid.inc(&k, 1).unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.limits()[1].remaining, 0);
    assert_eq!(
        hybrid.inc(&k, 1).unwrap().refused().collect::<Vec<_>>(),
        vec![1]
    );

    // Malformed calls.
    assert!(matches!(hybrid.inc(&k, 0), Err(Error::ZeroCount)));
    assert!(matches!(
        hybrid.inc_each(&[&k], 1),
        Err(Error::InvalidValue { .. })
    ));
    let over = hybrid.inc(&key("user2"), 4).unwrap();
    assert_eq!(
        (over.outcome(), over.retry_after_ms()),
        (Outcome::Rejected, u64::MAX)
    );
    assert_eq!(
        over.limits()[1].remaining,
        5,
        "a cost above a quota counts nowhere"
    );
    // A check creates no key.
    let before = hybrid.key_count();
    assert!(hybrid.check(&key("user3"), 1).unwrap().is_allowed());
    assert_eq!(hybrid.key_count(), before);
    assert_eq!(rl.hybrid().stats().flush_errors, 0);

    // Without Redis there is no hybrid policy.
    let bare = RateLimiterBuilder::new(local()).build().unwrap();
    assert!(matches!(
        bare.hybrid().policy(set),
        Err(Error::RedisNotConfigured)
    ));

    // Idle pairs are dropped once their windows are empty, nothing is unsent and their
    // leases (10 sync intervals: 10 h here) have run out.
    rl.hybrid().flush().await.unwrap();
    clock.set(1_000_000_000_000 + 3_600_000);
    rl.cleanup();
    assert!(hybrid.key_count() > 0, "leases still live");
    clock.set(1_000_000_000_000 + 36_100_000);
    rl.cleanup();
    assert_eq!(hybrid.key_count(), 0);
}

/// Four instances (each its own limiter and connection) hammer a per-IP limit and eight
/// per-API-key limits through `inc_each`, four of the keys twice as often as the others, so
/// the hot keys' limits fill and then the IP's does. No limit admits more than the documented bound
/// (capacity plus what instances admit before their first refresh, `N × max(1, rate × (T +
/// sync))` per limit), and what Redis counts is exactly what the instances admitted: no
/// refused request is counted in any limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_stay_within_the_bound_on_every_limit_and_count_no_refusal() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("phybrid4");
    // ip: 1000 per 10 s (100/s); api: 150 per 10 s (15/s) per key: the hot keys' limits fill
    // while the IP's does. Leases split both ways fill a set more slowly than one limit (an
    // instance's IP lease is spent only where its API key's lease has room): the IP fills
    // in 2-4 s here, 30 000 requests a second offered.
    // Nothing expires during the 4 s run.
    let set: LimitSet = "ip = 1000/10s; api = 150/10s".parse().unwrap();
    let mut rls = Vec::new();
    for _ in 0..4 {
        let rl = Arc::new(limiter(redis.manager().await.into(), &prefix, 10, None));
        let policy = rl.hybrid().policy(set.clone()).unwrap();
        rls.push((rl, policy));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Per instance, the gaps between its refreshes (its counted flushes, read off its
    // stats every millisecond): the first is T, the wait for its first refresh; a later one
    // longer than the lease (200 ms: a committer starved on this loaded machine) lets the
    // lease lapse, and the key admits provisionally again until the next refresh.
    let start = Instant::now();
    let limiters: Vec<Arc<RateLimiter>> = rls.iter().map(|(rl, _)| rl.clone()).collect();
    let watching = stop.clone();
    let refresh_gaps = tokio::spawn(async move {
        let mut gaps = vec![Vec::new(); limiters.len()];
        let mut last = vec![(0u64, start); limiters.len()];
        while !watching.load(Ordering::Relaxed) {
            for (i, rl) in limiters.iter().enumerate() {
                let flushes = rl.hybrid().stats().flushes;
                if flushes > last[i].0 {
                    gaps[i].push(last[i].1.elapsed());
                    last[i] = (flushes, Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gaps
    });
    let mut tasks = Vec::new();
    for (n, (_, policy)) in rls.iter().enumerate() {
        for t in 0..2 {
            let (policy, stop) = (policy.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let ip = key("198.51.100.7");
                let apis: Vec<RedisKey> = (0..8).map(|k| key(&format!("api{k}"))).collect();
                let mut admitted = [0u64; 8];
                let mut refused_by = [0u64; 2];
                let mut i = n * 2 + t;
                while !stop.load(Ordering::Relaxed) {
                    let k = match i % 12 {
                        hot @ 0..8 => hot % 4,
                        cold => cold - 4,
                    };
                    let d = policy.inc_each(&[&ip, &apis[k]], 1).unwrap();
                    if d.is_allowed() {
                        admitted[k] += 1;
                    } else {
                        for r in d.refused() {
                            refused_by[r] += 1;
                        }
                    }
                    i += 1;
                    if i % 32 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                (admitted, refused_by)
            }));
        }
    }
    // 6 s of the 10 s window: leases shrunk to demand fill the limits in 2-4 s, slower on a
    // loaded machine.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let refresh_gaps: Vec<Vec<Duration>> = refresh_gaps.await.unwrap();
    let mut per_api = [0u64; 8];
    let mut refused_by = [0u64; 2];
    for task in tasks {
        let (a, r) = task.await.unwrap();
        for (sum, n) in per_api.iter_mut().zip(a) {
            *sum += n;
        }
        refused_by[0] += r[0];
        refused_by[1] += r[1];
    }
    for (rl, _) in &rls {
        rl.hybrid().flush().await.unwrap();
        assert_eq!(rl.hybrid().stats().flush_errors, 0);
    }
    let admitted: u64 = per_api.iter().sum();
    let mut conn = redis.manager().await;
    let ip_used = redis_used(&mut conn, &prefix, "198.51.100.7", "ip").await;
    let mut api_used = HashMap::new();
    for k in 0..8usize {
        api_used.insert(
            k,
            redis_used(&mut conn, &prefix, &format!("api{k}"), "api").await,
        );
    }
    eprintln!(
        "4 hybrid instances, ip 1000 + api 8 x 150: admitted {admitted} (per api key {per_api:?}); \
         refusals by ip {}, by api {}; Redis counts ip {ip_used}, api {api_used:?}",
        refused_by[0], refused_by[1]
    );
    assert!(
        refused_by[0] > 0 && refused_by[1] > 0,
        "both limits refused"
    );
    // Exactly what was admitted, in every limit: refused requests count nowhere.
    assert_eq!(ip_used, admitted);
    for (k, n) in per_api.iter().enumerate() {
        assert_eq!(api_used[&k], *n, "api{k}");
    }
    // The documented bound, per limit: capacity plus, per instance, max(1, rate × (T +
    // sync interval)) before its first refresh, and as much again for each lapse of its
    // lease (a refresh gap past the 200 ms lease, counted from the lapse).
    let excess = |rate: f64| -> u64 {
        let units = |secs: f64| (rate * (secs + 0.010)).max(1.0).ceil() as u64;
        refresh_gaps
            .iter()
            .map(|gaps| {
                let first = gaps.first().map_or(4.0, Duration::as_secs_f64);
                let lapses: u64 = gaps
                    .iter()
                    .skip(1)
                    .filter(|g| g.as_millis() > 200)
                    .map(|g| units(g.as_secs_f64() - 0.200))
                    .sum();
                units(first) + lapses
            })
            .sum()
    };
    let longest: Vec<Duration> = refresh_gaps
        .iter()
        .map(|g| g.iter().skip(1).copied().max().unwrap_or_default())
        .collect();
    eprintln!(
        "first refreshes after {:?}, longest gaps after {longest:?}: bound ip {}, api {}",
        refresh_gaps
            .iter()
            .map(|g| g.first().copied())
            .collect::<Vec<_>>(),
        1000 + excess(100.0),
        150 + excess(15.0)
    );
    // Filled: instances that starve each other's leases admitted 756 of 1000 here. Leases
    // shrunk to demand fill it more slowly, and one loaded run stopped at 999 when the 4 s
    // ended, so the band allows 1% short (a 3% starvation still fails).
    assert!(ip_used >= 990, "the ip limit was filled: {ip_used}");
    assert!(
        ip_used <= 1000 + excess(100.0),
        "ip admitted {ip_used} of 1000"
    );
    // Filled to within 3% (a CI run at 4 s stopped at 149 of 150; starvation is far below).
    let full = per_api.iter().filter(|n| **n >= 146).count();
    assert!(full >= 1, "no API key's limit was filled: {per_api:?}");
    for (k, n) in per_api.iter().enumerate() {
        assert!(*n <= 150 + excess(15.0), "api{k} admitted {n} of 150");
    }
}

/// On a 3-master cluster a key per limit puts the limits in different slots: the hybrid
/// still decides the whole set at once in memory (no two passes, no race between them),
/// and its committer sends each (key, limit) to its own node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_per_limit_on_a_cluster_counts_on_each_node() {
    let cluster = support::RedisCluster::start();
    let prefix = support::unique_prefix("phcluster");
    let rl = limiter(cluster.connection().await.into(), &prefix, 3_600_000, None);
    let set: LimitSet = "ip = 6/m; apikey = 2/m".parse().unwrap();
    let hybrid = rl.hybrid().policy(set.clone()).unwrap();
    let remote = rl.redis().policy(set).unwrap();
    let ip = key("203.0.113.5");
    rl.hybrid().flush().await.unwrap();
    let mut admitted = 0;
    for k in 0..4 {
        let api = key(&format!("ck{k}"));
        for _ in 0..3 {
            let d = hybrid.inc_each(&[&ip, &api], 1).unwrap();
            if d.is_allowed() {
                admitted += 1;
            } else {
                assert_eq!(d.outcome(), Outcome::Rejected);
            }
        }
        rl.hybrid().flush().await.unwrap();
    }
    assert_eq!(admitted, 6, "2 per API key until the IP's 6");
    let probe = remote
        .check_each(&[&ip, &key("ck_probe")], 1)
        .await
        .unwrap();
    assert_eq!(
        probe.limits()[0].remaining,
        0,
        "the IP's 6 reached its node"
    );
    for k in 0..3 {
        let d = remote
            .check_each(&[&key("198.51.100.99"), &key(&format!("ck{k}"))], 1)
            .await
            .unwrap();
        assert_eq!(d.limits()[1].remaining, 0, "ck{k}'s 2 reached its node");
    }
    let d = remote
        .check_each(&[&key("198.51.100.99"), &key("ck3")], 1)
        .await
        .unwrap();
    assert_eq!(
        d.limits()[1].remaining,
        2,
        "ck3 was refused by the IP: counted nowhere"
    );
    assert_eq!(rl.hybrid().stats().flush_errors, 0);
}

/// Per-call quotas (a plan per API key), as `LocalPolicy::inc_with` takes them: each
/// limit's count for this call, its window and group its own; with the set's own counts it
/// answers as `inc_each`; counts are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_quotas_are_this_calls_counts() {
    let (redis, prefix, clock) = clocked("phwith");
    let rl = limiter(
        redis.manager().await.into(),
        &prefix,
        3_600_000,
        Some(&clock),
    );
    let set: LimitSet = "ip = 40/m; plan = 5/10s".parse().unwrap();
    let hybrid = rl.hybrid().policy(set.clone()).unwrap();
    let twin = rl.hybrid().policy(set).unwrap();
    let ip = key("ip1");
    let inc = |api: &str, plan: f64| {
        hybrid
            .inc_with(&[&ip, &key(api)], &[40.0, plan], 1)
            .unwrap()
    };
    // The pro plan's 12, then a refusal by the plan (its bucket 0 leaves at 100 + 10 000).
    for left in (0..12).rev() {
        rl.hybrid().flush().await.unwrap();
        let d = inc("pro_1", 12.0);
        assert!(d.is_allowed());
        assert_eq!(d.limits()[1].remaining, left);
    }
    rl.hybrid().flush().await.unwrap();
    let d = inc("pro_1", 12.0);
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![1]);
    assert_eq!(d.retry_after_ms(), 10_100);
    // The free plan's 5 behind the same IP.
    for _ in 0..5 {
        rl.hybrid().flush().await.unwrap();
        assert!(inc("free1", 5.0).is_allowed());
    }
    rl.hybrid().flush().await.unwrap();
    let d = inc("free1", 5.0);
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        d.limits()[0].remaining,
        40 - 17,
        "refusals cost the IP nothing"
    );
    // With the set's own counts, the same answers as inc_each (a twin policy, other keys).
    for step in 0..8 {
        rl.hybrid().flush().await.unwrap();
        let a = hybrid
            .inc_with(&[&key("ip2"), &key("k2")], &[40.0, 5.0], 1)
            .unwrap();
        let b = twin.inc_each(&[&key("ip3"), &key("k3")], 1).unwrap();
        assert_eq!(a, b, "step {step}");
    }
    let k = [&ip, &key("free1")];
    assert!(matches!(
        hybrid.inc_with(&k, &[40.0], 1),
        Err(Error::InvalidValue { .. })
    ));
    assert!(matches!(
        hybrid.inc_with(&k, &[40.0, f64::NAN], 1),
        Err(Error::InvalidValue { .. })
    ));
    assert!(matches!(
        hybrid.check_with(&k, &[40.0, 0.5], 1),
        Err(Error::CapacityBelowOne { .. })
    ));
    let over = hybrid.inc_with(&k, &[40.0, 2.0], 3).unwrap();
    assert_eq!(
        (over.outcome(), over.retry_after_ms()),
        (Outcome::Rejected, u64::MAX)
    );
}
