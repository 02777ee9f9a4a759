//! The circuit breaker: with Redis known down, calls fail at once (not at the deadline), one
//! background probe finds Redis again, and decisions go back to it soon after its return.
//! Each test runs its own `redis-server` so it can kill and restart it.
#![cfg(feature = "redis-tokio")]

mod support;

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{RateLimit, RateLimitDecision, RateLimiter, RateLimiterBuilder};
use support::RedisServer;

const DEADLINE: Duration = Duration::from_millis(1000);

fn local() -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    }
}

/// A manager configured for the limiter's deadline: it reconnects quickly (at most 100 ms
/// between attempts) and leaves the deadline to the limiter.
async fn quick_manager(server: &RedisServer) -> ConnectionManager {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection_manager_with_config(sluicegate::redis::connection_manager_config(DEADLINE))
        .await
        .unwrap()
}

fn limiter(manager: ConnectionManager, prefix: &RedisKey) -> RateLimiter {
    let local = local();
    RateLimiterBuilder::new(local)
        .redis_connection(
            manager,
            support::redis_settings(&local, prefix, SyncIntervalMs::default()),
        )
        .redis_timeout(DEADLINE)
        .build()
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_fast_and_a_restart_is_noticed_within_a_second() {
    let mut server = RedisServer::start();
    let prefix = support::unique_prefix("breaker");
    let rl = limiter(quick_manager(&server).await, &prefix);
    let key = RedisKey::try_from("b1").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap(); // 10 a window
    for _ in 0..10 {
        assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    }
    assert!(!support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);

    // Down: within the first second a call says Redis is unavailable without trying it.
    server.kill();
    let killed = Instant::now();
    let opened = loop {
        let err = rl.redis().absolute().inc(&key, &rate, 1).await.unwrap_err();
        if err.is_redis_unavailable() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "the breaker did not open within 1 s of the kill; last error: {err}"
        );
    };
    let mut took = Vec::with_capacity(200);
    for i in 0..200 {
        let started = Instant::now();
        let result = if i % 2 == 0 {
            rl.redis().absolute().inc(&key, &rate, 1).await
        } else {
            rl.redis().suppressed().inc(&key, &rate, 1).await
        };
        took.push(started.elapsed());
        let err = result.expect_err("Redis is down");
        assert!(err.is_redis_unavailable(), "call {i}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("unavailable") && text.contains("Check that the server is up"),
            "{text}"
        );
    }
    took.sort();
    let (p50, p99, max) = (percentile(&took, 0.5), percentile(&took, 0.99), took[199]);
    eprintln!(
        "breaker open after {opened:?}; 200 calls while down: p50 {p50:?} p99 {p99:?} max {max:?}"
    );
    // The target is 10 ms; 50 ms leaves room for a loaded 2-core machine, and is still 20
    // times below the deadline every call waited before the breaker.
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");

    // Back: decisions come from Redis again (the restarted server is empty, so the key
    // starts afresh) within about a second.
    server.restart();
    let restarted = Instant::now();
    loop {
        match rl.redis().absolute().inc(&key, &rate, 1).await {
            Ok(decision) => {
                assert_eq!(decision, RateLimitDecision::Allowed);
                break;
            }
            Err(err) => assert!(
                restarted.elapsed() < Duration::from_secs(3),
                "not back within 3 s of the restart: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recovered = restarted.elapsed();
    eprintln!("decisions from Redis again {recovered:?} after the restart");
    for _ in 0..9 {
        assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    }
    assert!(!support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
}

/// The hybrid committer shares the breaker: while Redis is down its flushes fail at once
/// (counted, increments kept), and once the probe hears from Redis they land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hybrid_committer_keeps_its_increments_through_an_open_breaker() {
    let mut server = RedisServer::start();
    let prefix = support::unique_prefix("breaker_hybrid");
    let local = local();
    let rl = RateLimiterBuilder::new(local)
        .redis_connection(
            quick_manager(&server).await,
            support::redis_settings(&local, &prefix, SyncIntervalMs::try_from(10).unwrap()),
        )
        .redis_timeout(DEADLINE)
        .build()
        .unwrap();
    let key = RedisKey::try_from("h1").unwrap();
    let rate = RateLimit::try_from(1000.0).unwrap();
    for _ in 0..10 {
        assert!(support::admitted(rl.hybrid().absolute().inc(&key, &rate, 1)).await);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while rl.hybrid().stats().pending_buckets > 0 {
        assert!(Instant::now() < deadline, "{:?}", rl.hybrid().stats());
        rl.hybrid().flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let landed_before = rl.hybrid().stats().units_flushed;
    server.kill();
    // Open the breaker through the Redis provider.
    let killed = Instant::now();
    while !rl
        .redis()
        .absolute()
        .inc(&key, &rate, 1)
        .await
        .unwrap_err()
        .is_redis_unavailable()
    {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "breaker never opened"
        );
    }
    let mut admitted = 0;
    for _ in 0..100 {
        if support::admitted(rl.hybrid().absolute().inc(&key, &rate, 1)).await {
            admitted += 1;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(admitted > 0);
    let started = Instant::now();
    rl.hybrid().flush().await.unwrap();
    let flush_took = started.elapsed();
    let stats = rl.hybrid().stats();
    assert!(stats.flush_errors > 0, "{stats:?}");
    assert!(
        flush_took < DEADLINE / 2,
        "a flush against an open breaker took {flush_took:?}"
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        rl.hybrid().flush().await.unwrap();
        if rl.hybrid().stats().pending_buckets == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", rl.hybrid().stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let total: Option<u64> =
        redis::AsyncCommands::hget(&mut conn, format!("{}:{{h1}}:a:h", prefix.as_str()), "t")
            .await
            .unwrap();
    // The restarted server is empty: what lands there is everything not landed before the
    // kill, once.
    let stats = rl.hybrid().stats();
    assert_eq!(stats.units_flushed, 10 + admitted, "{stats:?}");
    assert_eq!(total, Some(10 + admitted - landed_before), "{stats:?}");
}

/// A server that accepts connections but does not answer (`CLIENT PAUSE`) is waited out at
/// the deadline for `STALL_OPENS_AFTER`, then counts as down (calls fail at once), and calls
/// go to Redis again once the pause ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stall_opens_the_breaker_after_two_seconds() {
    const SHORT: Duration = Duration::from_millis(300);
    const PAUSE: Duration = Duration::from_millis(4_000);
    let server = RedisServer::start();
    let prefix = support::unique_prefix("breaker_stall");
    let local = local();
    let rl = RateLimiterBuilder::new(local)
        .redis_connection(
            quick_manager(&server).await,
            support::redis_settings(&local, &prefix, SyncIntervalMs::default()),
        )
        .redis_timeout(SHORT)
        .build()
        .unwrap();
    let key = RedisKey::try_from("s1").unwrap();
    let rate = RateLimit::try_from(100.0).unwrap();
    assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE.as_millis() as u64)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let paused = Instant::now();
    let opened = loop {
        match rl.redis().absolute().inc(&key, &rate, 1).await {
            Err(err) if err.is_redis_unavailable() => break paused.elapsed(),
            Err(sluicegate::Error::RedisTimeout { .. }) => {}
            other => panic!("during the pause: {other:?}"),
        }
        assert!(paused.elapsed() < PAUSE, "the breaker never opened");
    };
    assert!(
        opened >= sluicegate::redis::STALL_OPENS_AFTER,
        "opened after {opened:?}"
    );
    let started = Instant::now();
    for _ in 0..20 {
        let err = rl.redis().absolute().inc(&key, &rate, 1).await.unwrap_err();
        assert!(err.is_redis_unavailable(), "{err}");
    }
    let twenty = started.elapsed();
    assert!(
        twenty < Duration::from_millis(100),
        "20 calls took {twenty:?}"
    );
    // After the pause, Redis decides again.
    loop {
        match rl.redis().absolute().inc(&key, &rate, 1).await {
            Ok(_) => break,
            Err(err) => assert!(
                paused.elapsed() < PAUSE + Duration::from_secs(2),
                "not back within 2 s of the pause's end: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = paused.elapsed();
    eprintln!(
        "stall: breaker open after {opened:?}, Redis decides again {back:?} after the pause began ({PAUSE:?})"
    );
    assert!(
        back >= PAUSE - Duration::from_millis(50),
        "back after {back:?}"
    );
}
