//! `RateLimitLayer` in axum over real sockets: `axum::serve` on 127.0.0.1:0, reqwest as the
//! client, a `ManualClock` wherever timing matters (nothing sleeps).
#![cfg(feature = "axum")]

#[path = "support/http.rs"]
mod http_support;

use http_support::{serve, serve_on, serve_without_connect_info};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderName, StatusCode};
use sluicegate::Strategy;
use sluicegate::layer::{
    Both, ClientIp, HeaderKey, KeyErrorPolicy, MatchedRoute, ProxyHeader, RateLimitLayer,
};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    HardLimitFactor, ManualClock, RandomSource, RateLimit, RateLimitDecision, RateLimiter,
    RateLimiterBuilder,
};

/// A draw the test sets: the suppressed strategy admits iff draw >= factor.
#[derive(Debug, Clone, Default)]
struct FixedDraw(Arc<AtomicU64>);

impl FixedDraw {
    fn set(&self, draw: f64) {
        self.0.store(draw.to_bits(), Ordering::SeqCst);
    }
}

impl RandomSource for FixedDraw {
    fn next_f64(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::SeqCst))
    }
}

fn limiter_with(clock: &ManualClock, hard: f64, draw: Option<FixedDraw>) -> Arc<RateLimiter> {
    let builder = RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(hard).unwrap(),
        suppression_factor_cache_ms: 0.try_into().unwrap(),
    })
    .clock(clock.clone());
    let builder = match draw {
        Some(d) => builder.random(d),
        None => builder,
    };
    Arc::new(builder.build().unwrap())
}

fn limiter(clock: &ManualClock) -> Arc<RateLimiter> {
    limiter_with(clock, 1.0, None)
}

fn rate(per_second: f64) -> RateLimit {
    RateLimit::try_from(per_second).unwrap()
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn absolute_429_carries_retry_after_and_the_ietf_fields() {
    let clock = ManualClock::new(1_000_000);
    let rl = limiter(&clock);
    let layer = RateLimitLayer::builder(rl.clone())
        .rate(rate(0.3)) // 3 per 10 s window
        .headers_on_allowed(true)
        .build()
        .unwrap();
    let url = serve(hello().layer(layer)).await;

    for left in [2, 1, 0] {
        let resp = get_with(&url, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(&resp, "ratelimit-policy"),
            Some("\"default\";q=3;w=10")
        );
        let expected = format!("\"default\";r={left};t=10");
        assert_eq!(header(&resp, "ratelimit"), Some(expected.as_str()));
        assert_eq!(header(&resp, "retry-after"), None);
        assert_eq!(resp.text().await.unwrap(), "hello");
    }

    clock.advance(2_345);
    let resp = get_with(&url, &[]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    // Worked by hand: the three calls at 1 000 000 ms sit in bucket 10 000 (100 ms groups),
    // which counts until (10 000 + 1) × 100 + 10 000 = 1 010 100 ms; the refusal comes at
    // 1 002 345, so the wait is 7 755 ms, 8 s rounded up.
    let retry_after_ms = 7_755;
    let seconds = 8;
    assert_eq!(
        rl.local().absolute().is_allowed("127.0.0.1"),
        RateLimitDecision::Rejected {
            window_size_seconds: 10,
            retry_after_ms,
            remaining_after_waiting: 0
        },
        "the core agrees with the worked wait"
    );
    assert_eq!(
        header(&resp, "retry-after"),
        Some(seconds.to_string().as_str())
    );
    assert_eq!(
        header(&resp, "ratelimit-policy"),
        Some("\"default\";q=3;w=10")
    );
    let expected = format!("\"default\";r=0;t={seconds}");
    assert_eq!(header(&resp, "ratelimit"), Some(expected.as_str()));
    assert_eq!(
        header(&resp, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(resp.text().await.unwrap().contains("Too Many Requests"));

    // Waiting exactly the worked wait (not the rounded-up header) is enough; a ms less is not.
    clock.advance(retry_after_ms - 1);
    assert_eq!(
        get_with(&url, &[]).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(1);
    assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn suppressed_denial_is_503_with_the_factor_and_admitted_ones_carry_it() {
    let clock = ManualClock::new(0);
    let draw = FixedDraw::default();
    let rl = limiter_with(&clock, 2.0, Some(draw.clone()));
    let layer = RateLimitLayer::builder(rl)
        .rate(rate(1.0)) // capacity 10, hard limit 20
        .strategy(Strategy::Suppressed)
        .build()
        .unwrap();
    let url = serve(hello().layer(layer)).await;

    for _ in 0..10 {
        let resp = get_with(&url, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "x-suppression-factor"), None);
    }
    // Over capacity: R = 10 observed in the last second, r = 1, so sf = 1 - 1/10.
    draw.set(0.95);
    let resp = get_with(&url, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-suppression-factor"), Some("0.900"));

    // One more observed: sf = 1 - 1/11.
    draw.set(0.0);
    let resp = get_with(&url, &[]).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&resp, "x-suppression-factor"), Some("0.909"));
    assert_eq!(header(&resp, "retry-after"), Some("1"));
    // A shed client learns its quota too.
    assert_eq!(
        header(&resp, "ratelimit-policy"),
        Some("\"default\";q=10;w=10")
    );
    assert_eq!(header(&resp, "ratelimit"), Some("\"default\";r=0;t=1"));
}

#[tokio::test]
async fn over_the_hard_limit_every_request_is_shed_with_factor_one() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock); // hard limit factor 1: a cutoff
    let layer = RateLimitLayer::builder(rl)
        .rate(rate(0.2))
        .strategy(Strategy::Suppressed)
        .build()
        .unwrap();
    let url = serve(hello().layer(layer)).await;
    assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);
    assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);
    for _ in 0..3 {
        let resp = get_with(&url, &[]).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&resp, "x-suppression-factor"), Some("1.000"));
    }
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(ClientIp::trusting(["10.0.0.0/8".parse().unwrap()]))
        .rate(rate(0.1)) // one request a window
        .build()
        .unwrap();
    let url = serve(hello().layer(layer)).await;
    let first = get_with(&url, &[("x-forwarded-for", "1.1.1.1")]).await;
    assert_eq!(first.status(), StatusCode::OK);
    // A new made-up client address does not buy a new budget: the peer is the key.
    let second = get_with(&url, &[("x-forwarded-for", "2.2.2.2")]).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let third = get_with(&url, &[("x-forwarded-for", "garbage, ]]")]).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(ClientIp::trusting(["127.0.0.0/8".parse().unwrap()]))
        .rate(rate(0.1))
        .build()
        .unwrap();
    let url = serve(hello().layer(layer)).await;
    let ok = |h: &'static str| {
        let url = url.clone();
        async move { get_with(&url, &[("x-forwarded-for", h)]).await.status() }
    };
    assert_eq!(ok("6.6.6.6, 9.9.9.9").await, StatusCode::OK);
    // The client wrote a different left part; the hop the proxy appended is the same.
    assert_eq!(ok("7.7.7.7, 9.9.9.9").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(ok("9.9.9.10, 127.0.0.5").await, StatusCode::OK);
    assert_eq!(ok("::ffff:9.9.9.10").await, StatusCode::TOO_MANY_REQUESTS);
    // IPv6 clients share a /64.
    assert_eq!(ok("2001:db8::1").await, StatusCode::OK);
    assert_eq!(ok("2001:db8::2").await, StatusCode::TOO_MANY_REQUESTS);

    let bad = get_with(&url, &[("x-forwarded-for", "1.2.3.4, not-an-ip")]).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body = bad.text().await.unwrap();
    assert!(body.contains("x-forwarded-for"), "{body}");
}

#[tokio::test]
async fn forwarded_header_is_parsed_and_malformed_values_are_400() {
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(ClientIp::trusting(["127.0.0.0/8".parse().unwrap()]).header(ProxyHeader::Forwarded))
        .rate(rate(0.1))
        .build()
        .unwrap();
    let url = serve(hello().layer(layer)).await;
    let fwd = |h: &'static str| {
        let url = url.clone();
        async move { get_with(&url, &[("forwarded", h)]).await }
    };
    assert_eq!(
        fwd(r#"for="[2001:db8:cafe::17]:4711";proto=https"#)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        fwd(r#"for=192.0.2.1, for="[2001:db8:cafe::99]""#)
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for bad in ["for=unknown", "for=_hidden", r#"for="[::1"#, "for=1.2.3"] {
        let resp = fwd(bad).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(resp.text().await.unwrap().contains("forwarded"), "{bad}");
    }
    // X-Forwarded-For is not the configured header: ignored, the proxy itself is keyed.
    let resp = get_with(&url, &[("x-forwarded-for", "5.5.5.5")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = get_with(&url, &[("x-forwarded-for", "5.5.5.6")]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_forgotten_connect_info_is_a_500_that_names_the_fix() {
    let clock = ManualClock::new(0);
    let url =
        serve_without_connect_info(hello().layer(RateLimitLayer::new(limiter(&clock), rate(1.0))))
            .await;
    let resp = get_with(&url, &[]).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("into_make_service_with_connect_info")
    );
}

#[tokio::test]
async fn key_errors_can_be_let_through() {
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::builder(limiter(&clock))
        .rate(rate(0.1))
        .on_key_error(KeyErrorPolicy::Allow)
        .build()
        .unwrap();
    let url = serve_without_connect_info(hello().layer(layer)).await;
    for _ in 0..3 {
        assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn per_route_and_per_api_key_plans() {
    let clock = ManualClock::new(0);
    let api_key = HeaderName::from_static("x-api-key");
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(Both(MatchedRoute, HeaderKey::new(api_key)))
        .rate_fn(|key, _| {
            // "route<US>api key": plans by API-key prefix.
            let api_key = key.as_str().rsplit('\u{1f}').next().unwrap();
            rate(if api_key.starts_with("pro_") {
                0.3
            } else {
                0.1
            })
        })
        .headers_on_allowed(true)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/a/{id}", get(|| async { "a" }))
        .route("/b", get(|| async { "b" }))
        .layer(layer);
    let url = serve(app).await;
    let call = |path: &'static str, key: &'static str| {
        let url = url.clone();
        async move { get_with(&format!("{url}{path}"), &[("x-api-key", key)]).await }
    };

    let resp = call("/a/1", "free_1").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "ratelimit-policy"),
        Some("\"default\";q=1;w=10")
    );
    // Same route template, other id: same budget.
    assert_eq!(
        call("/a/2", "free_1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Other route, or other key: their own budgets.
    assert_eq!(call("/b", "free_1").await.status(), StatusCode::OK);
    assert_eq!(call("/a/1", "free_2").await.status(), StatusCode::OK);
    for _ in 0..3 {
        let resp = call("/a/1", "pro_1").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(&resp, "ratelimit-policy"),
            Some("\"default\";q=3;w=10")
        );
    }
    let resp = call("/a/1", "pro_1").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&resp, "ratelimit-policy"),
        Some("\"default\";q=3;w=10")
    );

    let resp = get_with(&format!("{url}/b"), &[]).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.text().await.unwrap().contains("x-api-key"));
}

#[tokio::test]
async fn route_layer_and_nested_routers_limit_only_their_routes() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let limited = Router::new()
        .route("/limited", get(|| async { "l" }))
        .route_layer(
            RateLimitLayer::builder(rl.clone())
                .key(MatchedRoute)
                .rate(rate(0.1))
                .build()
                .unwrap(),
        )
        .route("/free", get(|| async { "f" }));
    let nested = Router::new().route("/x", get(|| async { "x" })).layer(
        RateLimitLayer::builder(rl)
            .key(MatchedRoute)
            .rate(rate(0.1))
            .build()
            .unwrap(),
    );
    let url = serve(limited.nest("/api", nested)).await;
    let status = |path: &'static str| {
        let url = url.clone();
        async move { get_with(&format!("{url}{path}"), &[]).await.status() }
    };
    assert_eq!(status("/limited").await, StatusCode::OK);
    assert_eq!(status("/limited").await, StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..3 {
        assert_eq!(status("/free").await, StatusCode::OK);
    }
    assert_eq!(status("/api/x").await, StatusCode::OK);
    assert_eq!(status("/api/x").await, StatusCode::TOO_MANY_REQUESTS);
    // Unmatched paths never reach a route layer.
    assert_eq!(status("/nowhere").await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn problem_json_and_custom_hooks() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let layer = RateLimitLayer::builder(rl.clone())
        .rate(rate(0.1))
        .problem_json()
        .build()
        .unwrap();
    let url = serve(hello().layer(layer)).await;
    assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);
    let resp = get_with(&url, &[]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&resp, "content-type"),
        Some("application/problem+json")
    );
    let retry = header(&resp, "retry-after").unwrap().to_owned();
    let body = resp.text().await.unwrap();
    assert!(
        body.starts_with(r#"{"type":"about:blank","title":"Too Many Requests","status":429"#),
        "{body}"
    );
    assert!(
        body.ends_with(&format!(
            ",\"retry_after\":{retry},\"violated-policies\":[\"default\"]}}"
        )),
        "{body}"
    );

    let layer = RateLimitLayer::builder(rl)
        .rate(rate(0.1))
        .policy_name("custom")
        .rejection_fn(|rejection| {
            let mut resp =
                http::Response::new(Bytes::from(format!("nope: {}", rejection.detail())));
            *resp.status_mut() = rejection.status();
            resp.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("42"));
            resp
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/c", get(|| async { "c" }))
        .layer(layer);
    let url = serve(app).await;
    let url = format!("{url}/c");
    // The first layer's key is shared (same limiter, same peer): already over.
    let resp = get_with(&url, &[]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&resp, "retry-after"),
        Some("42"),
        "the hook's value wins"
    );
    assert_eq!(
        header(&resp, "ratelimit-policy"),
        Some("\"custom\";q=1;w=10")
    );
    assert!(
        header(&resp, "ratelimit")
            .unwrap()
            .starts_with("\"custom\";r=0;t=")
    );
    assert!(
        resp.text()
            .await
            .unwrap()
            .starts_with("nope: rate limit exceeded")
    );
}

#[tokio::test]
async fn a_resolved_rate_below_one_request_is_a_logged_500() {
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::builder(limiter(&clock))
        .rate_fn(|_, _| rate(0.01)) // 0.1 request per 10 s window
        .build()
        .unwrap();
    let url = serve(hello().layer(layer)).await;
    let resp = get_with(&url, &[]).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("capacity below one request")
    );
}

#[test]
fn configuration_is_checked_when_the_layer_is_built() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let err = RateLimitLayer::builder(rl.clone())
        .rate(rate(0.05))
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("capacity below one request"),
        "{err}"
    );
    let err = RateLimitLayer::builder(rl.clone())
        .rate(rate(1.0))
        .cost(11)
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("exceeds the window's capacity"),
        "{err}"
    );
    let err = RateLimitLayer::builder(rl.clone())
        .rate(rate(1.0))
        .cost(0)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
    let err = RateLimitLayer::builder(rl.clone()).build().unwrap_err();
    assert!(err.to_string().contains(".rate("), "{err}");
    let err = RateLimitLayer::builder(rl)
        .rate(rate(1.0))
        .policy_name("has space")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("policy name"), "{err}");
}

#[tokio::test]
async fn a_request_can_cost_more_than_one() {
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::builder(limiter(&clock))
        .rate(rate(0.5)) // 5 a window
        .cost_fn(|head| {
            if head.method == http::Method::POST {
                3
            } else {
                1
            }
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "g" }).post(|| async { "p" }))
        .layer(layer);
    let url = serve(app).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client.post(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        client.post(&url).send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn ipv6_peers_are_keyed_by_their_prefix() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let layer = RateLimitLayer::builder(rl.clone())
        .rate(rate(0.2))
        .build()
        .unwrap();
    let url = format!("{}/", serve_on("[::1]:0", hello().layer(layer)).await);
    assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);
    assert_eq!(rl.local().absolute().usage("::/64"), 1);
    assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);
    assert_eq!(
        get_with(&url, &[]).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn no_429_advertises_a_wait_longer_than_the_window() {
    // 1 per 10 s window, 100 ms groups. The request at 0 lands in bucket [0, 100 ms), which
    // counts until 100 + 10_000 ms: the core's wait is 10.1 s, more than `w=10`.
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let layer = RateLimitLayer::builder(rl).rate(rate(0.1)).build().unwrap();
    let url = serve(hello().layer(layer)).await;
    assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);

    for advance in [0, 50, 1_049] {
        clock.advance(advance);
        let resp = get_with(&url, &[]).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&resp, "retry-after"), Some("10"), "at +{advance} ms");
        assert_eq!(
            header(&resp, "ratelimit-policy"),
            Some("\"default\";q=1;w=10")
        );
        assert_eq!(header(&resp, "ratelimit"), Some("\"default\";r=0;t=10"));
    }
    // At 1_099 ms the true wait is 9_001 ms: 10 s rounded up, still within the window.
    // At 10_050 ms it is 50 ms: the client told 10 s meets one short refusal.
    clock.advance(8_951);
    let resp = get_with(&url, &[]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&resp, "retry-after"), Some("1"));
    assert_eq!(header(&resp, "ratelimit"), Some("\"default\";r=0;t=1"));
    clock.advance(50);
    assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_shed_over_the_hard_limit_says_the_window_and_the_quota() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock); // hard limit factor 1: over capacity is over the hard limit
    let layer = RateLimitLayer::builder(rl.clone())
        .rate(rate(0.2)) // capacity 2 per 10 s
        .strategy(Strategy::Suppressed)
        .build()
        .unwrap();
    let url = serve(hello().layer(layer)).await;
    assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);
    assert_eq!(get_with(&url, &[]).await.status(), StatusCode::OK);
    let resp = get_with(&url, &[]).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&resp, "x-suppression-factor"), Some("1.000"));
    // Every request keeps counting for the whole window: a second is not enough.
    assert_eq!(header(&resp, "retry-after"), Some("10"));
    assert_eq!(
        header(&resp, "ratelimit-policy"),
        Some("\"default\";q=2;w=10")
    );
    assert_eq!(header(&resp, "ratelimit"), Some("\"default\";r=0;t=10"));

    // The problem-details body says the same wait.
    let layer = RateLimitLayer::builder(rl)
        .rate(rate(0.2))
        .strategy(Strategy::Suppressed)
        .problem_json()
        .build()
        .unwrap();
    let url = serve(hello().layer(layer)).await;
    let resp = get_with(&url, &[]).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&resp, "retry-after"), Some("10"));
    let body = resp.text().await.unwrap();
    assert!(
        body.ends_with(
            r#","retry_after":10,"suppression_factor":1.000,"violated-policies":["default"]}"#
        ),
        "{body}"
    );
}
