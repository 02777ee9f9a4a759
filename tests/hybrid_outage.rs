//! The hybrid provider when Redis goes away: decisions go on from local state, unsent
//! increments stay within the memory bound, and once Redis is back each lands exactly once.
//! Each test runs its own `redis-server` so it can kill and restart it.
#![cfg(feature = "redis-tokio")]

mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{RateLimit, RateLimiter, RateLimiterBuilder};
use support::RedisServer;

async fn instance(
    server: &RedisServer,
    prefix: &RedisKey,
    group_ms: u64,
    max_pending: usize,
) -> RateLimiter {
    let client = redis::Client::open(server.url()).unwrap();
    let manager = client.get_connection_manager().await.unwrap();
    let local = LocalRateLimiterOptions {
        window_size_seconds: 60.try_into().unwrap(),
        rate_group_size_ms: group_ms.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    RateLimiterBuilder::new(local)
        .redis_connection(
            manager,
            support::redis_settings(&local, prefix, SyncIntervalMs::try_from(10).unwrap()),
        )
        .redis_timeout(Duration::from_millis(100))
        .hybrid_max_pending_buckets(max_pending)
        .build()
        .unwrap()
}

/// `count` calls, one every `gap`; returns how many were admitted.
async fn calls(rl: &RateLimiter, key: &RedisKey, count: u64, gap: Duration) -> u64 {
    let rate = RateLimit::try_from(1000.0).unwrap(); // capacity 60 000: all fit
    let mut admitted = 0;
    for _ in 0..count {
        if support::admitted(rl.hybrid().absolute().inc(key, &rate, 1)).await {
            admitted += 1;
        }
        tokio::time::sleep(gap).await;
    }
    admitted
}

/// Flushes until nothing is left unsent, or fails after 10 s.
async fn drain(rl: &RateLimiter) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        rl.hybrid().flush().await.unwrap();
        let stats = rl.hybrid().stats();
        let errors = stats.flush_errors;
        rl.hybrid().flush().await.unwrap();
        let stats = rl.hybrid().stats();
        if stats.pending_buckets == 0 && stats.flush_errors == errors {
            return;
        }
        assert!(Instant::now() < deadline, "never drained: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn redis_total(server: &RedisServer, prefix: &RedisKey, key: &str) -> u64 {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let total: Option<u64> = conn
        .hget(format!("{}:{{{key}}}:a:h", prefix.as_str()), "t")
        .await
        .unwrap();
    total.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_go_on_through_a_restart_and_land_exactly_once() {
    let mut server = RedisServer::start();
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let prefix = support::unique_prefix("hybrid_outage");
    let rl = instance(&server, &prefix, 100, 1_000_000).await;
    let key = RedisKey::try_from("o1").unwrap();
    let before = calls(&rl, &key, 100, Duration::from_millis(2)).await;
    drain(&rl).await;
    assert_eq!(before, 100);
    assert_eq!(redis_total(&server, &prefix, "o1").await, 100);

    server.kill();
    let during = calls(&rl, &key, 300, Duration::from_millis(3)).await;
    let stats = rl.hybrid().stats();
    assert_eq!(during, 300, "decisions went on from local state");
    assert!(stats.flush_errors > 0, "{stats:?}");
    assert!(stats.pending_buckets > 0, "{stats:?}");

    server.restart(); // empty: what was flushed before is gone with the old process
    drain(&rl).await;
    let stats = rl.hybrid().stats();
    assert_eq!(
        redis_total(&server, &prefix, "o1").await,
        during,
        "what was admitted during the outage reached Redis exactly once: {stats:?}"
    );
    assert_eq!(stats.units_flushed, before + during, "{stats:?}");
    assert_eq!(stats.units_dropped + stats.units_expired, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_reply_was_lost_is_not_applied_twice() {
    let server = RedisServer::start();
    let prefix = support::unique_prefix("hybrid_lost");
    let rl = instance(&server, &prefix, 100, 1_000_000).await;
    let key = RedisKey::try_from("o2").unwrap();
    let first = calls(&rl, &key, 50, Duration::from_millis(1)).await;
    drain(&rl).await;
    // Writes (scripts included) wait 500 ms on the server: the flush times out at 100 ms
    // and is resent, while the first send is still queued and runs once the pause ends.
    // Pause before the second batch is decided (decisions need no Redis), so the committer
    // cannot deliver it before the pause: whichever flush sends it, background or this one,
    // times out while the send stays queued on the server.
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let errors_before = rl.hybrid().stats().flush_errors;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(500)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let second = calls(&rl, &key, 50, Duration::ZERO).await;
    rl.hybrid().flush().await.unwrap();
    assert!(
        rl.hybrid().stats().flush_errors > errors_before,
        "the flush should have timed out during the pause"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    drain(&rl).await;
    let stats = rl.hybrid().stats();
    assert!(stats.repeats_skipped >= 1, "{stats:?}");
    assert_eq!(
        redis_total(&server, &prefix, "o2").await,
        first + second,
        "{stats:?}"
    );
    // The skipped resend's units count once, as landed by the send whose reply was lost.
    assert_eq!(stats.units_flushed, first + second, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_increments_stay_within_the_memory_bound() {
    let mut server = RedisServer::start();
    let prefix = support::unique_prefix("hybrid_bound");
    // 10 ms buckets, at most 20 held.
    let rl = instance(&server, &prefix, 10, 20).await;
    let key = RedisKey::try_from("o3").unwrap();
    calls(&rl, &key, 5, Duration::from_millis(1)).await;
    drain(&rl).await;
    server.kill();
    let mut admitted = 0;
    let mut peak = 0;
    for _ in 0..20 {
        admitted += calls(&rl, &key, 10, Duration::from_millis(4)).await;
        peak = peak.max(rl.hybrid().stats().pending_buckets);
    }
    let stats = rl.hybrid().stats();
    assert_eq!(admitted, 200);
    // The bound is enforced once a cycle: at most one sync interval's buckets over it.
    assert!(peak <= 20 + 3, "peak {peak}: {stats:?}");
    assert!(stats.units_dropped > 0, "{stats:?}");
    server.restart();
    drain(&rl).await;
    let stats = rl.hybrid().stats();
    assert_eq!(
        redis_total(&server, &prefix, "o3").await,
        admitted - stats.units_dropped,
        "what was not dropped landed, once: {stats:?}"
    );
}
