//! Lost Redis data (issue 13): a real `FLUSHALL` on a server of our own (never
//! `SLUICEGATE_REDIS_URL`'s: it would wipe someone's data), standing in for a failover that
//! lost writes or an evicted key.
//!
//! - The hybrid provider keeps its own record of what it admitted in the window, so after
//!   the loss it admits none of it again (it decides on the larger of Redis's count and its
//!   own).
//! - The Redis provider has no other record: its documented behaviour (`redis` module docs,
//!   "Lost data") is a fresh window for every key whose data was lost.
#![cfg(feature = "redis-tokio")]

mod support;

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{RateLimit, RateLimiter, RateLimiterBuilder};
use support::RedisServer;

fn limiter(manager: redis::aio::ConnectionManager, prefix: &RedisKey) -> RateLimiter {
    let local = LocalRateLimiterOptions {
        window_size_seconds: 60.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 2.0.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    RateLimiterBuilder::new(local)
        .redis_connection(
            manager,
            // Long: the test's explicit flushes are the only ones.
            support::redis_settings(&local, prefix, SyncIntervalMs::try_from(3_600_000).unwrap()),
        )
        .build()
        .unwrap()
}

async fn flushall(server: &RedisServer) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "FLUSHALL left {keys:?}");
}

async fn manager(server: &RedisServer) -> redis::aio::ConnectionManager {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hybrid_never_admits_again_what_it_admitted_before_a_flushall() {
    let server = RedisServer::start();
    let prefix = support::unique_prefix("lost");
    let rl = limiter(manager(&server).await, &prefix);
    let key = RedisKey::try_from("spent").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap(); // 60 per window
    let (absolute, suppressed) = (rl.hybrid().absolute(), rl.hybrid().suppressed());

    let mut admitted = 0;
    let mut accepted = 0;
    for i in 0..200 {
        if absolute.inc(&key, &rate, 1).await.unwrap().is_allowed() {
            admitted += 1;
        }
        if suppressed.inc(&key, &rate, 1).await.unwrap().is_allowed() {
            accepted += 1;
        }
        if i % 10 == 9 {
            rl.hybrid().flush().await.unwrap();
        }
    }
    assert_eq!(admitted, 60, "the window's capacity, before the loss");
    assert!(
        (60..=120).contains(&accepted),
        "suppressed: {accepted} accepted before the loss"
    );

    flushall(&server).await;

    // Refresh after refresh, Redis says 0 used; the instance still counts its 60.
    let (mut again, mut accepted_again) = (0, 0);
    for i in 0..200 {
        if i % 10 == 0 {
            rl.hybrid().flush().await.unwrap();
        }
        if absolute.inc(&key, &rate, 1).await.unwrap().is_allowed() {
            again += 1;
        }
        if suppressed.inc(&key, &rate, 1).await.unwrap().is_allowed() {
            accepted_again += 1;
        }
    }
    assert_eq!(again, 0, "admitted again after FLUSHALL (absolute)");
    assert_eq!(
        accepted_again, 0,
        "admitted again after FLUSHALL (suppressed, 200 observed: past the hard limit)"
    );
    assert_eq!(rl.hybrid().stats().flush_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_spent_hybrid_key_admits_only_the_rest_after_a_flushall() {
    let server = RedisServer::start();
    let prefix = support::unique_prefix("lost_part");
    let rl = limiter(manager(&server).await, &prefix);
    let key = RedisKey::try_from("part").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap(); // 60 per window
    let absolute = rl.hybrid().absolute();
    for _ in 0..40 {
        assert!(absolute.inc(&key, &rate, 1).await.unwrap().is_allowed());
    }
    rl.hybrid().flush().await.unwrap();
    flushall(&server).await;
    let mut admitted = 0;
    for i in 0..100 {
        if i % 5 == 0 {
            rl.hybrid().flush().await.unwrap();
        }
        if absolute.inc(&key, &rate, 1).await.unwrap().is_allowed() {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 20,
        "60 per window, 40 of them admitted before the loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_provider_starts_a_fresh_window_after_a_flushall_as_documented() {
    let server = RedisServer::start();
    let prefix = support::unique_prefix("lost_redis");
    let rl = limiter(manager(&server).await, &prefix);
    let key = RedisKey::try_from("fresh").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap();
    assert_eq!(admitted_of(&rl, &key, &rate, 100).await, 60);
    flushall(&server).await;
    assert_eq!(
        admitted_of(&rl, &key, &rate, 100).await,
        60,
        "a second full window, as the docs say"
    );
}

async fn admitted_of(rl: &RateLimiter, key: &RedisKey, rate: &RateLimit, calls: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..calls {
        if rl
            .redis()
            .absolute()
            .inc(key, rate, 1)
            .await
            .unwrap()
            .is_allowed()
        {
            admitted += 1;
        }
    }
    admitted
}
