//! Redis stopped mid-run: calls fail within the documented deadline, never panic or hang,
//! and the same limiter works again once the server is back on the same port.
#![cfg(feature = "redis-tokio")]

mod support;

use std::time::{Duration, Instant};

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisKey, RedisSettings};
use sluicegate::{Error, RateLimit, RateLimitDecision, RateLimiterBuilder};

const TIMEOUT: Duration = Duration::from_millis(300);
/// What "within the deadline" allows on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(700);

#[tokio::test]
async fn killed_server_gives_bounded_errors_and_a_restart_heals() {
    let mut server = support::RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let manager = client.get_connection_manager().await.unwrap();
    let local = LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    let rl = RateLimiterBuilder::new(local)
        .redis_connection(
            manager,
            RedisSettings {
                prefix: None,
                window_size_seconds: local.window_size_seconds,
                rate_group_size_ms: local.rate_group_size_ms,
                hard_limit_factor: local.hard_limit_factor,
                suppression_factor_cache_ms: local.suppression_factor_cache_ms,
                sync_interval_ms: SyncIntervalMs::default(),
            },
        )
        .redis_timeout(TIMEOUT)
        .build()
        .unwrap();
    let key = RedisKey::try_from("victim").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap(); // 10 a window
    for _ in 0..10 {
        assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    }
    assert!(!support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);

    server.kill();
    let mut errors = 0;
    for i in 0..20 {
        let started = Instant::now();
        let result = if i % 2 == 0 {
            rl.redis().absolute().inc(&key, &rate, 1).await
        } else {
            rl.redis().suppressed().inc(&key, &rate, 1).await
        };
        let took = started.elapsed();
        assert!(
            took <= TIMEOUT + SLACK,
            "call {i} with Redis down took {took:?}, deadline {TIMEOUT:?}"
        );
        match result {
            Err(Error::Redis(_) | Error::RedisTimeout { .. }) => errors += 1,
            other => panic!("call {i} with Redis down answered {other:?}"),
        }
    }
    assert_eq!(errors, 20);

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let decision = loop {
        match rl.redis().absolute().inc(&key, &rate, 1).await {
            Ok(decision) => break decision,
            Err(err) => assert!(
                Instant::now() < deadline,
                "the limiter did not recover within 15 s of the restart: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The restarted server is empty (no persistence): the key starts afresh, scripts are
    // loaded again on NOSCRIPT.
    assert_eq!(decision, RateLimitDecision::Allowed);
    for _ in 0..9 {
        assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    }
    assert!(!support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    assert_eq!(
        rl.redis().suppressed().inc(&key, &rate, 1).await.unwrap(),
        RateLimitDecision::Allowed
    );
}

fn limiter_on(
    manager: redis::aio::ConnectionManager,
    prefix: &RedisKey,
) -> sluicegate::RateLimiter {
    let local = LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    RateLimiterBuilder::new(local)
        .redis_connection(
            manager,
            support::redis_settings(&local, prefix, SyncIntervalMs::default()),
        )
        .redis_timeout(TIMEOUT)
        .build()
        .unwrap()
}

/// A server that is up but does not answer (`CLIENT PAUSE`, as during a failover or a long
/// blocking command): every call ends with `RedisTimeout` at the deadline, and the same
/// limiter answers again once the pause is over.
#[tokio::test]
async fn a_stalled_server_gives_redis_timeout_at_the_deadline() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("stalled");
    let rl = limiter_on(redis.manager().await, &prefix);
    let key = RedisKey::try_from("stalled").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap();
    // Connected and scripts loaded before the pause.
    assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    assert!(support::admitted(rl.redis().suppressed().inc(&key, &rate, 1)).await);

    const PAUSE: Duration = Duration::from_millis(1_500);
    let mut admin = redis.manager().await;
    let paused_at = Instant::now();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE.as_millis() as u64)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut absolute_calls = 1;
    for i in 0..4 {
        let started = Instant::now();
        let result = if i % 2 == 0 {
            absolute_calls += 1;
            rl.redis().absolute().inc(&key, &rate, 1).await
        } else {
            rl.redis().suppressed().inc(&key, &rate, 1).await
        };
        let took = started.elapsed();
        match result {
            Err(Error::RedisTimeout { timeout_ms }) => {
                assert_eq!(timeout_ms, TIMEOUT.as_millis() as u64)
            }
            other => panic!("call {i} on a paused server answered {other:?}"),
        }
        assert!(
            took >= TIMEOUT && took <= TIMEOUT + SLACK,
            "call {i} on a paused server took {took:?}, deadline {TIMEOUT:?}"
        );
    }
    // The pause ends by itself (an `ALL` pause holds `CLIENT UNPAUSE` from another client
    // too). Calls that timed out were still queued on the server and run then: a deadline
    // abandons the wait, not the command. The same limiter answers again within the pause.
    let deadline = paused_at + PAUSE + Duration::from_secs(5);
    loop {
        absolute_calls += 1;
        match rl.redis().absolute().inc(&key, &rate, 1).await {
            Ok(_) => break,
            Err(Error::RedisTimeout { .. }) if Instant::now() < deadline => {}
            Err(err) => panic!("the limiter did not answer after the pause: {err}"),
        }
    }
    assert!(paused_at.elapsed() >= PAUSE, "answered during the pause");
    // Every absolute call made, answered or not, ran on the server (capacity 10).
    let mut conn = redis.manager().await;
    let hash = format!("{}:{{stalled}}:a:h", prefix.as_str());
    let total: u64 = redis::AsyncCommands::hget(&mut conn, &hash, "t")
        .await
        .unwrap();
    assert_eq!(
        total,
        absolute_calls.min(10),
        "{absolute_calls} absolute calls"
    );
}

/// A reply the script never gives: another writer put a factor of 2 in the key's cached
/// factor field (and made the cache live for an hour), so the over-capacity call's script
/// answers it. The provider says so with `UnexpectedReply`, never a factor outside [0, 1].
#[tokio::test]
async fn a_reply_the_script_never_gives_is_unexpected_reply() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("corrupt");
    let rl = limiter_on(redis.manager().await, &prefix);
    let key = RedisKey::try_from("corrupt").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap(); // capacity 10, hard limit 15
    for _ in 0..10 {
        assert_eq!(
            rl.redis().suppressed().inc(&key, &rate, 1).await.unwrap(),
            RateLimitDecision::Allowed
        );
    }
    let mut conn = redis.manager().await;
    let hash = format!("{}:{{corrupt}}:s:h", prefix.as_str());
    let exists: bool = redis::cmd("EXISTS")
        .arg(&hash)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists, "the suppressed state lives in {hash}");
    let far: u64 = 4_000_000_000_000; // ms: year 2096
    let () = redis::cmd("HSET")
        .arg(&hash)
        .arg("sf")
        .arg("2")
        .arg("sfu")
        .arg(far)
        .query_async(&mut conn)
        .await
        .unwrap();
    match rl.redis().suppressed().inc(&key, &rate, 1).await {
        Err(Error::UnexpectedReply(reply)) => {
            assert!(reply.contains("\"2\"") || reply.contains('2'), "{reply}")
        }
        other => panic!("a factor of 2 from Redis answered {other:?}"),
    }
    // The absolute strategy's keys are separate: untouched, it still answers.
    assert_eq!(
        rl.redis().absolute().inc(&key, &rate, 1).await.unwrap(),
        RateLimitDecision::Allowed
    );
}
