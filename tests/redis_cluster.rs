//! The Redis provider on a 3-master Redis Cluster started by the test: the conformance
//! table runs through `redis::cluster_async`, and keys spread over the masters.
#![cfg(feature = "redis-tokio")]

mod support;

use redis::AsyncCommands;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{RateLimit, RateLimiterBuilder};
use support::conformance::{Provider, run_table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_and_ttls_through_a_three_master_cluster() {
    let cluster = support::RedisCluster::start();
    let conn = cluster.connection().await;
    run_table(&Provider::Redis(conn.clone().into())).await;

    // Many keys: each decision is one script on one node (one hash tag), and the keys
    // land on every master.
    let prefix = support::unique_prefix("cluster");
    let local = LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    let rl = RateLimiterBuilder::new(local)
        .redis_connection(
            conn,
            support::redis_settings(&local, &prefix, SyncIntervalMs::default()),
        )
        .build()
        .unwrap();
    let rate = RateLimit::try_from(0.5).unwrap(); // 5 a window
    for k in 0..30 {
        let key = RedisKey::try_from(format!("user{k}")).unwrap();
        for _ in 0..5 {
            assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
            assert!(support::admitted(rl.redis().suppressed().inc(&key, &rate, 1)).await);
        }
        assert!(!support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    }
    let mut masters_with_keys = 0;
    for url in cluster.urls() {
        let mut node = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = node.keys(format!("{prefix}:*")).await.unwrap();
        for name in &keys {
            let ttl: i64 = node.pttl(name).await.unwrap();
            assert!(ttl > 0 && ttl <= 10_100, "{name}: TTL {ttl}");
        }
        masters_with_keys += usize::from(!keys.is_empty());
    }
    assert_eq!(
        masters_with_keys, 3,
        "30 hash tags spread over all three masters"
    );
}
