//! Layer options no other test reaches: the suppression header on admitted requests,
//! `rejection_body`, a cost resolver answering 0, and the IPv6 grouping of the IP
//! extractors. Driven through `tower::ServiceExt::oneshot` with a `ManualClock`: no sockets,
//! nothing sleeps.
#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use sluicegate::Strategy;
use sluicegate::layer::{
    ClientIp, PeerIp, RateLimitLayer, RateLimitLayerBuilder, Rejection, RejectionBody,
};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{HardLimitFactor, ManualClock, RandomSource, RateLimit, RateLimiter};
use tower::{Layer, Service, ServiceExt};

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

/// A 10 s window of 100 ms groups, hard limit `hard`, factors never cached.
fn limiter(clock: &ManualClock, hard: f64, draw: &FixedDraw) -> Arc<RateLimiter> {
    Arc::new(
        sluicegate::RateLimiterBuilder::new(LocalRateLimiterOptions {
            window_size_seconds: 10.try_into().unwrap(),
            rate_group_size_ms: 100.try_into().unwrap(),
            hard_limit_factor: HardLimitFactor::try_from(hard).unwrap(),
            suppression_factor_cache_ms: 0.try_into().unwrap(),
        })
        .clock(clock.clone())
        .random(draw.clone())
        .build()
        .unwrap(),
    )
}

fn rate(per_second: f64) -> RateLimit {
    RateLimit::try_from(per_second).unwrap()
}

/// What a call through the layer answered.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// One request from `peer` through `layer` in front of a handler that answers "ok".
async fn call(layer: &RateLimitLayer, peer: &str, headers: &[(&str, &str)]) -> Answer {
    let inner = tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let mut service = layer.layer(inner);
    let mut req = Request::get("/").body(String::new()).unwrap();
    req.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    for &(name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let resp = service.ready().await.unwrap().call(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn build(builder: RateLimitLayerBuilder) -> RateLimitLayer {
    builder.build().unwrap()
}

const PEER: &str = "127.0.0.1:4000";

#[tokio::test]
async fn suppression_header_on_allowed_false_keeps_it_off_admitted_responses_only() {
    for on in [true, false] {
        let clock = ManualClock::new(0);
        let draw = FixedDraw::default();
        let layer = build(
            RateLimitLayer::builder(limiter(&clock, 2.0, &draw))
                .rate(rate(1.0)) // capacity 10, hard limit 20
                .strategy(Strategy::Suppressed)
                .suppression_header_on_allowed(on),
        );
        for _ in 0..10 {
            let a = call(&layer, PEER, &[]).await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.header("x-suppression-factor"), None, "below capacity");
        }
        // Over capacity: 10 observed in the last second, r = 1: sf = 0.9; a draw of 0.95
        // admits.
        draw.set(0.95);
        let a = call(&layer, PEER, &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "ok");
        let expected = if on { Some("0.900") } else { None };
        assert_eq!(a.header("x-suppression-factor"), expected, "on = {on}");
        // A shed request carries it either way: sf = 1 − 1/11.
        draw.set(0.0);
        let a = call(&layer, PEER, &[]).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.header("x-suppression-factor"), Some("0.909"), "on = {on}");
    }
}

#[tokio::test]
async fn rejection_body_chooses_the_wording_and_the_last_choice_wins() {
    let clock = ManualClock::new(0);
    let draw = FixedDraw::default();
    let rl = limiter(&clock, 1.0, &draw);
    let one_a_window = || RateLimitLayer::builder(rl.clone()).rate(rate(0.1));

    // `problem_json()` then `rejection_body(PlainText)`: plain text.
    let plain = build(
        one_a_window()
            .problem_json()
            .rejection_body(RejectionBody::PlainText),
    );
    assert_eq!(call(&plain, PEER, &[]).await.status, StatusCode::OK);
    let a = call(&plain, PEER, &[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(a.body.starts_with(b"Too Many Requests"), "{:?}", a.body);
    // The refusal is at 0 ms; bucket 0 counts until 100 + 10 000 ms (10.1 s, 11 rounded
    // up), but no advertised wait exceeds the policy's window: 10.
    assert_eq!(a.header("retry-after"), Some("10"));

    // `rejection_body(ProblemJson)` is `problem_json()`.
    let problem = build(one_a_window().rejection_body(RejectionBody::ProblemJson));
    let a = call(&problem, PEER, &[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    let body = std::str::from_utf8(&a.body).unwrap();
    assert!(
        body.starts_with(r#"{"type":"about:blank","title":"Too Many Requests","status":429"#),
        "{body}"
    );
    assert!(
        body.ends_with(r#","retry_after":10,"violated-policies":["default"]}"#),
        "{body}"
    );

    // `rejection_body(Custom(..))` is `rejection_fn(..)`: the hook's body, the layer's fields.
    let hook: Arc<sluicegate::layer::RejectionFn> = Arc::new(|rejection: &Rejection<'_>| {
        let mut resp = Response::new(Bytes::from(format!("custom {}", rejection.status())));
        *resp.status_mut() = rejection.status();
        resp
    });
    let custom = build(one_a_window().rejection_body(RejectionBody::Custom(hook)));
    let a = call(&custom, PEER, &[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.body, "custom 429 Too Many Requests");
    assert_eq!(a.header("retry-after"), Some("10"));
    assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=1;w=10"));
}

#[tokio::test]
async fn a_cost_fn_answering_zero_counts_one_unit() {
    let clock = ManualClock::new(0);
    let draw = FixedDraw::default();
    let rl = limiter(&clock, 1.0, &draw);
    let free = build(
        RateLimitLayer::builder(rl.clone())
            .rate(rate(0.3)) // 3 a window
            .cost_fn(|_| 0),
    );
    for used in 1..=3 {
        assert_eq!(call(&free, PEER, &[]).await.status, StatusCode::OK);
        assert_eq!(rl.local().absolute().usage("127.0.0.1"), used);
    }
    assert_eq!(
        call(&free, PEER, &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(rl.local().absolute().usage("127.0.0.1"), 3);

    // Beside it, a resolver's real cost counts in full: 2 of 3, then 2 more does not fit.
    let double = build(
        RateLimitLayer::builder(rl.clone())
            .rate(rate(0.3))
            .cost_fn(|_| 2),
    );
    let other = "127.0.0.2:4000";
    assert_eq!(call(&double, other, &[]).await.status, StatusCode::OK);
    assert_eq!(rl.local().absolute().usage("127.0.0.2"), 2);
    assert_eq!(
        call(&double, other, &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Usage of each key named, in order.
fn usages(rl: &RateLimiter, keys: &[&str]) -> Vec<u64> {
    keys.iter()
        .map(|k| rl.local().absolute().usage(k))
        .collect()
}

#[tokio::test]
async fn ipv6_prefix_groups_peers_and_clients_by_their_network() {
    let clock = ManualClock::new(0);
    let draw = FixedDraw::default();
    let rl = limiter(&clock, 1.0, &draw);
    let with = |key: PeerIp| {
        build(
            RateLimitLayer::builder(rl.clone())
                .rate(rate(10.0))
                .key(key),
        )
    };
    let a = "[2001:db8:1:2::5]:443";
    let b = "[2001:db8:1:2:ffff::9]:443"; // same /64 as a
    let c = "[2001:db8:1:3::5]:443"; // same /48 as a, another /64

    // The default groups by /64: a and b share a key, c has its own.
    let default = with(PeerIp::new());
    for peer in [a, b, c] {
        assert_eq!(call(&default, peer, &[]).await.status, StatusCode::OK);
    }
    assert_eq!(
        usages(&rl, &["2001:db8:1:2::/64", "2001:db8:1:3::/64"]),
        [2, 1]
    );

    // /48: all three in one key.
    let wide = with(PeerIp::new().ipv6_prefix(48));
    for peer in [a, b, c] {
        call(&wide, peer, &[]).await;
    }
    assert_eq!(usages(&rl, &["2001:db8:1::/48"]), [3]);

    // 128, and anything above it (clamped), key each address as written, with no prefix.
    for bits in [128, 200] {
        let exact = with(PeerIp::new().ipv6_prefix(bits));
        call(&exact, a, &[]).await;
        call(&exact, b, &[]).await;
    }
    assert_eq!(
        usages(&rl, &["2001:db8:1:2::5", "2001:db8:1:2:ffff::9"]),
        [2, 2]
    );

    // /0: every IPv6 client is one key. IPv4 peers are never grouped.
    let all = with(PeerIp::new().ipv6_prefix(0));
    call(&all, a, &[]).await;
    call(&all, c, &[]).await;
    call(&all, "10.1.2.3:80", &[]).await;
    assert_eq!(usages(&rl, &["::/0", "10.1.2.3"]), [2, 1]);

    // ClientIp: the client behind a trusted proxy, grouped by its own prefix.
    let behind = build(
        RateLimitLayer::builder(rl.clone())
            .rate(rate(10.0))
            .key(ClientIp::trusting(["10.0.0.0/8".parse().unwrap()]).ipv6_prefix(32)),
    );
    for client in ["2001:db8:abcd:1::5", "2001:db8:ffff::1"] {
        let answer = call(&behind, "10.0.0.1:80", &[("x-forwarded-for", client)]).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(usages(&rl, &["2001:db8::/32"]), [2]);
    // The default for ClientIp is /64 too.
    let behind64 = build(
        RateLimitLayer::builder(rl.clone())
            .rate(rate(10.0))
            .key(ClientIp::trusting(["10.0.0.0/8".parse().unwrap()])),
    );
    call(
        &behind64,
        "10.0.0.1:80",
        &[("x-forwarded-for", "2001:db8:abcd:1::5")],
    )
    .await;
    assert_eq!(usages(&rl, &["2001:db8:abcd:1::/64"]), [1]);
}

/// The default layer (metrics on) decides an IPv4 peer on its fast path and an IPv6 one
/// on the general path: both count `allowed`, `rejected` and near-limit requests alike,
/// and an IPv4-mapped IPv6 peer is the IPv4 address it carries.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn the_default_layer_counts_near_limit_requests_on_every_path() {
    use metrics_exporter_prometheus::PrometheusBuilder;
    // The only recorder of this test binary, installed before the layer is built.
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let metric = |series: &str| -> f64 {
        handle
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    let clock = ManualClock::new(0);
    let draw = FixedDraw::default();
    let rl = limiter(&clock, 1.0, &draw);
    // 5 a window: the 4th and 5th leave at least 80 % used.
    let layer = build(
        RateLimitLayer::builder(rl.clone())
            .rate(rate(0.5))
            .policy_name("near_paths"),
    );
    for peer in ["127.0.0.1:4000", "[2001:db8::1]:4000"] {
        for n in 1..=6 {
            let status = call(&layer, peer, &[]).await.status;
            let expected = if n <= 5 {
                StatusCode::OK
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            assert_eq!(status, expected, "{peer} request {n}");
        }
    }
    // The mapped form of 127.0.0.1 is the same key: already at its limit.
    assert_eq!(
        call(&layer, "[::ffff:127.0.0.1]:4000", &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(rl.local().absolute().usage("127.0.0.1"), 5);
    assert_eq!(rl.local().absolute().usage("2001:db8::/64"), 5);
    let requests = |outcome: &str| {
        metric(&format!(
            "sluicegate_requests_total{{policy=\"near_paths\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(requests("allowed"), 10.0);
    assert_eq!(requests("rejected"), 3.0);
    assert_eq!(
        metric("sluicegate_near_limit_total{policy=\"near_paths\"}"),
        4.0
    );
}

#[tokio::test]
async fn a_peer_address_at_the_key_cap_passes_and_one_over_is_refused_on_both_ipv4_paths() {
    let clock = ManualClock::new(0);
    let draw = FixedDraw::default();
    // Metrics on: the default path that counts near-limit requests; off: the plain one.
    for metrics in [true, false] {
        let rl = limiter(&clock, 1.0, &draw);
        let layer = |cap: usize| {
            build(
                RateLimitLayer::builder(rl.clone())
                    .rate(rate(1.0))
                    .headers_on_allowed(false)
                    .metrics(metrics)
                    .max_key_len(cap),
            )
        };
        let (at_cap, over_cap) = (layer(15), layer(14));
        let long_peer = "203.113.200.100:4000"; // 15 bytes of address text
        assert_eq!(
            call(&at_cap, long_peer, &[]).await.status,
            StatusCode::OK,
            "metrics {metrics}: 15 bytes under a cap of 15"
        );
        assert_eq!(rl.local().absolute().usage("203.113.200.100"), 1);
        assert_eq!(
            call(&over_cap, long_peer, &[]).await.status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "metrics {metrics}: 15 bytes over a cap of 14"
        );
        assert_eq!(
            rl.local().absolute().usage("203.113.200.100"),
            1,
            "metrics {metrics}: a refused key is never counted"
        );
        assert_eq!(
            call(&over_cap, "203.113.200.10:4000", &[]).await.status,
            StatusCode::OK,
            "metrics {metrics}: 14 bytes under a cap of 14"
        );
    }
}
