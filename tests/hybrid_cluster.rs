//! The hybrid provider through a 3-master Redis Cluster: one flush reaches every master,
//! and each key's increments land on its own slot.
#![cfg(feature = "redis-tokio")]

mod support;

use redis::AsyncCommands;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{RateLimit, RateLimiterBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_reach_every_master() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let cluster = support::RedisCluster::start();
    let prefix = support::unique_prefix("hybrid_cluster");
    let local = LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    let rl = RateLimiterBuilder::new(local)
        .redis_connection(
            cluster.connection().await,
            support::redis_settings(&local, &prefix, SyncIntervalMs::try_from(10).unwrap()),
        )
        .build()
        .unwrap();
    let rate = RateLimit::try_from(100.0).unwrap();
    let keys: Vec<RedisKey> = (0..30)
        .map(|i| RedisKey::try_from(format!("c{i}")).unwrap())
        .collect();
    for round in 0..5 {
        for key in &keys {
            assert!(support::admitted(rl.hybrid().absolute().inc(key, &rate, 1)).await);
            rl.hybrid().suppressed().inc(key, &rate, 2).await.unwrap();
        }
        rl.hybrid().flush().await.unwrap();
        let stats = rl.hybrid().stats();
        assert_eq!(stats.flush_errors, 0, "round {round}: {stats:?}");
    }
    rl.hybrid().flush().await.unwrap();
    let mut conn = cluster.connection().await;
    for key in &keys {
        let abs: Option<u64> = conn
            .hget(format!("{}:{{{}}}:a:h", prefix.as_str(), key.as_str()), "t")
            .await
            .unwrap();
        assert_eq!(abs, Some(5), "{key}");
        let observed: Option<u64> = conn
            .hget(
                format!("{}:{{{}}}:s:h", prefix.as_str(), key.as_str()),
                "to",
            )
            .await
            .unwrap();
        assert_eq!(observed, Some(10), "{key}");
    }
}
