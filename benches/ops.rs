//! The metrics' cost on the allowed path: the layer in an axum `Router` (peer-IP key from
//! `ConnectInfo`, one route, `axum_body()`), with metrics off (`.metrics(false)`: no
//! counters, no usage read) and on (a Prometheus recorder from metrics-exporter-prometheus
//! installed before the layer is built: every request increments
//! `sluicegate_requests_total` and reads the usage the near-limit count needs), beside the
//! bare Router.
//!
//! Interleaved: each round runs every variant for `OPS_CALLS` requests (default 200,000),
//! in an order that rotates each round, and the report gives each variant's median ns a
//! request over the rounds (`OPS_ROUNDS`, default 15), the range, and the median of the
//! per-round differences on minus off (the target: at most +30 ns).
//!
//! ```text
//! cargo bench -p sluicegate-benches --bench ops
//! # instructions a request, one variant, without the machine's noise:
//! OPS_ONLY=router/allowed/metrics_on OPS_CALLS=5000 OPS_ROUNDS=1 valgrind --tool=callgrind \
//!   --collect-atstart=no --toggle-collect='ops::measured*' target/release/deps/ops-<hash>
//! ```
//! (callgrind's total divided by `OPS_CALLS × (OPS_ROUNDS + 1)`).

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{Request, Response, StatusCode};
use sluicegate::layer::RateLimitLayer;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{RateLimit, RateLimiterBuilder};
use tower::Service;

const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7)),
    40_000,
);

fn request() -> Request<Body> {
    let mut req = Request::new(Body::empty());
    req.extensions_mut().insert(ConnectInfo(PEER));
    req
}

fn one<S, B>(svc: &mut S, cx: &mut Context<'_>) -> StatusCode
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
{
    assert!(matches!(svc.poll_ready(cx), Poll::Ready(Ok(()))));
    let fut = pin!(svc.call(request()));
    match fut.poll(cx) {
        Poll::Ready(Ok(resp)) => resp.status(),
        _ => panic!("future not ready at once"),
    }
}

type Variant = Box<dyn FnMut(&mut Context<'_>) -> StatusCode>;

fn variant<S, B>(mut svc: S) -> Variant
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + 'static,
{
    Box::new(move |cx| one(&mut svc, cx))
}

fn router() -> Router {
    Router::new().route("/", get(|| async { StatusCode::OK }))
}

fn layer(metrics: bool) -> RateLimitLayer<sluicegate::layer::AxumBody> {
    let limiter = Arc::new(
        RateLimiterBuilder::new(LocalRateLimiterOptions {
            window_size_seconds: 10.try_into().unwrap(),
            rate_group_size_ms: 100.try_into().unwrap(),
            hard_limit_factor: Default::default(),
            suppression_factor_cache_ms: Default::default(),
        })
        .build()
        .unwrap(),
    );
    RateLimitLayer::builder(limiter)
        .rate(RateLimit::try_from(1e9).unwrap())
        .policy_name(if metrics { "on" } else { "off" })
        .metrics(metrics)
        .build()
        .unwrap()
        .axum_body()
}

/// `calls` requests through `call` (what callgrind counts).
#[inline(never)]
fn measured(call: &mut Variant, cx: &mut Context<'_>, calls: usize) {
    for _ in 0..calls {
        assert_eq!(black_box(call(cx)), StatusCode::OK);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let mut variants: Vec<(&str, Variant)> = vec![
        ("router/allowed/baseline", variant(router())),
        (
            "router/allowed/metrics_off",
            variant(router().layer(layer(false))),
        ),
        (
            "router/allowed/metrics_on",
            variant(router().layer(layer(true))),
        ),
    ];
    let mut cx = Context::from_waker(Waker::noop());
    let (calls, rounds) = (env("OPS_CALLS", 200_000), env("OPS_ROUNDS", 15));
    if let Ok(only) = std::env::var("OPS_ONLY") {
        variants.retain(|(name, _)| *name == only);
        assert_eq!(variants.len(), 1, "OPS_ONLY names one variant");
        for _ in 0..rounds + 1 {
            measured(&mut variants[0].1, &mut cx, calls);
        }
        return;
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds + 1 {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let call = &mut variants[i].1;
            let start = Instant::now();
            measured(call, &mut cx, calls);
            let per = start.elapsed().as_nanos() as f64 / calls as f64;
            // Round 0 warms up.
            if round > 0 {
                ns[i].push(per);
            }
        }
    }
    let diffs: Vec<f64> = ns[2].iter().zip(&ns[1]).map(|(on, off)| on - off).collect();
    for (i, (name, _)) in variants.iter().enumerate() {
        let mut v = ns[i].clone();
        let (lo, hi) = (
            v.iter().copied().fold(f64::MAX, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "{name:<30} median {:7.1} ns/request  range {lo:.1}-{hi:.1}",
            median(&mut v)
        );
    }
    let mut d = diffs.clone();
    let (lo, hi) = (
        d.iter().copied().fold(f64::MAX, f64::min),
        d.iter().copied().fold(f64::MIN, f64::max),
    );
    println!(
        "metrics on - off: median {:+.1} ns/request over {rounds} interleaved rounds (range {lo:+.1} to {hi:+.1})",
        median(&mut d)
    );
    let counted = prometheus
        .render()
        .lines()
        .find(|l| l.starts_with("sluicegate_requests_total{policy=\"on\",outcome=\"allowed\"}"))
        .map(str::to_owned)
        .expect("the metrics-on layer counted");
    println!("{counted}");
}
