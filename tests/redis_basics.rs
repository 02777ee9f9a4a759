//! The Redis provider against a real server: production time (`TIME`), TTLs, hash tags,
//! prefixes, NOSCRIPT recovery, bounded state, and the error when Redis is not configured.
#![cfg(feature = "redis-tokio")]

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisKey, RedisRateLimiterOptions};
use sluicegate::{
    Error, ManualClock, RateLimit, RateLimitDecision, RateLimiter, RateLimiterBuilder,
    RateLimiterOptions,
};

fn local(window_s: u64, group_ms: u64) -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: window_s.try_into().unwrap(),
        rate_group_size_ms: group_ms.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    }
}

fn options(
    manager: redis::aio::ConnectionManager,
    prefix: &RedisKey,
    window_s: u64,
    group_ms: u64,
) -> RateLimiterOptions {
    let local = local(window_s, group_ms);
    RateLimiterOptions {
        local,
        redis: RedisRateLimiterOptions {
            connection_manager: manager,
            prefix: Some(prefix.clone()),
            window_size_seconds: local.window_size_seconds,
            rate_group_size_ms: local.rate_group_size_ms,
            hard_limit_factor: local.hard_limit_factor,
            suppression_factor_cache_ms: local.suppression_factor_cache_ms,
            sync_interval_ms: SyncIntervalMs::default(),
        },
    }
}

fn key(name: &str) -> RedisKey {
    RedisKey::try_from(name).unwrap()
}

/// A builder on the test's Redis, under `prefix`, whose scripts read `clock` instead of the
/// server's `TIME`.
async fn on_clock(
    redis: &support::TestRedis,
    prefix: &RedisKey,
    local: LocalRateLimiterOptions,
    clock: &ManualClock,
) -> RateLimiterBuilder {
    RateLimiterBuilder::new(local)
        .redis_connection(
            redis.manager().await,
            support::redis_settings(&local, prefix, SyncIntervalMs::default()),
        )
        .redis_time_from_clock_for_tests_only(clock.clone())
}

#[tokio::test]
async fn without_redis_options_every_call_is_a_clear_error() {
    let rl = RateLimiterBuilder::new(local(10, 100)).build().unwrap();
    let rate = RateLimit::try_from(1.0).unwrap();
    assert!(!rl.redis().is_configured());
    let err = rl
        .redis()
        .absolute()
        .inc(&key("k"), &rate, 1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RedisNotConfigured), "{err:?}");
    assert!(err.to_string().contains("RedisRateLimiterOptions"), "{err}");
    assert!(matches!(
        rl.redis()
            .suppressed()
            .get_suppression_factor(&key("k"))
            .await,
        Err(Error::RedisNotConfigured)
    ));
    // The local provider is unaffected.
    assert!(rl.local().absolute().inc("k", &rate, 1).is_allowed());
}

#[tokio::test]
async fn server_time_drives_the_window() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("time");
    let rl = RateLimiter::new(options(redis.manager().await, &prefix, 1, 100));
    let rate = RateLimit::try_from(3.0).unwrap();
    let k = key("user");
    for _ in 0..3 {
        assert_eq!(
            rl.redis().absolute().inc(&k, &rate, 1).await.unwrap(),
            RateLimitDecision::Allowed
        );
    }
    let RateLimitDecision::Rejected {
        window_size_seconds,
        retry_after_ms,
        remaining_after_waiting,
    } = rl.redis().absolute().inc(&k, &rate, 1).await.unwrap()
    else {
        panic!("a fourth call in a 3-per-second window must be rejected");
    };
    assert_eq!(window_size_seconds, 1);
    assert_eq!(remaining_after_waiting, 0);
    // A bucket counts for at least the window and at most one group more.
    assert!(
        (800..=1100).contains(&retry_after_ms),
        "retry_after_ms {retry_after_ms}"
    );
    tokio::time::sleep(Duration::from_millis(retry_after_ms + 30)).await;
    assert_eq!(
        rl.redis().absolute().inc(&k, &rate, 1).await.unwrap(),
        RateLimitDecision::Allowed,
        "after waiting retry_after_ms the call is admitted"
    );
}

#[tokio::test]
async fn every_key_written_has_a_ttl_within_window_plus_group_and_one_hash_tag() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("ttl");
    let rl = RateLimiter::new(options(redis.manager().await, &prefix, 3, 250));
    let rate = RateLimit::try_from(10.0).unwrap();
    // Calls in two groups, so each key has a closed bucket (in its list) and an open one.
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(260)).await;
        }
        for name in ["a", "b", "c"] {
            for _ in 0..3 {
                assert!(support::admitted(rl.redis().absolute().inc(&key(name), &rate, 1)).await);
                assert!(support::admitted(rl.redis().suppressed().inc(&key(name), &rate, 1)).await);
            }
        }
    }
    let mut conn = redis.manager().await;
    let mut names: Vec<String> = conn.keys(format!("{prefix}:*")).await.unwrap();
    names.sort();
    assert_eq!(
        names.len(),
        12,
        "two keys per limiter key and strategy: {names:?}"
    );
    for name in &names {
        let ttl: i64 = conn.pttl(name).await.unwrap();
        assert!(
            ttl > 0 && ttl <= 3000 + 250,
            "{name} has TTL {ttl} ms, want (0, window + group]"
        );
        let tag = name.split_once('{').unwrap().1.split_once('}').unwrap().0;
        assert!(["a", "b", "c"].contains(&tag), "{name}");
        assert!(name.starts_with(&format!("{prefix}:{{{tag}}}:")), "{name}");
    }
    assert_eq!(rl.redis().prefix(), Some(prefix.as_str()));
}

#[tokio::test]
async fn prefixes_and_strategies_keep_separate_state() {
    let redis = support::TestRedis::get();
    let one = RateLimiter::new(options(
        redis.manager().await,
        &support::unique_prefix("app1"),
        10,
        100,
    ));
    let two = RateLimiter::new(options(
        redis.manager().await,
        &support::unique_prefix("app2"),
        10,
        100,
    ));
    let rate = RateLimit::try_from(0.2).unwrap(); // 2 per window
    let k = key("shared_name");
    assert!(support::admitted(one.redis().absolute().inc(&k, &rate, 2)).await);
    assert!(!support::admitted(one.redis().absolute().inc(&k, &rate, 1)).await);
    assert!(support::admitted(two.redis().absolute().inc(&k, &rate, 2)).await);
    assert_eq!(
        one.redis().suppressed().inc(&k, &rate, 2).await.unwrap(),
        RateLimitDecision::Allowed,
        "the suppressed strategy has its own keys"
    );
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded() {
    let redis = support::TestRedis::get();
    let rl = RateLimiter::new(options(
        redis.manager().await,
        &support::unique_prefix("noscript"),
        10,
        100,
    ));
    let rate = RateLimit::try_from(1.0).unwrap();
    let k = key("k");
    assert!(support::admitted(rl.redis().absolute().inc(&k, &rate, 4)).await);
    let mut conn = redis.manager().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(support::admitted(rl.redis().absolute().inc(&k, &rate, 6)).await);
    assert!(!support::admitted(rl.redis().absolute().inc(&k, &rate, 1)).await);
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        rl.redis()
            .suppressed()
            .get_suppression_factor(&k)
            .await
            .unwrap(),
        0.0
    );
}

#[tokio::test]
async fn state_stays_bounded_however_long_a_key_lives() {
    // 2 ms groups in a 2 s window: at most 1001 live buckets, whatever the history. (The
    // TTLs run in real time, about 2 s from each write, which this loop keeps refreshing.)
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("bounded");
    let clock = ManualClock::new(1_000_000);
    let local = local(2, 2);
    let rl = on_clock(&redis, &prefix, local, &clock)
        .await
        .build()
        .unwrap();
    let rate = RateLimit::try_from(100_000.0).unwrap();
    let k = key("busy");
    for _ in 0..3000 {
        clock.advance(1);
        assert!(support::admitted(rl.redis().absolute().inc(&k, &rate, 1)).await);
        assert!(support::admitted(rl.redis().suppressed().inc(&k, &rate, 1)).await);
    }
    let mut conn = redis.manager().await;
    for strategy in ["a", "s"] {
        let list = format!("{prefix}:{{busy}}:{strategy}:b");
        let hash = format!("{prefix}:{{busy}}:{strategy}:h");
        // The open bucket lives in the hash, the closed ones in the list.
        let buckets: usize = conn.llen(&list).await.unwrap();
        let fields: usize = conn.hlen(&hash).await.unwrap();
        assert!((999..=1000).contains(&buckets), "{list}: {buckets} buckets");
        assert!(fields <= 10, "{hash}: {fields} fields");
    }
    // A long idle gap drops the whole state at once.
    clock.advance(60_000);
    assert!(support::admitted(rl.redis().absolute().inc(&k, &rate, 1)).await);
    let buckets: usize = conn.llen(format!("{prefix}:{{busy}}:a:b")).await.unwrap();
    assert_eq!(buckets, 0, "only the open bucket is left");
    let total: u64 = conn
        .hget(format!("{prefix}:{{busy}}:a:h"), "t")
        .await
        .unwrap();
    assert_eq!(total, 1, "the running total restarts with the window");
}

/// Always the same draw, so the Redis provider (one draw per call) and the local one (a draw
/// only when the decision is probabilistic) decide alike.
#[derive(Debug)]
struct Constant(f64);

impl sluicegate::RandomSource for Constant {
    fn next_f64(&self) -> f64 {
        self.0
    }
}

#[tokio::test]
async fn long_histories_decide_as_the_local_provider_does() {
    // 5 ms groups in a 2 s window: the last second spans 200 buckets and the window 400, so
    // the factor's walk of the last second and a rejection's walk of the oldest buckets go
    // through many chunks of the bucket list. At every step both providers must agree.
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("history");
    let clock = ManualClock::new(5_000_000);
    let local = local(2, 5);
    let rl = on_clock(&redis, &prefix, local, &clock)
        .await
        .clock(clock.clone())
        .random(Constant(0.4))
        .build()
        .unwrap();
    let rate = RateLimit::try_from(100.0).unwrap(); // capacity 200
    let k = key("long");
    let mut suppressed_steps = 0;
    let mut rejected_steps = 0;
    // 125/s, then 400/s (over the hard limit), then 125/s again; a call every 8 or 2.5 ms.
    for step in 0..2_400u64 {
        let gap = if (800..1_600).contains(&step) { 2 } else { 8 };
        clock.advance(gap + step % 2);
        if step % 50 == 0 {
            // A large call's wait walks as many buckets as it needs freed; first in its
            // step, it also expires what expired since the last call, and is refused.
            let big = rl.local().absolute().inc(k.as_str(), &rate, 150);
            let redis_big = rl.redis().absolute().inc(&k, &rate, 150).await.unwrap();
            assert_eq!(big, redis_big, "absolute, 150 units, step {step}");
            assert_eq!(
                rl.local().suppressed().get_suppression_factor(k.as_str()),
                rl.redis()
                    .suppressed()
                    .get_suppression_factor(&k)
                    .await
                    .unwrap(),
                "factor, step {step}"
            );
        }
        let local_sup = rl.local().suppressed().inc(k.as_str(), &rate, 1);
        let redis_sup = rl.redis().suppressed().inc(&k, &rate, 1).await.unwrap();
        assert_eq!(local_sup, redis_sup, "suppressed, step {step}");
        if matches!(local_sup, RateLimitDecision::Suppressed { .. }) {
            suppressed_steps += 1;
        }
        let local_abs = rl.local().absolute().inc(k.as_str(), &rate, 1);
        let redis_abs = rl.redis().absolute().inc(&k, &rate, 1).await.unwrap();
        assert_eq!(local_abs, redis_abs, "absolute, step {step}");
        if !local_abs.is_allowed() {
            rejected_steps += 1;
        }
    }
    assert!(
        suppressed_steps > 500,
        "{suppressed_steps} suppressed steps"
    );
    assert!(rejected_steps > 500, "{rejected_steps} rejected steps");
}

/// The support code's own check: the server a test talks to is the one it started (by
/// process id), and a second server on a port that is already taken is refused, not
/// silently shared.
#[test]
fn test_servers_are_checked_to_be_our_own() {
    let ours = support::RedisServer::start();
    assert_eq!(ours.answering_pid(), ours.pid());
    let err = support::RedisServer::try_start_on(ours.port())
        .err()
        .expect("a second server on a taken port is refused");
    assert!(err.contains("not ours") || err.contains("exited"), "{err}");
    assert!(
        ours.log().contains("Ready to accept connections"),
        "{}",
        ours.log()
    );
}
