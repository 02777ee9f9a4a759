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
