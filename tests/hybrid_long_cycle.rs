//! The hybrid provider's lost-data check (`floor_to_own` in src/hybrid/mode.rs) against a
//! real Redis that lost nothing: no refresh may report "Redis holds less usage than this
//! instance admitted", neither after an ordinary cycle nor after one slower than the sync
//! interval and the lease (Redis paused for writes while calls go on). The bench
//! `benches/committer.rs` logged that warning 449 times on a Redis never flushed: the
//! absolute strategy's own record counted its admissions as observed too, while the flush
//! script reports observed usage only for the suppressed strategy (0 for an absolute key),
//! so every refresh of an absolute key with acknowledged units in its window tripped it.
//! Each test runs its own `redis-server` and captures the provider's log.
#![cfg(feature = "redis-tokio")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{RateLimit, RateLimiter, RateLimiterBuilder};
use support::RedisServer;

/// The warning `floor_to_own`'s callers log when Redis holds less than this instance admitted.
const LOST: &str = "Redis holds less usage than this instance admitted";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn warnings(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .take(5)
            .map(str::to_owned)
            .collect()
    }

    fn lost_alarms(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .filter(|l| l.contains(LOST))
            .map(str::to_owned)
            .collect()
    }
}

/// Captures this thread's log (the tests run on a current-thread runtime, so the committer
/// task logs here too).
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

/// The bench's settings: a 600 s window of 1000 ms groups, a 50 ms sync interval (so a
/// 500 ms lease); a deadline well past the pause below, so no flush fails.
async fn instance(server: &RedisServer, prefix: &RedisKey) -> RateLimiter {
    let client = redis::Client::open(server.url()).unwrap();
    let deadline = Duration::from_secs(10);
    let manager = client
        .get_connection_manager_with_config(sluicegate::redis::connection_manager_config(deadline))
        .await
        .unwrap();
    let local = LocalRateLimiterOptions {
        window_size_seconds: 600.try_into().unwrap(),
        rate_group_size_ms: 1000.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    RateLimiterBuilder::new(local)
        .redis_connection(
            manager,
            support::redis_settings(&local, prefix, SyncIntervalMs::try_from(50).unwrap()),
        )
        .redis_timeout(deadline)
        .build()
        .unwrap()
}

/// 100/s over 600 s: capacity 60 000, so every call of these tests fits.
fn rate() -> RateLimit {
    RateLimit::try_from(100.0).unwrap()
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

#[tokio::test(flavor = "current_thread")]
async fn a_refresh_of_an_absolute_key_redis_counted_in_full_is_no_loss() {
    let (log, _guard) = capture();
    let server = RedisServer::start();
    let prefix = support::unique_prefix("long_cycle_plain");
    let rl = instance(&server, &prefix).await;
    let key = RedisKey::try_from("plain").unwrap();
    // One unit and a refresh: a lease to admit the next ten on.
    assert!(support::admitted(rl.hybrid().absolute().inc(&key, &rate(), 1)).await);
    rl.hybrid().flush().await.unwrap();
    for _ in 0..10 {
        assert!(support::admitted(rl.hybrid().absolute().inc(&key, &rate(), 1)).await);
    }
    rl.hybrid().flush().await.unwrap();
    rl.hybrid().flush().await.unwrap();
    let stats = rl.hybrid().stats();
    assert_eq!(
        redis_total(&server, &prefix, "plain").await,
        11,
        "{stats:?}"
    );
    assert_eq!(stats.flush_errors, 0, "{stats:?}");
    assert_eq!(
        log.lost_alarms(),
        Vec::<String>::new(),
        "Redis holds all 11 units: nothing was lost ({stats:?})"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_cycle_slower_than_the_lease_with_calls_during_it_is_no_loss() {
    let (log, _guard) = capture();
    let server = RedisServer::start();
    let prefix = support::unique_prefix("long_cycle_slow");
    let rl = instance(&server, &prefix).await;
    let rate = rate();
    let keys: Vec<RedisKey> = (0..1500)
        .map(|i| RedisKey::try_from(format!("k{i}")).unwrap())
        .collect();
    let live = &keys[..20];
    // Every key gets a unit and a lease first (three pipelines a cycle).
    for key in &keys {
        assert!(support::admitted(rl.hybrid().absolute().inc(key, &rate, 1)).await);
    }
    rl.hybrid().flush().await.unwrap();
    let mut admitted = vec![1u64; keys.len()];
    for key in &keys {
        assert!(support::admitted(rl.hybrid().absolute().inc(key, &rate, 1)).await);
    }
    admitted.iter_mut().for_each(|n| *n += 1);
    // Redis holds every write for 1.2 s (over twice the 500 ms lease, 24 sync intervals):
    // the cycle started now sends its pipelines into the pause while the live keys are
    // called on, their units admitted while their batch and its reply are queued.
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1200)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let started = Instant::now();
    let flush = async { rl.hybrid().flush().await.unwrap() };
    let calls = async {
        while started.elapsed() < Duration::from_millis(1500) {
            for (i, key) in live.iter().enumerate() {
                if support::admitted(rl.hybrid().absolute().inc(key, &rate, 1)).await {
                    admitted[i] += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::join!(flush, calls);
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "the cycle waited out the pause"
    );
    // Two more cycles: what the live keys admitted during the slow one lands too.
    rl.hybrid().flush().await.unwrap();
    rl.hybrid().flush().await.unwrap();
    let stats = rl.hybrid().stats();
    let warnings = log.warnings();
    assert_eq!(stats.flush_errors, 0, "{stats:?} {warnings:?}");
    assert_eq!(stats.units_dropped, 0, "{stats:?}");
    for (i, name) in [0usize, 19, 20, 1499]
        .into_iter()
        .map(|i| (i, format!("k{i}")))
    {
        assert_eq!(
            redis_total(&server, &prefix, &name).await,
            admitted[i],
            "{name}: Redis counts what was admitted ({stats:?})"
        );
    }
    assert_eq!(
        log.lost_alarms(),
        Vec::<String>::new(),
        "Redis lost nothing ({stats:?})"
    );
}
