//! The multi-limit conformance table on a 3-master Redis Cluster, through the Redis
//! provider and the hybrid (on redis-rs's cluster connection and on the limiter's own
//! routing, `RedisConnection::cluster_nodes`); and what a key per limit costs there.
//!
//! A set whose limits are on different keys spans slots on a cluster. The Redis provider
//! then decides it in two passes (see `RedisPolicy::inc_each`): sequential calls answer
//! exactly as on one server (the table), no limit is ever over its quota, and the one cost
//! is a race: a request refused by a later key after another request took its last unit
//! between the passes has already counted in the earlier keys' limits, and holds that
//! cost there until its bucket leaves their windows, at most window + group later. The
//! hybrid decides the whole set in memory, so it has no such race.
#![cfg(feature = "redis-tokio")]

mod support;

use std::sync::Arc;

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::policy::LimitSet;
use sluicegate::redis::RedisKey;
use sluicegate::{ManualClock, RateLimiterBuilder};
use support::conformance::{SetProvider, run_set_table};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_set_table_and_the_cost_of_a_split_set_on_a_cluster() {
    let cluster = support::RedisCluster::start();
    run_set_table(&SetProvider::Redis(cluster.connection().await.into())).await;
    run_set_table(&SetProvider::Hybrid(cluster.connection().await.into())).await;
    // The same through the limiter's own routing.
    let routed = || sluicegate::redis::RedisConnection::cluster_nodes(cluster.urls());
    run_set_table(&SetProvider::Redis(routed().await.unwrap())).await;
    run_set_table(&SetProvider::Hybrid(routed().await.unwrap())).await;

    // The race, on a clock that stands still: 8 tasks on two connections send requests
    // through one IP (40 a minute) and 20 API keys (3 a minute each).
    const T0: u64 = 1_000_000_000_000;
    let clock = ManualClock::new(T0);
    let local = LocalRateLimiterOptions {
        window_size_seconds: 60.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: Default::default(),
    };
    let prefix = support::unique_prefix("clusterrace");
    let mut policies = Vec::new();
    for _ in 0..2 {
        let rl = RateLimiterBuilder::new(local)
            .clock(clock.clone())
            .redis_connection(
                cluster.connection().await,
                support::redis_settings(&local, &prefix, SyncIntervalMs::default()),
            )
            .redis_time_from_clock_for_tests_only(clock.clone())
            .build()
            .unwrap();
        // 100 ms groups for both limits: the window + group the cost may last.
        let set: LimitSet = "ip = 40/m; apikey = 3/m".parse().unwrap();
        let set = LimitSet::new(
            set.iter()
                .map(|l| l.clone().group(100.try_into().unwrap()).unwrap()),
        )
        .unwrap();
        policies.push(Arc::new(rl.redis().policy(set).unwrap()));
    }
    let key = |k: &str| RedisKey::try_from(k).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let policy = policies[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let ip = key("192.0.2.1");
            let mut admitted = [0u64; 20];
            // Refusals by an API key's limit alone: the only ones that can have counted in
            // the IP's limit (in the first of the two passes).
            let mut by_api_only = 0u64;
            for i in 0..40 {
                let k = (t * 7 + i) % 20;
                let d = policy
                    .inc_each(&[&ip, &key(&format!("rk{k}"))], 1)
                    .await
                    .unwrap();
                if d.is_allowed() {
                    admitted[k] += 1;
                } else if d.refused().eq([1]) {
                    by_api_only += 1;
                }
            }
            (admitted, by_api_only)
        }));
    }
    let mut per_key = [0u64; 20];
    let mut by_api_only = 0;
    for task in tasks {
        let (a, r) = task.await.unwrap();
        for (k, n) in a.iter().enumerate() {
            per_key[k] += n;
        }
        by_api_only += r;
    }
    let admitted: u64 = per_key.iter().sum();
    let probe = |ip: &'static str, api: &'static str| {
        let policy = policies[0].clone();
        async move { policy.check_each(&[&key(ip), &key(api)], 1).await.unwrap() }
    };
    let used = 40 - probe("192.0.2.1", "rk_probe").await.limits()[0].remaining;
    eprintln!(
        "split set on a cluster: admitted {admitted} (per API key at most 3: {per_key:?}); \
         the IP's quota used {used}, {} of it by refused requests that raced",
        used - admitted
    );
    // Never over a quota.
    assert!(used <= 40, "the IP limit counted {used} of 40");
    assert!(per_key.iter().all(|n| *n <= 3), "{per_key:?}");
    // Every admitted request counted; a refused request costs the IP a unit only when the
    // API key refused it after the race.
    assert!(used >= admitted);
    assert!(
        used - admitted <= by_api_only,
        "{} raced of {by_api_only}",
        used - admitted
    );
    // And it lasts until the buckets leave the window: at most window + group. One group
    // before that everything still counts (the clock never moved); at window + group none.
    clock.set(T0 + 60_000 + 99);
    assert_eq!(
        40 - probe("192.0.2.1", "rk_probe").await.limits()[0].remaining,
        used
    );
    clock.set(T0 + 60_000 + 100);
    assert_eq!(
        probe("192.0.2.1", "rk_probe").await.limits()[0].remaining,
        40
    );
}
