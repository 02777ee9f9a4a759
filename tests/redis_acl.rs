//! An ACL user with only what the limiter needs (issue 13, "Security of the setup"): its
//! own key prefix (`~prefix:*`) and no dangerous commands (`-@dangerous`: no `CONFIG`,
//! `FLUSHALL`, `KEYS`, ...), with its username and password in the URL. Both providers
//! decide through it, the start-up check passes with one warning (it cannot read the
//! eviction policy), and the server does hold the user to its prefix.
#![cfg(feature = "redis-tokio")]

mod support;

use std::time::Duration;

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{Error, RateLimit, RateLimiterBuilder};
use support::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_acl_user_runs_both_providers() {
    let server = RedisServer::start();
    let prefix = support::unique_prefix("acl_least");
    {
        let client = redis::Client::open(server.url()).unwrap();
        let mut admin = client.get_connection().unwrap();
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("limiter")
            .arg("on")
            .arg(">limiter-secret")
            .arg(format!("~{}:*", prefix.as_str()))
            .arg("+@all")
            .arg("-@dangerous")
            .query(&mut admin)
            .unwrap();
        // Nobody else gets in without a password.
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("off")
            .query(&mut admin)
            .unwrap();
    }
    let url = format!(
        "redis://limiter:limiter-secret@127.0.0.1:{}/",
        server.port()
    );
    let local = LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    let rl = RateLimiterBuilder::new(local)
        .redis_client(
            redis::Client::open(url.as_str()).unwrap(),
            support::redis_settings(&local, &prefix, SyncIntervalMs::try_from(20).unwrap()),
        )
        .redis_timeout(Duration::from_secs(1))
        .build()
        .unwrap();

    let check = rl.check_redis().await.unwrap();
    assert_eq!(
        check.maxmemory_policy, None,
        "CONFIG is dangerous: not allowed"
    );
    assert_eq!(check.warnings.len(), 1, "{:?}", check.warnings);

    let key = RedisKey::try_from("acl-user").unwrap();
    let rate = RateLimit::try_from(0.5).unwrap(); // 5 per window
    let mut admitted = 0;
    for _ in 0..8 {
        if support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await {
            admitted += 1;
        }
        rl.redis().suppressed().inc(&key, &rate, 1).await.unwrap();
    }
    assert_eq!(admitted, 5);
    let hybrid_key = RedisKey::try_from("acl-hybrid").unwrap();
    assert!(support::admitted(rl.hybrid().absolute().inc(&hybrid_key, &rate, 1)).await);
    rl.hybrid().flush().await.unwrap();
    assert_eq!(
        rl.hybrid().stats().flush_errors,
        0,
        "{:?}",
        rl.hybrid().stats()
    );

    // The server holds the user to its prefix and to safe commands.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut user = client.get_multiplexed_async_connection().await.unwrap();
    let outside: Result<(), _> = redis::cmd("SET")
        .arg("not-the-limiters")
        .arg(1)
        .query_async(&mut user)
        .await;
    assert!(outside.is_err(), "a key outside the prefix was writable");
    let flush: Result<(), _> = redis::cmd("FLUSHALL").query_async(&mut user).await;
    assert!(flush.is_err(), "FLUSHALL was allowed");

    // A wrong password fails the check, naming authentication.
    let wrong = format!("redis://limiter:nope@127.0.0.1:{}/", server.port());
    let rl = RateLimiterBuilder::new(local)
        .redis_client(
            redis::Client::open(wrong.as_str()).unwrap(),
            support::redis_settings(&local, &prefix, SyncIntervalMs::default()),
        )
        .build()
        .unwrap();
    let err = rl.check_redis().await.unwrap_err();
    assert!(matches!(err, Error::RedisAuthentication { .. }), "{err:?}");
}
