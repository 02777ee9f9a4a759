//! Redis Sentinel (issue 13): one master, one replica and three sentinels started by the
//! test on loopback. A limiter built on the sentinel-managed master
//! (`RedisConnection::sentinel`) decides there; when the master is killed and the
//! sentinels promote the replica, decisions continue on it, for the Redis and the hybrid
//! provider, without a new limiter.
#![cfg(feature = "redis-tokio")]

mod support;

use std::time::{Duration, Instant};

use redis::sentinel::{SentinelClient, SentinelServerType};
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisConnection, RedisKey};
use sluicegate::{RateLimit, RateLimitDecision, RateLimiterBuilder};
use support::{RedisServer, SentinelServer};

/// How soon after the sentinels name the new master decisions must work again.
/// Measured 1.06-1.51 s: the rebuild waits for a second of failed calls, then asks the
/// sentinels.
const RECOVERY_BOUND: Duration = Duration::from_millis(2000);

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_continue_on_the_replica_the_sentinels_promote() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_replica_of(master.port());
    let sentinels: Vec<SentinelServer> = (0..3)
        .map(|_| SentinelServer::start(master.port()))
        .collect();
    let (master_port, replica_port) = (master.port(), replica.port());
    let sentinels = tokio::task::spawn_blocking(move || {
        wait_until(
            "the sentinels see the replica and each other",
            Duration::from_secs(20),
            || {
                sentinels.iter().all(|s| {
                    let info = s.master_info();
                    let get = |k: &str| {
                        info.iter()
                            .find(|(f, _)| f == k)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    get("num-slaves") == "1" && get("num-other-sentinels") == "2"
                })
            },
        );
        sentinels
    })
    .await
    .unwrap();

    // A `String`, which redis-rs takes with and without its TLS support (`redis-tls`
    // makes the parameter `impl AsRef<str>`, where clippy calls the copy needless).
    #[allow(clippy::unnecessary_to_owned)]
    let client = SentinelClient::build(
        sentinels.iter().map(SentinelServer::url).collect(),
        SentinelServer::MASTER_NAME.to_owned(),
        None,
        SentinelServerType::Master,
    )
    .unwrap();
    let connection = RedisConnection::sentinel(client).await.unwrap();
    let prefix = support::unique_prefix("sentinel");
    let local = LocalRateLimiterOptions {
        window_size_seconds: 60.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 1.0.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    let rl = RateLimiterBuilder::new(local)
        .redis_connection(
            connection,
            support::redis_settings(&local, &prefix, SyncIntervalMs::try_from(20).unwrap()),
        )
        .build()
        .unwrap();
    let key = RedisKey::try_from("sentinel-key").unwrap();
    let rate = RateLimit::try_from(1.0).unwrap(); // 60 per window

    // On the master: 5 admitted, counted there.
    for _ in 0..5 {
        assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    }
    let hybrid_key = RedisKey::try_from("sentinel-hybrid").unwrap();
    assert!(support::admitted(rl.hybrid().absolute().inc(&hybrid_key, &rate, 1)).await);
    rl.hybrid().flush().await.unwrap();
    // Let the replica copy it, so the failover loses nothing.
    let copied = tokio::task::spawn_blocking(move || {
        wait_until("the replica has the key", Duration::from_secs(5), || {
            let client = redis::Client::open(format!("redis://127.0.0.1:{replica_port}/")).unwrap();
            let mut conn = client.get_connection().unwrap();
            let n: u32 = redis::cmd("DBSIZE").query(&mut conn).unwrap_or(0);
            n >= 2
        });
    });
    copied.await.unwrap();

    master.kill();
    let killed = Instant::now();
    let sentinels = tokio::task::spawn_blocking(move || {
        wait_until(
            "a sentinel names the replica",
            Duration::from_secs(30),
            || {
                sentinels
                    .iter()
                    .any(|s| s.master_port() == Some(replica_port))
            },
        );
        sentinels
    })
    .await
    .unwrap();
    let promoted = Instant::now();
    eprintln!(
        "the sentinels named the replica {} ms after the kill",
        (promoted - killed).as_millis()
    );
    assert_ne!(master_port, replica_port);

    // Decisions come back on the promoted replica, with the usage it copied.
    let mut first_answer = None;
    let deadline = promoted + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(decision) = rl.redis().absolute().inc(&key, &rate, 1).await {
            assert_eq!(decision, RateLimitDecision::Allowed);
            first_answer = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_answer = first_answer.expect("no decision on the promoted replica within 10 s");
    let after = first_answer.saturating_duration_since(promoted);
    eprintln!(
        "first decision {} ms after the sentinels named the replica",
        after.as_millis()
    );
    assert!(
        after <= RECOVERY_BOUND,
        "decisions came back {after:?} after the promotion"
    );
    // 6 counted so far: 54 more fit the window, then the limit holds.
    let mut admitted = 0;
    for _ in 0..60 {
        if support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 54, "the usage copied to the replica still counts");

    // The hybrid refreshes from and flushes to the new master too: a refresh grants a
    // lease (a key without one admits only at its rate), whose units then land there.
    let first = rl
        .hybrid()
        .absolute()
        .inc(&hybrid_key, &rate, 1)
        .await
        .unwrap();
    assert!(first.is_allowed(), "{first:?}");
    let before = rl.hybrid().stats().refreshes;
    let mut refreshed = false;
    for _ in 0..50 {
        let _ = rl.hybrid().flush().await;
        let stats = rl.hybrid().stats();
        if stats.refreshes > before && stats.pending_buckets == 0 {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refreshed,
        "no refresh from the promoted replica: {:?}",
        rl.hybrid().stats()
    );
    for i in 0..3 {
        let decision = rl
            .hybrid()
            .absolute()
            .inc(&hybrid_key, &rate, 1)
            .await
            .unwrap();
        assert!(
            decision.is_allowed(),
            "call {i}: {decision:?}, {:?}",
            rl.hybrid().stats()
        );
    }
    for _ in 0..50 {
        rl.hybrid().flush().await.unwrap();
        if rl.hybrid().stats().pending_buckets == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rl.hybrid().stats().pending_buckets,
        0,
        "{:?}",
        rl.hybrid().stats()
    );
    let client = redis::Client::open(format!("redis://127.0.0.1:{replica_port}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let total: Option<u64> = redis::cmd("HGET")
        .arg(format!(
            "{}:{{{}}}:a:h",
            prefix.as_str(),
            hybrid_key.as_str()
        ))
        .arg("t")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(total, Some(5), "the hybrid's units on the promoted replica");
    drop(sentinels);
    drop(replica);
}
