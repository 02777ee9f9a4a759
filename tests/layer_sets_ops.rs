//! Operability inside a set of limits, in axum over real sockets, on the local, Redis and
//! hybrid providers: a shadowed limit beside enforcing ones, a limit with exemptions of its
//! own, a refused request that counts in no limit (shadow ones included), and counting by
//! outcome on a two-limit set (failed logins, per IP and per user name) with concurrent
//! attempts. Metrics are read from a real Prometheus recorder. Time is a `ManualClock`
//! (read by the Redis scripts too); nothing sleeps to move it.
#![cfg(all(feature = "axum", feature = "metrics"))]

#[path = "support/http.rs"]
mod http_support;
mod support;

use http_support::serve;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::routing::{get, post};
use http::{HeaderName, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sluicegate::layer::{Exemptions, HeaderKey, LayerLimit, PeerIp, RateLimitLayerBuilder};
use sluicegate::policy::{Limit, LimitName, Quota};
use sluicegate::{ManualClock, RateLimiter, RateLimiterBuilder};

/// One recorder for the whole test binary, installed before any layer is built.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

fn requests(policy: &str, outcome: &str) -> f64 {
    let series = format!("sluicegate_requests_total{{policy=\"{policy}\",outcome=\"{outcome}\"}}");
    prometheus()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn local_limiter(clock: &ManualClock) -> Arc<RateLimiter> {
    http_support::limiter(clock, 10)
}

/// `count` per 10 s, named `name`.
fn limit(name: &str, count: f64) -> Limit {
    Limit::new(
        LimitName::new(name).unwrap(),
        Quota::new(count, 10).unwrap(),
    )
}

fn header(name: &'static str) -> HeaderKey {
    HeaderKey::new(HeaderName::from_static(name))
}

/// What a scenario needs of its provider: how to move time, and how to wait for the
/// refunds the networked providers run on spawned tasks.
struct Env {
    clock: ManualClock,
    networked: bool,
    /// The hybrid limiter, flushed at each step: its decisions are exact within one
    /// instance once a key's lease is in (before it, a new key is admitted provisionally).
    #[cfg(feature = "redis-tokio")]
    hybrid: Option<Arc<RateLimiter>>,
}

impl Env {
    /// Whether a burst is decided exactly (not the hybrid provider: see [`failures`]).
    fn exact_bursts(&self) -> bool {
        #[cfg(feature = "redis-tokio")]
        return self.hybrid.is_none();
        #[cfg(not(feature = "redis-tokio"))]
        true
    }

    /// Lets refunds on spawned tasks land (Redis, hybrid) and the hybrid's counts reach
    /// Redis.
    async fn settle(&self) {
        if self.networked {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        #[cfg(feature = "redis-tokio")]
        if let Some(rl) = &self.hybrid {
            rl.hybrid().flush().await.unwrap();
        }
    }
}

struct Reply {
    status: StatusCode,
    ratelimit: Option<String>,
    policy: Option<String>,
}

async fn get_as(client: &reqwest::Client, base: &str, api_key: &str) -> Reply {
    let r = client
        .get(format!("{base}/"))
        .header("x-api-key", api_key)
        .header("x-ip", "ip1")
        .send()
        .await
        .unwrap();
    let text = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    Reply {
        status: r.status(),
        ratelimit: text("ratelimit"),
        policy: text("ratelimit-policy"),
    }
}

/// A per-API-key limit of 1 (internal keys exempt from it) enforced, beside a per-IP
/// limit of 3 in shadow: refusals count nowhere, would-be refusals are counted for the
/// shadow limit's policy, exempt keys are counted for the key limit's policy and still
/// decided by the shadow one, and the fields list the enforcing limit only.
async fn shadow_and_exempt(builder: RateLimitLayerBuilder, env: &Env, tag: &str) {
    prometheus();
    let (key_p, ip_p, layer_p) = (
        format!("{tag}_key"),
        format!("{tag}_ip"),
        format!("{tag}_layer"),
    );
    let layer = builder
        .key(header("x-api-key"))
        .policy_name(&layer_p)
        .headers_on_allowed(true)
        .limit(
            LayerLimit::new(limit(&key_p, 1.0))
                .exempt(Exemptions::new().key(|k| k.as_str().starts_with("internal_"))),
        )
        .limit(
            LayerLimit::new(limit(&ip_p, 3.0))
                .key(header("x-ip"))
                .shadow(true),
        )
        .build()
        .unwrap();
    let base = serve(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;
    let client = reqwest::Client::new();

    env.settle().await;
    let first = get_as(&client, &base, "a").await;
    env.settle().await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.ratelimit.as_deref(),
        Some(&*format!("\"{key_p}\";r=0;t=10"))
    );
    assert_eq!(
        first.policy.as_deref(),
        Some(&*format!("\"{key_p}\";q=1;w=10"))
    );
    // Refused by the key limit: counted in no limit, the shadow one included.
    for _ in 0..3 {
        let r = get_as(&client, &base, "a").await;
        env.settle().await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.policy.as_deref(), Some(&*format!("\"{key_p}\";q=1;w=10")));
    }
    // Two more keys fill the shadow limit (3) exactly: no would-be refusal yet.
    for k in ["b", "c"] {
        assert_eq!(get_as(&client, &base, k).await.status, StatusCode::OK);
        env.settle().await;
    }
    assert_eq!(
        requests(&ip_p, "shadow_rejected"),
        0.0,
        "the refused requests spent nothing in the shadow limit"
    );
    // The fourth admitted request is a would-be refusal of the shadow limit: let through.
    assert_eq!(get_as(&client, &base, "d").await.status, StatusCode::OK);
    env.settle().await;
    assert_eq!(requests(&ip_p, "shadow_rejected"), 1.0);
    // Internal keys skip the key limit (counted `exempt` for it) but not the shadow one.
    for _ in 0..2 {
        let r = get_as(&client, &base, "internal_batch").await;
        env.settle().await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.ratelimit, None, "no enforcing limit decided it");
    }
    assert_eq!(requests(&key_p, "exempt"), 2.0);
    assert_eq!(requests(&ip_p, "shadow_rejected"), 3.0);
    assert_eq!(requests(&layer_p, "allowed"), 6.0);
    assert_eq!(requests(&layer_p, "rejected"), 3.0);
    assert_eq!(
        requests(&layer_p, "exempt"),
        0.0,
        "the shadow limit still decided them"
    );
    assert_eq!(
        requests(&ip_p, "allowed"),
        0.0,
        "a limit's own series are only these two"
    );

    // The windows free: the key limit admits again, and the shadow limit counts from zero.
    env.clock.advance(10_100);
    env.settle().await;
    for k in ["a", "b", "c"] {
        assert_eq!(get_as(&client, &base, k).await.status, StatusCode::OK);
        env.settle().await;
    }
    assert_eq!(requests(&ip_p, "shadow_rejected"), 3.0);
    assert_eq!(get_as(&client, &base, "d").await.status, StatusCode::OK);
    assert_eq!(requests(&ip_p, "shadow_rejected"), 4.0);
}

/// Two enforcing limits, the per-key one (1) with exemptions: a request the key limit
/// refuses after the per-IP limit (3) admitted it gives its IP unit back, so the IP limit
/// counts admitted requests only; an exempt key spends nothing in the key limit and is
/// held by the IP limit alone.
async fn exempt_limit_gives_back(builder: RateLimitLayerBuilder, env: &Env, tag: &str) {
    prometheus();
    let (key_p, ip_p) = (format!("{tag}_ekey"), format!("{tag}_eip"));
    let layer = builder
        .key(header("x-api-key"))
        .policy_name(format!("{tag}_elayer"))
        .limit(
            LayerLimit::new(limit(&key_p, 1.0))
                .exempt(Exemptions::new().key(|k| k.as_str().starts_with("internal_"))),
        )
        .limit(LayerLimit::new(limit(&ip_p, 3.0)).key(header("x-ip")))
        .build()
        .unwrap();
    let base = serve(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;
    let client = reqwest::Client::new();
    env.settle().await;
    assert_eq!(get_as(&client, &base, "a").await.status, StatusCode::OK);
    env.settle().await;
    for _ in 0..4 {
        let r = get_as(&client, &base, "a").await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        // The refusal names the refusing limit; the IP limit shows its quota before it.
        assert_eq!(
            r.ratelimit.as_deref(),
            Some(&*format!("\"{key_p}\";r=0;t=10, \"{ip_p}\";r=2")),
        );
        env.settle().await;
    }
    // The IP limit holds one unit (a's), not five: two more keys fit, a third does not.
    assert_eq!(get_as(&client, &base, "b").await.status, StatusCode::OK);
    assert_eq!(
        get_as(&client, &base, "internal_x").await.status,
        StatusCode::OK
    );
    let r = get_as(&client, &base, "internal_y").await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the IP limit is full"
    );
    // (The hybrid provider gives a refusing limit's wait from its lease: not asserted.)
    let listed = r.ratelimit.unwrap();
    assert!(
        listed.starts_with(&format!("\"{ip_p}\";r=0;t=")),
        "the exempt limit is not listed: {listed}"
    );
    assert_eq!(requests(&key_p, "exempt"), 2.0);
}

/// `POST /login` behind a set: `password=open-sesame` is 200, anything else 401 (after a
/// pause, so many attempts are in flight at once).
fn login_app(layer: sluicegate::layer::RateLimitLayer) -> Router {
    Router::new()
        .route(
            "/login",
            post(|body: String| async move {
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

async fn attempts(base: &str, n: usize, user: &str, password: &str) -> Vec<StatusCode> {
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let request = client
                .post(format!("{base}/login"))
                .header("x-user", user)
                .body(format!("password={password}"));
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// `n` concurrent failed logins for `user`: exactly `allowed` answered 401, the rest 429.
/// The hybrid provider may refuse a burst early while its leases in the two limits are
/// shrunk to demand (see `hybrid/policy.rs`, never admitting more): there the burst gets at
/// most `allowed`, and attempts one by one, each after a flush, then reach exactly `allowed`.
async fn failures(env: &Env, base: &str, user: &str, n: usize, allowed: usize) {
    let burst = attempts(base, n, user, "guess").await;
    env.settle().await;
    let mut failed = count(&burst, StatusCode::UNAUTHORIZED);
    assert_eq!(
        failed + count(&burst, StatusCode::TOO_MANY_REQUESTS),
        n,
        "{burst:?}"
    );
    if !env.exact_bursts() {
        assert!((1..=allowed).contains(&failed), "{burst:?}");
        for _ in 0..allowed + 2 {
            failed += count(
                &attempts(base, 1, user, "guess").await,
                StatusCode::UNAUTHORIZED,
            );
            env.settle().await;
        }
    }
    assert_eq!(failed, allowed, "{user}: {burst:?}");
}

/// Failed logins only, per peer IP (5) and per user name (3): successes never count,
/// twenty concurrent failures for one user get exactly 3 answers of 401, and the IP
/// limit then holds exactly those 3, so another user from the same IP gets 2.
async fn failed_logins_per_ip_and_user(builder: RateLimitLayerBuilder, env: &Env, tag: &str) {
    let layer = builder
        .policy_name(format!("{tag}_login"))
        .limit(LayerLimit::new(limit(&format!("{tag}_per_ip"), 5.0)).key(PeerIp::new()))
        .limit(LayerLimit::new(limit(&format!("{tag}_per_user"), 3.0)).key(header("x-user")))
        .count_if(|status, _| status == StatusCode::UNAUTHORIZED)
        .build()
        .unwrap();
    let base = serve(login_app(layer)).await;
    env.settle().await;
    for _ in 0..10 {
        assert_eq!(
            attempts(&base, 1, "alice", "open-sesame").await,
            [StatusCode::OK]
        );
        env.settle().await;
    }
    failures(env, &base, "alice", 20, 3).await;
    // Alice is locked out, right password or not.
    let good = attempts(&base, 2, "alice", "open-sesame").await;
    assert_eq!(count(&good, StatusCode::TOO_MANY_REQUESTS), 2, "{good:?}");
    env.settle().await;
    // The IP limit counted alice's three failures and nothing else.
    failures(env, &base, "bob", 6, 2).await;
    // The windows free the failures.
    env.clock.advance(10_100);
    env.settle().await;
    for _ in 0..3 {
        assert_eq!(
            attempts(&base, 1, "alice", "open-sesame").await,
            [StatusCode::OK]
        );
        env.settle().await;
    }
}

fn local_env() -> (Arc<RateLimiter>, Env) {
    let clock = ManualClock::new(1_000_000);
    (
        local_limiter(&clock),
        Env {
            clock,
            networked: false,
            #[cfg(feature = "redis-tokio")]
            hybrid: None,
        },
    )
}

#[tokio::test]
async fn shadow_and_exempt_limits_in_a_set_local() {
    let (rl, env) = local_env();
    shadow_and_exempt(sluicegate::layer::RateLimitLayer::builder(rl), &env, "sl").await;
}

#[tokio::test]
async fn an_exempt_limit_gives_back_when_another_refuses_local() {
    let (rl, env) = local_env();
    exempt_limit_gives_back(sluicegate::layer::RateLimitLayer::builder(rl), &env, "el").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_logins_count_in_a_set_local() {
    prometheus();
    let (rl, env) = local_env();
    failed_logins_per_ip_and_user(sluicegate::layer::RateLimitLayer::builder(rl), &env, "fl").await;
}

#[tokio::test]
async fn count_if_on_a_set_of_a_custom_shape_is_built() {
    // A set with counting by outcome and a shadow limit builds (both are groups).
    let (rl, _env) = local_env();
    sluicegate::layer::RateLimitLayer::builder(rl)
        .limit(limit("c1", 2.0))
        .limit(LayerLimit::new(limit("c2", 2.0)).shadow(true))
        .refund_on_success()
        .build()
        .unwrap();
}

#[cfg(feature = "redis-tokio")]
mod networked {
    use super::*;
    use sluicegate::hybrid::SyncIntervalMs;
    use sluicegate::layer::{Provider, RateLimitLayer};

    async fn env(redis: &support::TestRedis, tag: &str) -> (Arc<RateLimiter>, Env) {
        let (rl, mut env) = redis_env(redis, tag).await;
        env.hybrid = tag.ends_with("_h").then(|| rl.clone());
        (rl, env)
    }

    async fn redis_env(redis: &support::TestRedis, tag: &str) -> (Arc<RateLimiter>, Env) {
        let clock = ManualClock::new(1_000_000);
        let local = http_support::options(10);
        let rl = RateLimiterBuilder::new(local)
            .redis_connection(
                redis.manager().await,
                support::redis_settings(
                    &local,
                    &support::unique_prefix(tag),
                    SyncIntervalMs::try_from(10).unwrap(),
                ),
            )
            .clock(clock.clone())
            .redis_time_from_clock_for_tests_only(clock.clone())
            .build()
            .unwrap();
        (
            Arc::new(rl),
            Env {
                clock,
                networked: true,
                hybrid: None,
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shadow_and_exempt_limits_in_a_set_redis() {
        let redis = support::TestRedis::get();
        let (rl, env) = env(&redis, "so_r").await;
        let builder = RateLimitLayer::builder(rl).provider(Provider::Redis);
        shadow_and_exempt(builder, &env, "sr").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shadow_and_exempt_limits_in_a_set_hybrid() {
        let redis = support::TestRedis::get();
        let (rl, env) = env(&redis, "so_h").await;
        let builder = RateLimitLayer::builder(rl).provider(Provider::Hybrid);
        shadow_and_exempt(builder, &env, "sh").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exempt_limit_gives_back_when_another_refuses_redis() {
        let redis = support::TestRedis::get();
        let (rl, env) = env(&redis, "eg_r").await;
        let builder = RateLimitLayer::builder(rl).provider(Provider::Redis);
        exempt_limit_gives_back(builder, &env, "er").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exempt_limit_gives_back_when_another_refuses_hybrid() {
        let redis = support::TestRedis::get();
        let (rl, env) = env(&redis, "eg_h").await;
        let builder = RateLimitLayer::builder(rl).provider(Provider::Hybrid);
        exempt_limit_gives_back(builder, &env, "eh").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_failed_logins_count_in_a_set_redis() {
        prometheus();
        let redis = support::TestRedis::get();
        let (rl, env) = env(&redis, "fl_r").await;
        let builder = RateLimitLayer::builder(rl).provider(Provider::Redis);
        failed_logins_per_ip_and_user(builder, &env, "fr").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_failed_logins_count_in_a_set_hybrid() {
        prometheus();
        let redis = support::TestRedis::get();
        let (rl, env) = env(&redis, "fl_h").await;
        let builder = RateLimitLayer::builder(rl).provider(Provider::Hybrid);
        failed_logins_per_ip_and_user(builder, &env, "fh").await;
    }
}
