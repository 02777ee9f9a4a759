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
use support::RedisServer;

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

/// `CONFIG SET name value` on `server` (as its admin, before any password is set).
fn config_set(server: &RedisServer, name: &str, value: &str) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(&mut conn)
        .unwrap();
}

#[tokio::test]
async fn a_server_set_up_as_sluicegate_wants_checks_clean() {
    let server = RedisServer::start();
    let rl = on_client(
        &server.url(),
        &support::unique_prefix("clean"),
        Duration::from_secs(1),
    );
    let check = rl.check_redis().await.unwrap();
    assert_eq!(check.maxmemory_policy.as_deref(), Some("noeviction"));
    assert!(check.is_clean(), "{:?}", check.warnings);
}

/// A server that needs a password the limiter was not given: the check fails, naming
/// authentication, instead of the limiter failing open on every request.
#[tokio::test]
async fn a_missing_password_fails_the_check_naming_authentication() {
    let server = RedisServer::start();
    config_set(&server, "requirepass", "s3cret-for-tests");
    let rl = on_client(
        &server.url(),
        &support::unique_prefix("noauth"),
        Duration::from_secs(1),
    );
    let started = Instant::now();
    let err = rl.check_redis().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::RedisAuthentication { .. }), "{err:?}");
    assert!(err.to_string().contains("authentication"), "{err}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // With the password in the URL the same server checks clean.
    let url = format!("redis://:s3cret-for-tests@127.0.0.1:{}/", server.port());
    let rl = on_client(
        &url,
        &support::unique_prefix("auth"),
        Duration::from_secs(1),
    );
    assert!(rl.check_redis().await.unwrap().is_clean());
}

/// `volatile-lru` evicts sluicegate keys (they all carry TTLs): the check says so.
#[tokio::test]
async fn an_evicting_policy_is_a_warning() {
    let server = RedisServer::start();
    config_set(&server, "maxmemory-policy", "volatile-lru");
    let rl = on_client(
        &server.url(),
        &support::unique_prefix("evict"),
        Duration::from_secs(1),
    );
    let check = rl.check_redis().await.unwrap();
    assert_eq!(check.maxmemory_policy.as_deref(), Some("volatile-lru"));
    assert_eq!(check.warnings.len(), 1, "{:?}", check.warnings);
    let warning = &check.warnings[0];
    assert!(
        warning.contains("volatile-lru") && warning.contains("noeviction"),
        "{warning}"
    );
}

/// An ACL user that may not run `CONFIG`: the check passes with a warning, not an error.
#[tokio::test]
async fn a_user_without_config_rights_gets_a_warning_not_an_error() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("limiter")
        .arg("on")
        .arg(">limiter-pw")
        .arg("~*")
        .arg("+@all")
        .arg("-config")
        .query(&mut conn)
        .unwrap();
    let url = format!("redis://limiter:limiter-pw@127.0.0.1:{}/", server.port());
    let rl = on_client(&url, &support::unique_prefix("acl"), Duration::from_secs(1));
    let check = rl.check_redis().await.unwrap();
    assert_eq!(check.maxmemory_policy, None);
    assert_eq!(check.warnings.len(), 1, "{:?}", check.warnings);
    assert!(
        check.warnings[0].contains("noeviction"),
        "{:?}",
        check.warnings
    );
    // The user decides as usual.
    let key = RedisKey::try_from("acl").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap();
    assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
}

/// Start-up against a server that is down: building does not wait, and the check fails
/// within the deadline (a default `get_connection_manager().await` takes 9.5 s here).
#[tokio::test]
async fn the_check_against_a_down_server_returns_within_the_deadline() {
    const DEADLINE: Duration = Duration::from_millis(1000);
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let started = Instant::now();
    let rl = on_client(&url, &support::unique_prefix("down"), DEADLINE);
    let built = started.elapsed();
    let err = rl.check_redis().await.unwrap_err();
    let took = started.elapsed();
    eprintln!("down server: built in {built:?}, check failed after {took:?}: {err}");
    assert!(
        matches!(err, Error::Redis(_) | Error::RedisTimeout { .. }),
        "{err:?}"
    );
    // The deadline, plus room for a loaded machine.
    assert!(
        took < DEADLINE + Duration::from_millis(300),
        "took {took:?}"
    );
}
