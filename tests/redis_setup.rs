//! Setting a limiter up on Redis: the builder's deadline governs every call, and a
//! start-up check finds what would otherwise only show as errors on every request (a missing
//! password, an eviction policy that evicts limiter keys, a server that is down).
#![cfg(feature = "redis-tokio")]

mod support;

use std::time::{Duration, Instant};

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{Error, RateLimit, RateLimitDecision, RateLimiter, RateLimiterBuilder};

fn local() -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    }
}

fn on_client(url: &str, prefix: &RedisKey, deadline: Duration) -> RateLimiter {
    let local = local();
    RateLimiterBuilder::new(local)
        .redis_client(
            redis::Client::open(url).unwrap(),
            support::redis_settings(&local, prefix, SyncIntervalMs::default()),
        )
        .redis_timeout(deadline)
        .build()
        .unwrap()
}

fn on_manager(
    manager: redis::aio::ConnectionManager,
    prefix: &RedisKey,
    deadline: Duration,
) -> RateLimiter {
    let local = local();
    RateLimiterBuilder::new(local)
        .redis_connection(
            manager,
            support::redis_settings(&local, prefix, SyncIntervalMs::default()),
        )
        .redis_timeout(deadline)
        .build()
        .unwrap()
}

/// Pauses every client of `server` for `pause` (the pause ends by itself).
async fn pause_all(url: &str, pause: Duration) {
    let client = redis::Client::open(url).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
}

/// A deadline of 2 s set on the builder governs: a 1 s `CLIENT PAUSE` is waited out, with a
/// connection the builder made (`redis_client`) and with a manager built with
/// `connection_manager_config`. A manager on redis-rs's defaults cuts the same call at its
/// own 500 ms, as the builder's docs say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builders_deadline_governs_a_one_second_pause() {
    const DEADLINE: Duration = Duration::from_secs(2);
    const PAUSE: Duration = Duration::from_secs(1);
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("deadline");
    let key = RedisKey::try_from("d").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap();
    let configured = redis
        .client()
        .get_connection_manager_with_config(sluicegate::redis::connection_manager_config(DEADLINE))
        .await
        .unwrap();
    let limiters = [
        ("redis_client", on_client(redis.url(), &prefix, DEADLINE)),
        (
            "connection_manager_config",
            on_manager(configured, &prefix, DEADLINE),
        ),
    ];
    for (how, rl) in &limiters {
        // Connected and the script loaded before the pause.
        rl.redis().absolute().inc(&key, &rate, 1).await.unwrap();
        pause_all(redis.url(), PAUSE).await;
        let started = Instant::now();
        let decision = rl.redis().absolute().inc(&key, &rate, 1).await;
        let took = started.elapsed();
        assert!(
            matches!(decision, Ok(RateLimitDecision::Allowed)),
            "{how}: {decision:?} after {took:?}"
        );
        assert!(
            took >= PAUSE - Duration::from_millis(100) && took < DEADLINE,
            "{how}: took {took:?}"
        );
        eprintln!("{how}: answered after {took:?} of a {PAUSE:?} pause, deadline {DEADLINE:?}");
    }

    let default_manager = on_manager(redis.manager().await, &prefix, DEADLINE);
    default_manager
        .redis()
        .absolute()
        .inc(&key, &rate, 1)
        .await
        .unwrap();
    pause_all(redis.url(), PAUSE).await;
    let started = Instant::now();
    let err = default_manager
        .redis()
        .absolute()
        .inc(&key, &rate, 1)
        .await
        .unwrap_err();
    let took = started.elapsed();
    match &err {
        Error::Redis(inner) => assert!(inner.is_timeout(), "{err}"),
        other => panic!("a default manager answered {other:?}"),
    }
    assert!(
        took < PAUSE,
        "redis-rs's own timeout ended it after {took:?}"
    );
    // Let the pause end before the server is dropped.
    tokio::time::sleep(PAUSE).await;
}
