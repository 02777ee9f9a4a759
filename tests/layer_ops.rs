//! The layer's operability in axum over real sockets: shadow mode, exemptions, counting by
//! outcome (concurrently, on every provider), the handler's decision, and Prometheus
//! metrics through the `metrics` facade (the logs are in `layer_ops_logs.rs`). Time is a
//! `ManualClock`; nothing sleeps to move it.
#![cfg(all(feature = "axum", feature = "metrics"))]

#[path = "support/http.rs"]
mod http_support;
mod support;

use http_support::serve;
use std::sync::{Arc, OnceLock};

use axum::routing::{get, post};
use axum::{Extension, Router};
use http::{Method, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sluicegate::layer::{Exemptions, HeaderKey, RateLimitInfo, RateLimitLayer};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{ManualClock, RateLimit, RateLimiter, RateLimiterBuilder};

/// One recorder for the whole test binary, installed before any layer is built.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// The value of the series whose line starts with `series` (exact labels, in order).
fn metric(series: &str) -> f64 {
    let text = prometheus().render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn requests(policy: &str, outcome: &str) -> f64 {
    metric(&format!(
        "sluicegate_requests_total{{policy=\"{policy}\",outcome=\"{outcome}\"}}"
    ))
}

fn limiter(clock: &ManualClock) -> Arc<RateLimiter> {
    http_support::limiter(clock, 10)
}

/// `n` requests a 10 s window.
fn per_window(n: f64) -> RateLimit {
    RateLimit::try_from(n / 10.0).unwrap()
}

#[tokio::test]
async fn shadow_mode_never_refuses_and_counts_would_be_refusals() {
    prometheus();
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::builder(limiter(&clock))
        .rate(per_window(2.0))
        .policy_name("shadow_t")
        .shadow(true)
        .build()
        .unwrap();
    let base = serve(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;
    let client = reqwest::Client::new();
    let mut limit_fields = 0;
    for _ in 0..5 {
        let resp = client.get(&base).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        if let Some(v) = resp.headers().get("ratelimit") {
            assert_eq!(v, "\"shadow_t\";r=0;t=10");
            limit_fields += 1;
        }
    }
    assert_eq!(
        limit_fields, 3,
        "the would-be refusals carry the would-be fields"
    );
    assert_eq!(requests("shadow_t", "allowed"), 2.0);
    assert_eq!(requests("shadow_t", "shadow_rejected"), 3.0);
    assert_eq!(requests("shadow_t", "rejected"), 0.0);
}

#[tokio::test]
async fn exempt_requests_are_neither_limited_nor_counted() {
    prometheus();
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let layer = RateLimitLayer::builder(rl.clone())
        .rate(per_window(1.0))
        .policy_name("exempt_t")
        .key(HeaderKey::new(http::HeaderName::from_static("x-api-key")))
        .exempt(
            Exemptions::new()
                .request(|r| r.method == Method::OPTIONS || r.uri.path() == "/health")
                .key(|k| k.as_str().starts_with("internal_")),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api", get(|| async { "api" }).options(|| async { "" }))
        .route("/health", get(|| async { "up" }))
        .layer(layer);
    let base = serve(app).await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let r = client
            .get(format!("{base}/api"))
            .header("x-api-key", "internal_batch")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = client
            .request(Method::OPTIONS, format!("{base}/api"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "a preflight needs no key");
        let r = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(rl.local().absolute().usage("internal_batch"), 0);
    assert_eq!(requests("exempt_t", "exempt"), 15.0);
    // Others are limited as usual.
    let get = |key: &'static str| {
        client
            .get(format!("{base}/api"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(get("user_1").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        get("user_1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(requests("exempt_t", "rejected"), 1.0);
    // No key at all (and not exempt): a key error.
    let r = client.get(format!("{base}/api")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(requests("exempt_t", "key_error"), 1.0);
}

#[tokio::test]
async fn a_cidr_allowlist_exempts_loopback_peers() {
    prometheus();
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let layer = RateLimitLayer::builder(rl.clone())
        .rate(per_window(1.0))
        .policy_name("cidr_t")
        .exempt(Exemptions::new().cidrs(["127.0.0.0/8".parse().unwrap()]))
        .build()
        .unwrap();
    let base = serve(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;
    for _ in 0..4 {
        let r = reqwest::get(&base).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(requests("cidr_t", "exempt"), 4.0);
    assert_eq!(rl.local().absolute().key_count(), 0, "no key was created");
}

/// `POST /login`: `password=open-sesame` is 200, anything else 401 (after a pause, so
/// many attempts are in flight at once).
fn login_app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route(
            "/login",
            post(|body: String| async move {
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                if body == "password=open-sesame" {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }),
        )
        .layer(layer)
}

async fn attempts(base: &str, n: usize, password: &str) -> Vec<StatusCode> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (client, url, body) = (
            client.clone(),
            format!("{base}/login"),
            format!("password={password}"),
        );
        tasks.push(tokio::spawn(async move {
            client.post(url).body(body).send().await.unwrap().status()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// The login rule on any provider: successes never count, concurrent failures never pass
/// the capacity, and once it is spent every attempt is refused.
async fn login_rule(base: &str) {
    // Ten good logins one after another: none counts. (At once, each holds its unit while
    // in flight: no more than three are in flight together.)
    for _ in 0..10 {
        assert_eq!(attempts(base, 1, "open-sesame").await, [StatusCode::OK]);
    }
    // Twenty bad ones at once: exactly three answered 401, the rest 429.
    let bad = attempts(base, 20, "guess").await;
    assert_eq!(count(&bad, StatusCode::UNAUTHORIZED), 3, "{bad:?}");
    assert_eq!(count(&bad, StatusCode::TOO_MANY_REQUESTS), 17, "{bad:?}");
    // Now even the right password is refused.
    let good = attempts(base, 2, "open-sesame").await;
    assert_eq!(count(&good, StatusCode::TOO_MANY_REQUESTS), 2, "{good:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_logins_count_even_concurrently_local() {
    prometheus();
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let layer = RateLimitLayer::builder(rl.clone())
        .rate(per_window(3.0))
        .policy_name("login_local")
        .count_if(|status, _| status == StatusCode::UNAUTHORIZED)
        .build()
        .unwrap();
    let base = serve(login_app(layer)).await;
    login_rule(&base).await;
    assert_eq!(rl.local().absolute().usage("127.0.0.1"), 3);
    // The window frees the failures: good logins go through again.
    clock.advance(10_100);
    assert_eq!(
        count(&attempts(&base, 3, "open-sesame").await, StatusCode::OK),
        3
    );
    assert_eq!(rl.local().absolute().usage("127.0.0.1"), 0);
    // A local layer decides in memory: no latency summary of its own in a scrape.
    assert!(
        !prometheus()
            .render()
            .contains("sluicegate_decision_duration_seconds{policy=\"login_local\""),
        "a local layer registers no latency histogram"
    );
}

#[cfg(feature = "redis-tokio")]
mod networked {
    use super::*;
    use sluicegate::hybrid::SyncIntervalMs;
    use sluicegate::layer::Provider;

    async fn redis_limiter(
        redis: &support::TestRedis,
        sync_ms: u64,
    ) -> (Arc<RateLimiter>, sluicegate::redis::RedisKey) {
        let local = LocalRateLimiterOptions {
            window_size_seconds: 60.try_into().unwrap(),
            rate_group_size_ms: 100.try_into().unwrap(),
            hard_limit_factor: Default::default(),
            suppression_factor_cache_ms: Default::default(),
        };
        let prefix = support::unique_prefix("login");
        let rl = RateLimiterBuilder::new(local)
            .redis_connection(
                redis.manager().await,
                support::redis_settings(
                    &local,
                    &prefix,
                    SyncIntervalMs::try_from(sync_ms).unwrap(),
                ),
            )
            .build()
            .unwrap();
        (Arc::new(rl), prefix)
    }

    async fn settle_refunds() {
        // Redis refunds run on spawned tasks: give them a moment to land.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    /// The login key's accepted total in Redis.
    async fn counted(redis: &support::TestRedis, prefix: &sluicegate::redis::RedisKey) -> i64 {
        use redis::AsyncCommands;
        let hash = format!("{}:{{127.0.0.1}}:a:h", prefix.as_str());
        let total: Option<i64> = redis.manager().await.hget(hash, "t").await.unwrap();
        total.unwrap_or(0)
    }

    /// Flushes until Redis counts none of the good logins: each one's refund (a spawned task)
    /// has then landed, in memory or in Redis. After a flush a unit not refunded yet is in
    /// Redis; the refund of one that a batch took waits for that batch's cycle.
    async fn good_logins_refunded(
        rl: &RateLimiter,
        redis: &support::TestRedis,
        prefix: &sluicegate::redis::RedisKey,
    ) {
        let started = std::time::Instant::now();
        loop {
            rl.hybrid().flush().await.unwrap();
            if counted(redis, prefix).await == 0 {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "a good login stayed counted: {}",
                counted(redis, prefix).await
            );
            tokio::task::yield_now().await;
        }
        // The refresh after the last refund: a fresh view and lease.
        rl.hybrid().flush().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_failed_logins_count_even_concurrently_redis() {
        prometheus();
        let redis = support::TestRedis::get();
        let (rl, _) = redis_limiter(&redis, 10).await;
        let layer = RateLimitLayer::builder(rl.clone())
            .rate(RateLimit::try_from(3.0 / 60.0).unwrap())
            .provider(Provider::Redis)
            .policy_name("login_redis")
            .count_if(|status, _| status == StatusCode::UNAUTHORIZED)
            .build()
            .unwrap();
        let base = serve(login_app(layer)).await;
        for _ in 0..10 {
            assert_eq!(attempts(&base, 1, "open-sesame").await, [StatusCode::OK]);
            settle_refunds().await;
        }
        let bad = attempts(&base, 20, "guess").await;
        assert_eq!(count(&bad, StatusCode::UNAUTHORIZED), 3, "{bad:?}");
        settle_refunds().await;
        let good = attempts(&base, 2, "open-sesame").await;
        assert_eq!(count(&good, StatusCode::TOO_MANY_REQUESTS), 2, "{good:?}");
        // Redis latency is in the histogram.
        assert!(
            metric(
                "sluicegate_decision_duration_seconds_count{policy=\"login_redis\",provider=\"redis\"}"
            ) >= 32.0
        );
    }

    /// The login rule on the hybrid provider with the committer cycling every `sync_ms`:
    /// ten good logins, each refunded (in memory, or in Redis after its batch's cycle),
    /// then twenty bad ones at once. Returns how many of them were admitted (401).
    async fn hybrid_login_rule(sync_ms: u64, policy: &'static str) -> usize {
        prometheus();
        let redis = support::TestRedis::get();
        let (rl, prefix) = redis_limiter(&redis, sync_ms).await;
        let layer = RateLimitLayer::builder(rl.clone())
            .rate(RateLimit::try_from(3.0 / 60.0).unwrap())
            .provider(Provider::Hybrid)
            .policy_name(policy)
            .count_if(|status, _| status == StatusCode::UNAUTHORIZED)
            .build()
            .unwrap();
        let base = serve(login_app(layer)).await;
        rl.hybrid().flush().await.unwrap();
        for _ in 0..10 {
            assert_eq!(attempts(&base, 1, "open-sesame").await, [StatusCode::OK]);
            good_logins_refunded(&rl, &redis, &prefix).await;
        }
        let bad = attempts(&base, 20, "guess").await;
        let failed = count(&bad, StatusCode::UNAUTHORIZED);
        // Never more counted outcomes admitted than the capacity.
        assert!(failed <= 3, "{bad:?}");
        assert_eq!(failed + count(&bad, StatusCode::TOO_MANY_REQUESTS), 20);
        rl.hybrid().flush().await.unwrap();
        assert_eq!(
            counted(&redis, &prefix).await,
            failed as i64,
            "each 401 counted once"
        );
        if failed == 3 {
            let good = attempts(&base, 2, "open-sesame").await;
            assert_eq!(count(&good, StatusCode::TOO_MANY_REQUESTS), 2, "{good:?}");
        }
        // Hybrid decisions are taken in memory: no latency summary.
        assert!(
            !prometheus().render().contains(&format!(
                "sluicegate_decision_duration_seconds{{policy=\"{policy}\""
            )),
            "a hybrid layer registers no latency histogram"
        );
        failed
    }

    /// The committer every 10 ms races the logins, their refunds and the bad burst: a lease
    /// may run out or a refresh come late, which only ever admits fewer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_failed_logins_count_even_concurrently_hybrid() {
        hybrid_login_rule(10, "login_hybrid").await;
    }

    /// With the committer a second apart (a lease lives 10 s) the explicit flushes decide
    /// what Redis holds: the burst meets a lease of exactly the 3 left, and the capacity is
    /// spent for the good logins too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_failed_logins_count_exactly_hybrid() {
        assert_eq!(hybrid_login_rule(1000, "login_hybrid_exact").await, 3);
    }
}

#[tokio::test]
async fn the_handler_reads_the_decision() {
    prometheus();
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::builder(limiter(&clock))
        .rate(per_window(3.0))
        .policy_name("ext_t")
        .decision_extension(true)
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/",
            get(|Extension(info): Extension<RateLimitInfo>| async move {
                format!(
                    "{} {:?} {} {}",
                    info.policy, info.remaining, info.suppression_factor, info.exempt
                )
            }),
        )
        .layer(layer);
    let base = serve(app).await;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(reqwest::get(&base).await.unwrap().text().await.unwrap());
    }
    assert_eq!(
        bodies,
        [
            "ext_t Some(2) 0 false",
            "ext_t Some(1) 0 false",
            "ext_t Some(0) 0 false"
        ]
    );
    // The third used 3 of 3: near the limit (and so was the second, 2 of 3 < 80 %? no).
    assert_eq!(metric("sluicegate_near_limit_total{policy=\"ext_t\"}"), 1.0);
}
