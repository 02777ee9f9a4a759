//! `RateLimitLayer` on the Redis and hybrid providers, chosen by configuration, against a
//! real `redis-server` (our own on a loopback port, or `SLUICEGATE_REDIS_URL`), served by
//! axum on 127.0.0.1:0 and called with reqwest. Redis failures: fail open (counted) and
//! fail closed, with the server really killed.
#![cfg(all(feature = "axum", feature = "redis-tokio"))]

#[path = "support/http.rs"]
mod http_support;
mod support;

use http_support::serve;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use sluicegate::Strategy;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::layer::{GlobalKey, Key, Provider, ProviderErrorPolicy, RateLimitLayer, key_fn};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{Error, RateLimit, RateLimitDecision, RateLimiter, RateLimiterBuilder};

const TIMEOUT: Duration = Duration::from_millis(300);

fn local() -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: Default::default(),
    }
}

async fn limiter(url: &str, prefix: &RedisKey) -> Arc<RateLimiter> {
    let manager = redis::Client::open(url)
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let local = local();
    Arc::new(
        RateLimiterBuilder::new(local)
            .redis_connection(
                manager,
                support::redis_settings(&local, prefix, SyncIntervalMs::default()),
            )
            .redis_timeout(TIMEOUT)
            .build()
            .unwrap(),
    )
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

async fn status(url: &str) -> StatusCode {
    reqwest::get(url).await.unwrap().status()
}

fn rate(per_second: f64) -> RateLimit {
    RateLimit::try_from(per_second).unwrap()
}

#[tokio::test]
async fn redis_provider_limits_across_layers_and_writes_to_redis() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("layer");
    let rl = limiter(redis.url(), &prefix).await;
    let layer = RateLimitLayer::builder(rl.clone())
        .rate(rate(0.3)) // 3 a window
        .provider(Provider::Redis)
        .headers_on_allowed(true)
        .build()
        .unwrap();
    // Two servers, one Redis: the budget is shared.
    let a = serve(hello().layer(layer.clone())).await;
    let b = serve(hello().layer(layer.clone())).await;
    let started = std::time::Instant::now();
    let resp = reqwest::get(&a).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["ratelimit-policy"], "\"default\";q=3;w=10");
    // The script's reply carries the usage: `r` and `t` with no second round trip (the
    // unit's bucket leaves the 10 s window within 10.1 s: t is capped at 10).
    assert_eq!(resp.headers()["ratelimit"], "\"default\";r=2;t=10");
    let resp = reqwest::get(&b).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["ratelimit"], "\"default\";r=1;t=10");
    assert_eq!(status(&a).await, StatusCode::OK);
    let resp = reqwest::get(&b).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The first unit's bucket (100 ms groups) stops counting between 10 000 and 10 100 ms
    // after the first call, which is at most `elapsed` before the refusal: the wait is in
    // (10 000 − elapsed, 10 100] ms, rounded up to whole seconds (10 or 11 when the four
    // calls take under a second).
    let elapsed = started.elapsed().as_millis() as u64;
    let shortest = (10_000u64.saturating_sub(elapsed) + 1)
        .div_ceil(1000)
        .max(1);
    assert!(
        (shortest..=11).contains(&retry),
        "Retry-After {retry}, want {shortest}..=11 ({elapsed} ms after the first call)"
    );
    assert_eq!(
        resp.headers()["ratelimit"],
        format!("\"default\";r=0;t={retry}").as_str()
    );
    // The state is Redis's: the local provider never saw the key.
    assert_eq!(rl.local().absolute().usage("127.0.0.1"), 0);
    let key = RedisKey::try_from("127.0.0.1").unwrap();
    assert!(matches!(
        rl.redis().absolute().is_allowed(&key).await.unwrap(),
        RateLimitDecision::Rejected { .. }
    ));
    assert_eq!(layer.provider_errors(), 0);
}

#[tokio::test]
async fn redis_keys_with_colons_are_escaped_and_overlong_ones_are_400() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("layer");
    let rl = limiter(redis.url(), &prefix).await;
    let layer = RateLimitLayer::builder(rl)
        .key(key_fn(|head| {
            let path = head.uri.path();
            Ok(Key::new(if path == "/long" {
                // Under the layer's 256-byte cap, but 300 bytes once escaped for Redis.
                ":".repeat(100)
            } else {
                "2001:db8::/64".into()
            }))
        }))
        .rate(rate(0.1))
        .provider(Provider::Redis)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v6", get(|| async { "v6" }))
        .route("/long", get(|| async { "long" }))
        .layer(layer.clone());
    let url = serve(app).await;
    assert_eq!(status(&format!("{url}/v6")).await, StatusCode::OK);
    assert_eq!(
        status(&format!("{url}/v6")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let resp = reqwest::get(format!("{url}/long")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("cannot be stored in Redis")
    );
    assert_eq!(
        layer.provider_errors(),
        0,
        "a bad key is not a Redis failure"
    );
}

#[tokio::test]
async fn hybrid_provider_decides_locally_and_flushes_to_redis() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("layer");
    let rl = limiter(redis.url(), &prefix).await;
    let layer = RateLimitLayer::builder(rl.clone())
        .key(GlobalKey::new("hybrid-global"))
        .rate(rate(0.5)) // 5 a window
        .provider(Provider::Hybrid)
        .headers_on_allowed(true)
        .build()
        .unwrap();
    let url = serve(hello().layer(layer.clone())).await;
    // A new key admits one unit before its first refresh, then decides on its lease.
    assert_eq!(status(&url).await, StatusCode::OK);
    rl.hybrid().flush().await.unwrap();
    // Each admitted answer says what is left, from the hybrid's own state.
    for left in (0..4).rev() {
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let field = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            field.starts_with(&format!("\"default\";r={left};t=")),
            "{field}, want r={left}"
        );
    }
    rl.hybrid().flush().await.unwrap();
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    // The five admitted units reached Redis.
    let key = RedisKey::try_from("hybrid-global").unwrap();
    assert!(matches!(
        rl.redis().absolute().is_allowed(&key).await.unwrap(),
        RateLimitDecision::Rejected { .. }
    ));
    assert_eq!(layer.provider_errors(), 0);

    // With the metrics off (nothing else wants the usage) the field is still there.
    let quiet = RateLimitLayer::builder(rl.clone())
        .key(GlobalKey::new("hybrid-quiet"))
        .rate(rate(0.5))
        .provider(Provider::Hybrid)
        .headers_on_allowed(true)
        .metrics(false)
        .build()
        .unwrap();
    let url = serve(hello().layer(quiet)).await;
    assert_eq!(status(&url).await, StatusCode::OK);
    rl.hybrid().flush().await.unwrap();
    let resp = reqwest::get(&url).await.unwrap();
    let field = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(field.starts_with("\"default\";r=3;t="), "{field}, want r=3");
}

#[tokio::test]
async fn a_dead_redis_fails_open_by_default_and_closed_if_asked() {
    let mut server = support::RedisServer::start();
    let prefix = support::unique_prefix("layer");
    let rl = limiter(&server.url(), &prefix).await;
    let open = RateLimitLayer::builder(rl.clone())
        .rate(rate(0.1))
        .provider(Provider::Redis)
        .build()
        .unwrap();
    let closed = RateLimitLayer::builder(rl.clone())
        .rate(rate(0.1))
        .strategy(Strategy::Suppressed)
        .provider(Provider::Redis)
        .on_provider_error(ProviderErrorPolicy::FailClosed)
        .build()
        .unwrap();
    let open_url = serve(hello().layer(open.clone())).await;
    let closed_url = serve(hello().layer(closed.clone())).await;
    assert_eq!(status(&open_url).await, StatusCode::OK);
    assert_eq!(status(&open_url).await, StatusCode::TOO_MANY_REQUESTS);

    server.kill();
    for _ in 0..3 {
        assert_eq!(status(&open_url).await, StatusCode::OK, "fail open");
    }
    assert_eq!(open.provider_errors(), 3);
    let resp = reqwest::get(&closed_url).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "fail closed"
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("rate limiter unavailable"), "{body}");
    // The Redis error (its address, its words) is for the logs, not for clients.
    let port = server.port().to_string();
    for leak in [port.as_str(), "127.0.0.1", "refused", "redis error"] {
        assert!(!body.contains(leak), "{leak:?} in the 503 body: {body}");
    }
    assert_eq!(closed.provider_errors(), 1);
}

#[test]
fn redis_providers_need_a_redis_connection() {
    let rl = Arc::new(RateLimiterBuilder::new(local()).build().unwrap());
    for provider in [Provider::Redis, Provider::Hybrid] {
        let err = RateLimitLayer::builder(rl.clone())
            .rate(rate(1.0))
            .provider(provider)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::RedisNotConfigured), "{err:?}");
    }
}

/// Several limits on Redis: two limiters (two connections, as two processes would be) on
/// one prefix, behind two servers; a per-API-key limit beside a per-IP one, decided all or
/// nothing in one script.
#[tokio::test]
async fn redis_limit_sets_are_all_or_nothing_across_limiters() {
    use sluicegate::layer::{HeaderKey, LayerLimit, PeerIp};
    use sluicegate::policy::{Limit, LimitName, Quota};
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("layer-set");
    let limit = |name: &str, per_minute: f64| {
        Limit::new(
            LimitName::new(name).unwrap(),
            Quota::per_minute(per_minute).unwrap(),
        )
    };
    let mut urls = Vec::new();
    for _ in 0..2 {
        let rl = limiter(redis.url(), &prefix).await;
        let layer = RateLimitLayer::builder(rl)
            .key(HeaderKey::new(http::HeaderName::from_static("x-api-key")))
            .limit(limit("key", 2.0))
            .limit(LayerLimit::new(limit("ip", 3.0)).key(PeerIp::new()))
            .provider(Provider::Redis)
            .headers_on_allowed(true)
            .problem_json()
            .build()
            .unwrap();
        urls.push(serve(hello().layer(layer)).await);
    }
    let client = reqwest::Client::new();
    let call =
        |n: usize, key: &'static str| client.get(&urls[n % 2]).header("x-api-key", key).send();
    let ok = call(0, "a").await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        ok.headers()["ratelimit-policy"],
        "\"key\";q=2;w=60, \"ip\";q=3;w=60"
    );
    let ok = call(1, "a").await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let rl_field = ok.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(
        rl_field.starts_with("\"key\";r=0;t=") && rl_field.contains(", \"ip\";r=1;t="),
        "{rl_field}"
    );
    // Key a is spent: refused on both servers, and the IP keeps its one unit.
    for n in 0..4 {
        let resp = call(n, "a").await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let field = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(field.ends_with(", \"ip\";r=1"), "{field}");
        let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert_eq!(body["violated-policies"], serde_json::json!(["key"]));
    }
    // Key b takes the IP's last unit, then the IP refuses b with b's own count at 1.
    assert_eq!(call(0, "b").await.unwrap().status(), StatusCode::OK);
    let resp = call(1, "b").await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let field = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(field.starts_with("\"key\";r=1, \"ip\";r=0;t="), "{field}");
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["violated-policies"], serde_json::json!(["ip"]));
}

/// A limit set on the hybrid provider: decided from memory in the call, refusals that list
/// every policy, and the admitted count within the hybrid's bound.
#[tokio::test]
async fn hybrid_limit_sets_decide_in_memory() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("layer-hset");
    let rl = limiter(redis.url(), &prefix).await;
    let layer = RateLimitLayer::builder(rl.clone())
        .key(GlobalKey::new("hybrid-set"))
        .limits("short = 3/min; long = 5/h".parse().unwrap())
        .provider(Provider::Hybrid)
        .headers_on_allowed(true)
        .problem_json()
        .build()
        .unwrap();
    let url = serve(hello().layer(layer.clone())).await;
    let mut admitted = 0;
    for _ in 0..8 {
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(
            resp.headers()["ratelimit-policy"],
            "\"short\";q=3;w=60, \"long\";q=5;w=3600"
        );
        match resp.status() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let body: serde_json::Value =
                    serde_json::from_str(&resp.text().await.unwrap()).unwrap();
                assert_eq!(body["violated-policies"], serde_json::json!(["short"]));
            }
            other => panic!("{other}"),
        }
        rl.hybrid().flush().await.unwrap();
    }
    // One instance, flushed after every call: exactly the short limit's 3.
    assert_eq!(admitted, 3);
    assert_eq!(layer.provider_errors(), 0);
}
