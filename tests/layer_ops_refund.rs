//! Refunds (counting by outcome) on each provider against real servers: a reserved unit
//! given back no longer counts, one kept still expires on time, and under concurrent
//! reservations no more units count than the capacity.
#![cfg(feature = "redis-tokio")]

mod support;

use std::sync::Arc;

use redis::AsyncCommands;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{ManualClock, RateLimit, RateLimiter, RateLimiterBuilder};
use support::TestRedis;

fn local(window_s: u64, group_ms: u64) -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: window_s.try_into().unwrap(),
        rate_group_size_ms: group_ms.try_into().unwrap(),
        hard_limit_factor: 2.0.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    }
}

async fn limiter(redis: &TestRedis, prefix: &RedisKey, clock: Option<&ManualClock>) -> RateLimiter {
    // A slow committer: the tests flush when they mean to, so a background cycle rarely
    // catches a unit between its reservation and its refund.
    let local = local(10, 100);
    let mut builder = RateLimiterBuilder::new(local).redis_connection(
        redis.manager().await,
        support::redis_settings(&local, prefix, SyncIntervalMs::try_from(1_000).unwrap()),
    );
    if let Some(clock) = clock {
        builder = builder
            .clock(clock.clone())
            .redis_time_from_clock_for_tests_only(clock.clone());
    }
    builder.build().unwrap()
}

fn key(s: &str) -> RedisKey {
    RedisKey::try_from(s).unwrap()
}

#[tokio::test]
async fn redis_refunds_take_the_unit_back_from_its_bucket() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("refund");
    let clock = ManualClock::new(1_000_000);
    let rl = limiter(&redis, &prefix, Some(&clock)).await;
    let abs = rl.redis().absolute();
    let rate = RateLimit::try_from(0.3).unwrap(); // 3 a window
    let k = key("login");
    let (d, first) = abs.reserve(&k, &rate, 1).await.unwrap();
    assert!(d.is_allowed());
    clock.advance(3_000);
    // Two more in later buckets: the first is closed onto the list.
    for _ in 0..2 {
        assert!(abs.reserve(&k, &rate, 1).await.unwrap().0.is_allowed());
    }
    assert!(!abs.reserve(&k, &rate, 1).await.unwrap().0.is_allowed());
    // The first unit (a closed bucket) goes back: one more fits.
    assert_eq!(abs.refund(&k, 1, first).await.unwrap(), 0);
    let mut conn = redis.manager().await;
    let hash = format!("{}:{{login}}:a:h", prefix.as_str());
    let total: i64 = conn.hget(&hash, "t").await.unwrap();
    assert_eq!(total, 2);
    let (d, fourth) = abs.reserve(&k, &rate, 1).await.unwrap();
    assert!(d.is_allowed());
    assert!(!abs.reserve(&k, &rate, 1).await.unwrap().0.is_allowed());
    // Units of the open bucket (3 now) go back too.
    assert_eq!(abs.refund(&k, 2, fourth).await.unwrap(), 0);
    let total: i64 = conn.hget(&hash, "t").await.unwrap();
    assert_eq!(total, 1);
    // The kept unit still expires on time: bucket 10030 counts until (10030 + 1) × 100 ms
    // + 10 s = 1,013,100 ms.
    clock.advance(10_099);
    for _ in 0..2 {
        assert!(abs.reserve(&k, &rate, 1).await.unwrap().0.is_allowed());
    }
    assert!(!abs.reserve(&k, &rate, 1).await.unwrap().0.is_allowed());
    clock.advance(1);
    assert!(abs.reserve(&k, &rate, 1).await.unwrap().0.is_allowed());
    // More than the bucket holds: the rest is reported.
    assert_eq!(
        abs.refund(&k, 5, fourth).await.unwrap(),
        5,
        "bucket 10030 is gone"
    );
    // A refund of units whose bucket left the window finds nothing.
    clock.advance(20_000);
    assert_eq!(abs.refund(&k, 1, first).await.unwrap(), 1);

    // Suppressed: an admitted unit goes back as observed (accepted = observed − declined).
    let sup = rl.redis().suppressed();
    let (d, at) = sup.reserve(&k, &rate, 2).await.unwrap();
    assert!(d.is_allowed());
    assert_eq!(sup.refund(&k, 1, at).await.unwrap(), 0);
    let hash = format!("{}:{{login}}:s:h", prefix.as_str());
    let observed: i64 = conn.hget(&hash, "to").await.unwrap();
    assert_eq!(observed, 1);
}

#[tokio::test]
async fn redis_refunds_on_the_servers_clock() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("refund_time");
    let rl = limiter(&redis, &prefix, None).await;
    let abs = rl.redis().absolute();
    let rate = RateLimit::try_from(0.2).unwrap(); // 2 a window
    let k = key("k");
    for _ in 0..20 {
        let (d, at) = abs.reserve(&k, &rate, 1).await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(abs.refund(&k, 1, at).await.unwrap(), 0);
    }
    assert!(abs.reserve(&k, &rate, 1).await.unwrap().0.is_allowed());
    assert!(abs.reserve(&k, &rate, 1).await.unwrap().0.is_allowed());
    assert!(!abs.reserve(&k, &rate, 1).await.unwrap().0.is_allowed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_refunds_unsent_and_flushed_units() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("refund_hybrid");
    let rl = limiter(&redis, &prefix, None).await;
    let hy = rl.hybrid().absolute();
    let rate = RateLimit::try_from(0.3).unwrap(); // 3 a window
    let k = key("h");
    rl.hybrid().flush().await.unwrap();
    // Refunded before any flush: never reaches Redis.
    for _ in 0..10 {
        let (d, at) = hy.reserve_sync(&k, &rate, 1).unwrap();
        assert!(d.is_allowed());
        assert_eq!(hy.refund(&k, 1, at).await.unwrap(), 0);
    }
    rl.hybrid().flush().await.unwrap();
    let hash = format!("{}:{{h}}:a:h", prefix.as_str());
    let mut conn = redis.manager().await;
    let total: Option<i64> = conn.hget(&hash, "t").await.unwrap();
    assert_eq!(total.unwrap_or(0), 0, "refunded units were never sent");
    // Flushed, then refunded: given back in Redis.
    let (d, at) = hy.reserve_sync(&k, &rate, 1).unwrap();
    assert!(d.is_allowed());
    rl.hybrid().flush().await.unwrap();
    let total: i64 = conn.hget(&hash, "t").await.unwrap();
    assert_eq!(total, 1);
    assert_eq!(hy.refund(&k, 1, at).await.unwrap(), 0);
    let total: i64 = conn.hget(&hash, "t").await.unwrap();
    assert_eq!(total, 0);
    // The capacity is whole again.
    rl.hybrid().flush().await.unwrap();
    let mut admitted = 0;
    for _ in 0..6 {
        admitted += usize::from(hy.reserve_sync(&k, &rate, 1).unwrap().0.is_allowed());
    }
    assert_eq!(admitted, 3);
}

/// Many tasks reserve at once, each keeping or refunding its unit: the units kept never
/// pass the capacity, and every refunded one frees a place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_keep_more_than_the_capacity() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("refund_conc");
    let rl = Arc::new(limiter(&redis, &prefix, None).await);
    let rate = RateLimit::try_from(2.0).unwrap(); // 20 a window
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let rl = rl.clone();
        tasks.push(tokio::spawn(async move {
            let (k, mut kept) = (key("c"), 0u64);
            for j in 0..25u64 {
                let (d, at) = rl.redis().absolute().reserve(&k, &rate, 1).await.unwrap();
                if !d.is_allowed() {
                    continue;
                }
                tokio::task::yield_now().await;
                // Every third admitted call keeps its unit.
                if (i + j) % 3 == 0 {
                    kept += 1;
                } else {
                    assert_eq!(rl.redis().absolute().refund(&k, 1, at).await.unwrap(), 0);
                }
            }
            kept
        }));
    }
    let mut kept = 0;
    for t in tasks {
        kept += t.await.unwrap();
    }
    let mut conn = redis.manager().await;
    let total: i64 = conn
        .hget(format!("{}:{{c}}:a:h", prefix.as_str()), "t")
        .await
        .unwrap();
    assert!(kept <= 20, "kept {kept}");
    assert_eq!(total as u64, kept, "Redis counts exactly the kept units");
}

/// A set of two limits (3 and 5 a window, both absolute) on two keys.
fn two_limits() -> sluicegate::policy::LimitSet {
    "few = 3 per 10s; more = 5 per 10s".parse().unwrap()
}

#[test]
fn local_set_refunds_give_back_in_every_limit() {
    let clock = ManualClock::new(1_000_000);
    let rl = RateLimiterBuilder::new(local(10, 100))
        .clock(clock.clone())
        .build()
        .unwrap();
    let policy = rl.local().policy(two_limits());
    let keys = ["ip1", "user1"];
    let (d, first) = policy.reserve_each(&keys, 1).unwrap();
    assert!(d.is_allowed());
    clock.advance(3_000);
    for _ in 0..2 {
        assert!(policy.reserve_each(&keys, 1).unwrap().0.is_allowed());
    }
    assert!(!policy.reserve_each(&keys, 1).unwrap().0.is_allowed());
    // The first call's unit goes back in both limits.
    assert_eq!(policy.refund_each(&keys, 1, first).unwrap(), 0);
    let (d, fourth) = policy.reserve_each(&keys, 1).unwrap();
    assert!(d.is_allowed());
    // Limit "more" counted 3 on user1: 2 left, where "few" has none.
    assert_eq!(d.limits()[0].remaining, 0);
    assert_eq!(d.limits()[1].remaining, 2);
    // Units given back from the limits' own buckets: "few" frees one, "more" too.
    assert_eq!(policy.refund_each(&keys, 1, fourth).unwrap(), 0);
    let (d, _) = policy.reserve_each(&keys, 1).unwrap();
    assert_eq!((d.limits()[0].remaining, d.limits()[1].remaining), (0, 2));
    // More than a bucket holds (3 in each limit): the rest is reported, summed.
    assert_eq!(
        policy.refund_each(&keys, 5, fourth).unwrap(),
        4,
        "3 of 5 found in each limit"
    );
    assert!(policy.reserve_each(&keys, 1).unwrap().0.is_allowed());
    // One key for every limit: the same windows.
    let one = rl.local().policy(two_limits());
    let (d, at) = one.reserve("k", 2).unwrap();
    assert!(d.is_allowed());
    assert_eq!(one.refund("k", 2, at), 0);
    assert_eq!(one.check("k", 3).unwrap().limits()[0].remaining, 3);
    // A key never seen, and units whose buckets left the window: nothing found.
    assert_eq!(one.refund("nobody", 1, at), 2);
    clock.advance(20_000);
    assert_eq!(policy.refund_each(&keys, 1, first).unwrap(), 2);
    // One key per limit, or an error.
    assert!(policy.refund_each(&["ip1"], 1, first).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_set_refunds_give_back_in_every_limit() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("refund_set");
    let clock = ManualClock::new(1_000_000);
    let rl = limiter(&redis, &prefix, Some(&clock)).await;
    let policy = rl.redis().policy(two_limits()).unwrap();
    let (ip, user) = (key("ip1"), key("user1"));
    let keys = [&ip, &user];
    let (d, first) = policy.reserve_each(&keys, 1).await.unwrap();
    assert!(d.is_allowed());
    clock.advance(3_000);
    for _ in 0..2 {
        assert!(policy.reserve_each(&keys, 1).await.unwrap().0.is_allowed());
    }
    assert!(!policy.reserve_each(&keys, 1).await.unwrap().0.is_allowed());
    assert_eq!(policy.refund_each(&keys, 1, first).await.unwrap(), 0);
    let mut conn = redis.manager().await;
    let few: i64 = conn
        .hget(format!("{}:{{ip1}}:p:few:h", prefix.as_str()), "t")
        .await
        .unwrap();
    let more: i64 = conn
        .hget(format!("{}:{{user1}}:p:more:h", prefix.as_str()), "t")
        .await
        .unwrap();
    assert_eq!((few, more), (2, 2));
    let (d, _) = policy.reserve_each(&keys, 1).await.unwrap();
    assert!(d.is_allowed());
    assert_eq!((d.limits()[0].remaining, d.limits()[1].remaining), (0, 2));
    // Units whose buckets left the window: nothing found, in either limit.
    clock.advance(20_000);
    assert_eq!(policy.refund_each(&keys, 1, first).await.unwrap(), 2);
    assert!(policy.refund_each(&[&ip], 1, first).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_set_refunds_give_back_unsent_and_flushed_units() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("refund_hset");
    let rl = limiter(&redis, &prefix, None).await;
    let policy = rl.hybrid().policy(two_limits()).unwrap();
    let (ip, user) = (key("ip1"), key("user1"));
    let keys = [&ip, &user];
    rl.hybrid().flush().await.unwrap();
    // Refunded before any flush: never reaches Redis.
    for _ in 0..10 {
        let (d, at) = policy.reserve_each(&keys, 1).unwrap();
        assert!(d.is_allowed());
        assert_eq!(policy.refund_each(&keys, 1, at).await.unwrap(), 0);
        rl.hybrid().flush().await.unwrap();
    }
    let mut conn = redis.manager().await;
    let few_hash = format!("{}:{{ip1}}:p:few:h", prefix.as_str());
    let more_hash = format!("{}:{{user1}}:p:more:h", prefix.as_str());
    let total: Option<i64> = conn.hget(&few_hash, "t").await.unwrap();
    assert_eq!(total.unwrap_or(0), 0, "refunded units were never sent");
    // Flushed, then refunded: given back in Redis, in both limits.
    let (d, at) = policy.reserve_each(&keys, 1).unwrap();
    assert!(d.is_allowed());
    rl.hybrid().flush().await.unwrap();
    let sent: (i64, i64) = (
        conn.hget(&few_hash, "t").await.unwrap(),
        conn.hget(&more_hash, "t").await.unwrap(),
    );
    assert_eq!(sent, (1, 1));
    assert_eq!(policy.refund_each(&keys, 1, at).await.unwrap(), 0);
    let back: (i64, i64) = (
        conn.hget(&few_hash, "t").await.unwrap(),
        conn.hget(&more_hash, "t").await.unwrap(),
    );
    assert_eq!(back, (0, 0));
    // The capacity is whole again: one at a time, each after a flush, 3 fit.
    let mut admitted = 0;
    for _ in 0..6 {
        rl.hybrid().flush().await.unwrap();
        admitted += usize::from(policy.reserve_each(&keys, 1).unwrap().0.is_allowed());
    }
    assert_eq!(admitted, 3);
    assert!(policy.refund_each(&[&ip], 1, at).await.is_err());
}
