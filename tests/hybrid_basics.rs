//! The hybrid provider against a real Redis: flushes land where the Redis provider counts,
//! leases, decisions without Redis I/O, stats, TTLs, cleanup.
#![cfg(feature = "redis-tokio")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{Error, RateLimit, RateLimitDecision, RateLimiter, RateLimiterBuilder};
use support::TestRedis;

pub fn hybrid_instance(
    manager: redis::aio::ConnectionManager,
    prefix: &RedisKey,
    window_s: u64,
    group_ms: u64,
    sync_ms: u64,
) -> RateLimiter {
    let local = LocalRateLimiterOptions {
        window_size_seconds: window_s.try_into().unwrap(),
        rate_group_size_ms: group_ms.try_into().unwrap(),
        hard_limit_factor: 2.0.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    RateLimiterBuilder::new(local)
        .redis_connection(
            manager,
            support::redis_settings(&local, prefix, SyncIntervalMs::try_from(sync_ms).unwrap()),
        )
        .build()
        .unwrap()
}

async fn hget(redis: &TestRedis, key: &str, field: &str) -> Option<i64> {
    let mut conn = redis.manager().await;
    conn.hget(key, field).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_admits_capacity_and_flushes_it_where_redis_counts() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_basic");
    let rl = hybrid_instance(redis.manager().await, &prefix, 10, 100, 10);
    let key = RedisKey::try_from("k1").unwrap();
    let rate = RateLimit::try_from(10.0).unwrap(); // capacity 100
    let mut admitted = 0;
    // Before and between refreshes decisions come from local state; a flush grants a lease.
    for i in 0..300 {
        if support::admitted(rl.hybrid().absolute().inc(&key, &rate, 1)).await {
            admitted += 1;
        }
        if i % 7 == 0 {
            rl.hybrid().flush().await.unwrap();
        }
    }
    rl.hybrid().flush().await.unwrap();
    assert_eq!(admitted, 100, "one instance admits exactly the capacity");
    let hash = format!("{}:{{k1}}:a:h", prefix.as_str());
    assert_eq!(
        hget(&redis, &hash, "t").await,
        Some(100),
        "every admission reached Redis"
    );
    // The Redis provider reads the same keys: the window is full for it too.
    let redis_side = rl.redis().absolute().inc(&key, &rate, 1).await.unwrap();
    match redis_side {
        RateLimitDecision::Rejected { retry_after_ms, .. } => {
            assert!(
                retry_after_ms > 9_000 && retry_after_ms <= 10_100,
                "{retry_after_ms}"
            )
        }
        other => panic!("{other:?}"),
    }
    match rl.hybrid().absolute().is_allowed(&key).await.unwrap() {
        RateLimitDecision::Rejected {
            retry_after_ms,
            remaining_after_waiting,
            window_size_seconds,
        } => {
            assert_eq!(window_size_seconds, 10);
            assert!(
                retry_after_ms > 9_000 && retry_after_ms <= 10_100,
                "{retry_after_ms}"
            );
            assert!(remaining_after_waiting < 100, "{remaining_after_waiting}");
        }
        other => panic!("{other:?}"),
    }
    // Every Redis key written has a TTL.
    let mut conn = redis.manager().await;
    let keys: Vec<String> = conn.keys(format!("{}:*", prefix.as_str())).await.unwrap();
    // The hash and the lease hash; the list of closed buckets too once a second bucket opens.
    assert!(keys.len() >= 2, "{keys:?}");
    for k in keys {
        let ttl: i64 = conn.pttl(&k).await.unwrap();
        assert!(ttl > 0 && ttl <= 12_000, "{k}: pttl {ttl}");
    }
    let stats = rl.hybrid().stats();
    assert_eq!(stats.units_flushed, 100, "{stats:?}");
    assert_eq!(stats.flush_errors, 0, "{stats:?}");
    assert_eq!(stats.pending_buckets, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_made_through_redis_is_seen_after_one_refresh() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_seen");
    let rl = hybrid_instance(redis.manager().await, &prefix, 10, 100, 10);
    let key = RedisKey::try_from("shared").unwrap();
    let rate = RateLimit::try_from(5.0).unwrap(); // capacity 50
    for _ in 0..45 {
        assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    }
    // First hybrid call: provisional (one unit), then the refresh grants what is left.
    assert!(support::admitted(rl.hybrid().absolute().inc(&key, &rate, 1)).await);
    rl.hybrid().flush().await.unwrap();
    let mut admitted = 1;
    for _ in 0..20 {
        if support::admitted(rl.hybrid().absolute().inc(&key, &rate, 1)).await {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "45 used through Redis leave 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressed_flushes_accepted_and_observed() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_sup");
    let rl = hybrid_instance(redis.manager().await, &prefix, 10, 100, 10);
    let key = RedisKey::try_from("s1").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap(); // capacity 10, hard limit 20
    let mut accepted = 0;
    for i in 0..40 {
        let d = rl.hybrid().suppressed().inc(&key, &rate, 1).await.unwrap();
        if d.is_allowed() {
            accepted += 1;
        }
        if i % 5 == 0 {
            rl.hybrid().flush().await.unwrap();
        }
    }
    rl.hybrid().flush().await.unwrap();
    let hash = format!("{}:{{s1}}:s:h", prefix.as_str());
    assert_eq!(
        hget(&redis, &hash, "to").await,
        Some(40),
        "every call observed"
    );
    assert_eq!(
        hget(&redis, &hash, "td").await,
        Some(40 - accepted),
        "declined = observed - accepted"
    );
    assert!((10..20).contains(&accepted), "{accepted}");
    // 40 observed is over the hard limit of 20: fully suppressed, in both providers.
    assert_eq!(
        rl.hybrid()
            .suppressed()
            .get_suppression_factor(&key)
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        rl.redis()
            .suppressed()
            .get_suppression_factor(&key)
            .await
            .unwrap(),
        1.0
    );
    let unknown = RedisKey::try_from("never").unwrap();
    assert_eq!(
        rl.hybrid()
            .suppressed()
            .get_suppression_factor(&unknown)
            .await
            .unwrap(),
        0.0
    );
}

/// Tasks alive on this runtime once the count has held still for 50 ms (at most 2 s).
async fn settled_tasks() -> usize {
    let mut last = alive_tasks();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = alive_tasks();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Tasks alive on this runtime now.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_committer_flushes_without_help_and_stops_with_the_limiter() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_bg");
    let manager = redis.manager().await;
    // A clone of the connection outlives the limiter, so its driver task stays: the only
    // task the limiter adds to this runtime is its committer.
    let mut connection = manager.clone();
    // The connection's own start-up tasks end a moment after it connects: count once the
    // number of tasks has held still for 50 ms (a run that counted too early saw one fewer).
    let before = settled_tasks().await;
    let rl = Arc::new(hybrid_instance(manager, &prefix, 10, 100, 10));
    assert_eq!(
        alive_tasks(),
        before + 1,
        "building the limiter in a runtime starts its committer"
    );
    let key = RedisKey::try_from("bg").unwrap();
    let rate = RateLimit::try_from(100.0).unwrap();
    for _ in 0..5 {
        rl.hybrid().absolute().inc(&key, &rate, 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hash = format!("{}:{{bg}}:a:h", prefix.as_str());
    let total: Option<i64> = connection.hget(&hash, "t").await.unwrap();
    assert_eq!(total, Some(5));
    let flushes = rl.hybrid().stats().flushes;
    assert!(flushes >= 2, "{flushes}");
    // Idle keys go with cleanup once their lease is over and nothing is unsent... but not
    // while their usage is in the window.
    assert_eq!(rl.cleanup(), 0);
    assert_eq!(rl.hybrid().key_count(), 1);
    assert_eq!(
        alive_tasks(),
        before + 1,
        "one committer, however many calls"
    );
    let weak = Arc::downgrade(&rl);
    drop(rl);
    assert!(weak.upgrade().is_none());
    // The committer notices at its next tick (10 ms) and its task ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive_tasks() > before {
        assert!(
            std::time::Instant::now() < deadline,
            "the committer task outlived its limiter by 5 s: {} tasks alive, {before} before",
            alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(alive_tasks(), before);
}

#[tokio::test]
async fn malformed_calls_and_missing_redis_are_errors() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_bad");
    let rl = hybrid_instance(redis.manager().await, &prefix, 10, 100, 10);
    let key = RedisKey::try_from("bad").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap();
    assert!(matches!(
        rl.hybrid().absolute().inc(&key, &rate, 0).await,
        Err(Error::ZeroCount)
    ));
    assert!(matches!(
        rl.hybrid().suppressed().inc(&key, &rate, 11).await,
        Err(Error::CountAboveCapacity { .. })
    ));
    let tiny = RateLimit::try_from(0.01).unwrap();
    assert!(matches!(
        rl.hybrid().absolute().inc(&key, &tiny, 1).await,
        Err(Error::CapacityBelowOne { .. })
    ));
    assert_eq!(
        rl.hybrid().key_count(),
        0,
        "malformed calls create no state"
    );
    let local_only = RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: Default::default(),
    })
    .build()
    .unwrap();
    assert!(matches!(
        local_only.hybrid().absolute().inc(&key, &rate, 1).await,
        Err(Error::RedisNotConfigured)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_loop_drops_hybrid_keys_once_nothing_of_them_counts() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_clean");
    // A 1 s window: a key's usage stops counting 1.1 s after its bucket.
    let rl = Arc::new(hybrid_instance(redis.manager().await, &prefix, 1, 100, 10));
    let rate = RateLimit::try_from(50.0).unwrap();
    for i in 0..20 {
        let key = RedisKey::try_from(format!("c{i}")).unwrap();
        rl.hybrid().absolute().inc(&key, &rate, 1).await.unwrap();
        rl.hybrid().suppressed().inc(&key, &rate, 1).await.unwrap();
    }
    rl.hybrid().flush().await.unwrap();
    assert_eq!(rl.hybrid().key_count(), 40);
    assert_eq!(
        rl.cleanup(),
        0,
        "usage still in the window is never dropped"
    );
    rl.run_cleanup_loop_every(Duration::from_millis(50));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rl.hybrid().key_count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} keys left",
            rl.hybrid().key_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rl.hybrid().stats().pending_buckets, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_provider_continues_a_suppressed_key_the_hybrid_wrote() {
    // The hybrid writes only the totals it has counts for (no declined total while nothing
    // was declined); the Redis provider's scripts read such a key as it is.
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_mixed");
    let rl = hybrid_instance(redis.manager().await, &prefix, 10, 1_000, 10);
    let key = RedisKey::try_from("shared").unwrap();
    let rate = RateLimit::try_from(10.0).unwrap(); // capacity 100
    for _ in 0..5 {
        assert!(support::admitted(rl.hybrid().suppressed().inc(&key, &rate, 1)).await);
    }
    rl.hybrid().flush().await.unwrap();
    let hash = format!("{}:{{shared}}:s:h", prefix.as_str());
    assert_eq!(hget(&redis, &hash, "to").await, Some(5));
    for _ in 0..5 {
        assert!(support::admitted(rl.redis().suppressed().inc(&key, &rate, 1)).await);
    }
    assert_eq!(hget(&redis, &hash, "to").await, Some(10));
    assert_eq!(
        rl.redis()
            .suppressed()
            .get_suppression_factor(&key)
            .await
            .unwrap(),
        0.0
    );
}
