//! Limit sets on a 3-master Redis Cluster: a set on one key is one slot and one script; a
//! set whose limits have different keys (per IP and per API key) spans slots and is decided
//! in two passes (see `RedisPolicy::inc_each`). Never over a quota; a refused request costs
//! the other limits nothing unless it raced another request between the passes.
#![cfg(feature = "redis-tokio")]

mod support;

use std::sync::Arc;

use sluicegate::RateLimiterBuilder;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::policy::{LimitSet, Outcome, RedisPolicy};
use sluicegate::redis::RedisKey;

fn local() -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: 60.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: Default::default(),
    }
}

fn key(k: &str) -> RedisKey {
    RedisKey::try_from(k).unwrap()
}

async fn policy(cluster: &support::RedisCluster, set: &str) -> RedisPolicy {
    let prefix = support::unique_prefix("pcluster");
    let rl = RateLimiterBuilder::new(local())
        .redis_connection(
            cluster.connection().await,
            support::redis_settings(&local(), &prefix, SyncIntervalMs::default()),
        )
        .build()
        .unwrap();
    rl.redis().policy(set.parse::<LimitSet>().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_different_keys_across_slots() {
    let cluster = support::RedisCluster::start();

    // One key: the whole set in one slot.
    let one = policy(&cluster, "burst = 3/m; minute = 5/m").await;
    for _ in 0..3 {
        assert!(one.inc(&key("solo"), 1).await.unwrap().is_allowed());
    }
    let d = one.inc(&key("solo"), 1).await.unwrap();
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![0]);
    assert_eq!(d.limits()[1].remaining, 2);

    // Per IP and per API key: 4 API keys of 2 a minute behind one IP of 20 a minute. The
    // key limits refuse 32 of 40 requests, and those cost the IP limit nothing.
    let split = policy(&cluster, "ip = 20/m; apikey = 2/m").await;
    let ip = key("203.0.113.9");
    let mut admitted = 0;
    for k in 0..4 {
        let api = key(&format!("api{k}"));
        for _ in 0..10 {
            let d = split.inc_each(&[&ip, &api], 1).await.unwrap();
            if d.is_allowed() {
                admitted += 1;
            } else {
                assert_eq!(d.outcome(), Outcome::Rejected);
                assert_eq!(
                    d.refused().collect::<Vec<_>>(),
                    vec![1],
                    "the API key's limit"
                );
            }
        }
    }
    assert_eq!(admitted, 8);
    let d = split.check_each(&[&ip, &key("probe")], 1).await.unwrap();
    assert_eq!(
        d.limits()[0].remaining,
        12,
        "refused requests spent none of the IP's quota"
    );

    // Once the IP limit is spent, it refuses for every API key, and a new key's limit is not
    // charged either.
    for k in 4..10 {
        let api = key(&format!("api{k}"));
        for _ in 0..2 {
            assert!(split.inc_each(&[&ip, &api], 1).await.unwrap().is_allowed());
        }
    }
    let fresh = key("api_fresh");
    let d = split.inc_each(&[&ip, &fresh], 1).await.unwrap();
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![0]);
    assert_eq!(
        split
            .inc_each(&[&key("198.51.100.1"), &fresh], 1)
            .await
            .unwrap()
            .limits()[1]
            .remaining,
        1,
        "the refusal did not count in the fresh key's limit"
    );

    // Per-call quotas across slots: a `pro_` plan of 5 a minute beside the IP's 20.
    let plans = policy(&cluster, "ip = 20/m; apikey = 2/m").await;
    let ip = key("203.0.113.10");
    let (pro, free) = (key("pro_x"), key("free_y"));
    let mut admitted = [0, 0];
    for _ in 0..8 {
        for (n, (k, count)) in [(&pro, 5.0), (&free, 2.0)].into_iter().enumerate() {
            let d = plans.inc_with(&[&ip, k], &[20.0, count], 1).await.unwrap();
            admitted[n] += usize::from(d.is_allowed());
        }
    }
    assert_eq!(admitted, [5, 2], "each key held to its plan");
    let d = plans
        .check_with(&[&ip, &key("probe")], &[20.0, 2.0], 1)
        .await
        .unwrap();
    assert_eq!(d.limits()[0].remaining, 13, "only the 7 admitted counted");
}

/// Tasks on two connections race for one IP's quota through many API keys: no limit ever
/// goes over its quota. Races between the passes may charge the IP for a refused request;
/// the test reports how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_requests_never_push_a_limit_over_its_quota() {
    let cluster = support::RedisCluster::start();
    let split = Arc::new(policy(&cluster, "ip = 40/m; apikey = 3/m").await);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let split = split.clone();
        tasks.push(tokio::spawn(async move {
            let ip = key("192.0.2.77");
            let mut admitted = [0u64; 20];
            for i in 0..30 {
                let k = (t * 7 + i) % 20;
                let api = key(&format!("k{k}"));
                if split.inc_each(&[&ip, &api], 1).await.unwrap().is_allowed() {
                    admitted[k] += 1;
                }
            }
            admitted
        }));
    }
    let mut per_key = [0u64; 20];
    for task in tasks {
        for (k, n) in task.await.unwrap().iter().enumerate() {
            per_key[k] += n;
        }
    }
    let admitted: u64 = per_key.iter().sum();
    assert!(admitted <= 40, "the IP limit admitted {admitted} of 40");
    for (k, n) in per_key.iter().enumerate() {
        assert!(*n <= 3, "k{k} admitted {n} of 3");
    }
    let probe = split
        .check_each(&[&key("192.0.2.77"), &key("probe")], 1)
        .await
        .unwrap();
    let used = 40 - probe.limits()[0].remaining;
    assert!(
        used >= admitted,
        "every admitted request counted: {used} < {admitted}"
    );
    eprintln!(
        "admitted {admitted}; IP quota used {used} (raced refusals: {})",
        used - admitted
    );
}
