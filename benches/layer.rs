//! The layer's per-request cost, beside a no-limiter baseline and tower_governor 0.8
//! configured alike (peer-IP key from axum's `ConnectInfo`, one client).
//!
//! Every variant does the same work around the middleware: build a request carrying the
//! peer address, `poll_ready`, `call`, and poll the future once (every future here is
//! ready at once, so a no-op waker is enough and no runtime is measured). The inner
//! service answers an empty `200` without allocating.
//!
//! - `allowed/*`: a rate the key never reaches.
//! - `rejected/*`: the key spent its one request before the measurement; every call is a
//!   429 (ours with `Retry-After` and the IETF fields, tower_governor's with its own
//!   headers).
//!
//! - `router/*`: the same in an axum `Router` (one route, the layer over it), where users
//!   put it; ours with `axum_body()` (`sluicegate_wrapped`: without it).
//!
//! ```text
//! cargo bench -p sluicegate-benches --bench layer
//! # instructions a request, one variant, without the machine's noise:
//! LAYER_ONLY=router/allowed/sluicegate LAYER_CALLS=4000 valgrind --tool=callgrind \
//!   --collect-atstart=no --toggle-collect='layer::variant::{{closure}}*' \
//!   target/release/deps/layer-<hash>
//! ```
//! (run it at 4,000 and 8,000 calls: the difference of callgrind's totals divided by 4,000
//! is one request, without the set-up's one call of every variant and the first requests).
//! Ours is the default configuration (metrics on, no recorder installed), the one most
//! users run.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use criterion::{Criterion, criterion_group};
use governor::middleware::NoOpMiddleware;
use http::{Request, Response, StatusCode};
use sluicegate::layer::{KeyExtractor, PeerIp, RateLimitLayer, RequestHead};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{RateLimit, RateLimiterBuilder};
use tower::{Layer, Service};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::PeerIpKeyExtractor;

/// The trivial inner service: an empty 200.
#[derive(Clone, Copy)]
struct Ok200;

impl Service<Request<Body>> for Ok200 {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        ready(Ok(Response::new(Body::empty())))
    }
}

const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7)),
    40_000,
);

fn request() -> Request<Body> {
    let mut req = Request::new(Body::empty());
    req.extensions_mut().insert(ConnectInfo(PEER));
    req
}

/// One request through `svc`, its future polled to completion; returns the status.
fn one<S, B>(svc: &mut S, cx: &mut Context<'_>) -> StatusCode
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("service not ready"),
    }
    let fut = pin!(svc.call(request()));
    match fut.poll(cx) {
        Poll::Ready(Ok(resp)) => resp.status(),
        _ => panic!("future not ready at once"),
    }
}

fn limiter() -> Arc<sluicegate::RateLimiter> {
    Arc::new(
        RateLimiterBuilder::new(LocalRateLimiterOptions {
            window_size_seconds: 10.try_into().unwrap(),
            rate_group_size_ms: 100.try_into().unwrap(),
            hard_limit_factor: Default::default(),
            suppression_factor_cache_ms: Default::default(),
        })
        .build()
        .unwrap(),
    )
}

/// One request through a service; every variant is called through the same `dyn`, so
/// the indirection costs them all alike.
type Variant = Box<dyn FnMut(&mut Context<'_>) -> StatusCode>;

fn variant<S, B>(mut svc: S) -> Variant
where
    S: Service<Request<Body>, Response = Response<B>> + 'static,
    S::Error: std::fmt::Debug,
{
    Box::new(move |cx| one(&mut svc, cx))
}

/// The trivial handler in a Router: an empty 200.
fn router() -> Router {
    Router::new().route("/", get(|| async { StatusCode::OK }))
}

/// tower_governor keyed by the peer IP (its default extractor reads `ConnectInfo`).
fn governor(per_ns: bool) -> GovernorLayer<PeerIpKeyExtractor, NoOpMiddleware, Body> {
    let mut b = GovernorConfigBuilder::default();
    let config = if per_ns {
        b.per_nanosecond(1).burst_size(u32::MAX).finish()
    } else {
        b.per_second(3600).burst_size(1).finish()
    };
    GovernorLayer::new(Arc::new(config.unwrap()))
}

/// The measured variants, each checked to answer as expected, with its expected status.
fn variants() -> Vec<(&'static str, Variant, StatusCode)> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out: Vec<(&'static str, Variant, StatusCode)> = Vec::new();

    // In an axum Router, where users put the layer: one route, the layer over it.
    out.push(("router/allowed/baseline", variant(router()), StatusCode::OK));
    // `axum_body()`: the layer answers with axum's own body, which the Router does not box.
    let ours = RateLimitLayer::new(limiter(), RateLimit::try_from(1e9).unwrap());
    out.push((
        "router/allowed/sluicegate",
        variant(router().layer(ours.axum_body())),
        StatusCode::OK,
    ));
    let ours = RateLimitLayer::new(limiter(), RateLimit::try_from(1e9).unwrap());
    out.push((
        "router/allowed/sluicegate_wrapped",
        variant(router().layer(ours)),
        StatusCode::OK,
    ));
    out.push((
        "router/allowed/tower_governor",
        variant(router().layer(governor(true))),
        StatusCode::OK,
    ));
    let ours = RateLimitLayer::new(limiter(), RateLimit::try_from(0.1).unwrap());
    let mut svc = router().layer(ours.axum_body());
    assert_eq!(one(&mut svc, &mut cx), StatusCode::OK);
    out.push((
        "router/rejected/sluicegate",
        variant(svc),
        StatusCode::TOO_MANY_REQUESTS,
    ));
    let mut svc = router().layer(governor(false));
    assert_eq!(one(&mut svc, &mut cx), StatusCode::OK);
    out.push((
        "router/rejected/tower_governor",
        variant(svc),
        StatusCode::TOO_MANY_REQUESTS,
    ));

    // The bare service, no Router: the middleware's own cost.

    // Allowed: rates the key never reaches.
    out.push(("allowed/baseline", variant(Ok200), StatusCode::OK));
    let ours = RateLimitLayer::new(limiter(), RateLimit::try_from(1e9).unwrap());
    out.push((
        "allowed/sluicegate",
        variant(ours.layer(Ok200)),
        StatusCode::OK,
    ));
    out.push((
        "allowed/tower_governor",
        variant(governor(true).layer(Ok200)),
        StatusCode::OK,
    ));

    // Rejected: one request a window, spent before measuring.
    let ours = RateLimitLayer::new(limiter(), RateLimit::try_from(0.1).unwrap());
    let mut svc = ours.layer(Ok200);
    assert_eq!(one(&mut svc, &mut cx), StatusCode::OK);
    out.push((
        "rejected/sluicegate",
        variant(svc),
        StatusCode::TOO_MANY_REQUESTS,
    ));
    let mut svc = governor(false).layer(Ok200);
    assert_eq!(one(&mut svc, &mut cx), StatusCode::OK);
    out.push((
        "rejected/tower_governor",
        variant(svc),
        StatusCode::TOO_MANY_REQUESTS,
    ));

    for (name, call, expect) in &mut out {
        assert_eq!(call(&mut cx), *expect, "{name}");
    }
    out
}

fn layer_benches(c: &mut Criterion) {
    // The parts of the allowed path, for reading the numbers below.
    let rl = limiter();
    let rate = RateLimit::try_from(1e9).unwrap();
    c.bench_function("parts/core_inc", |b| {
        b.iter(|| {
            black_box(
                rl.local()
                    .absolute()
                    .inc(black_box("198.51.100.7"), &rate, 1),
            )
        })
    });
    let req = request();
    let head = RequestHead::from(&req);
    c.bench_function("parts/peer_ip_key", |b| {
        b.iter(|| black_box(PeerIp::new().extract(black_box(&head))))
    });

    let mut cx = Context::from_waker(Waker::noop());
    for (name, mut call, _) in variants() {
        c.bench_function(name, |b| b.iter(|| black_box(call(&mut cx))));
    }
}

/// On a shared machine other processes inflate criterion's means unevenly between
/// variants measured seconds apart. This pass interleaves the variants in short slices
/// (the order rotated each round) and keeps each one's fastest slice: the cost with the
/// CPU to itself. The ratios are also taken within each round, from slices measured a few
/// milliseconds apart, and given as median and range over the rounds. Printed after the
/// criterion results as `paired`.
fn paired_summary() {
    const SLICE: u32 = 20_000;
    const ROUNDS: usize = 60;
    let mut cx = Context::from_waker(Waker::noop());
    let mut variants = variants();
    let n = variants.len();
    let mut rounds = vec![vec![0.0; n]; ROUNDS];
    for (r, round) in rounds.iter_mut().enumerate() {
        for k in 0..n {
            let i = (k + r) % n;
            let call = &mut variants[i].1;
            let start = std::time::Instant::now();
            for _ in 0..SLICE {
                black_box(call(&mut cx));
            }
            round[i] = start.elapsed().as_nanos() as f64 / f64::from(SLICE);
        }
    }
    let best: Vec<f64> = (0..n)
        .map(|i| rounds.iter().map(|r| r[i]).fold(f64::INFINITY, f64::min))
        .collect();
    let at = |name: &str| variants.iter().position(|v| v.0 == name).unwrap();
    println!("\npaired (fastest of {ROUNDS} interleaved slices of {SLICE} requests):");
    for (i, (name, _, _)) in variants.iter().enumerate() {
        println!("  {name:<32} {:>8.1} ns", best[i]);
    }
    // Median and range of a per-round figure.
    let spread = |f: &dyn Fn(&[f64]) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(|r| f(r)).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    for prefix in ["router/", ""] {
        let (base, ours, gov) = (
            at(&format!("{prefix}allowed/baseline")),
            at(&format!("{prefix}allowed/sluicegate")),
            at(&format!("{prefix}allowed/tower_governor")),
        );
        let (rej_ours, rej_gov) = (
            at(&format!("{prefix}rejected/sluicegate")),
            at(&format!("{prefix}rejected/tower_governor")),
        );
        let what = if prefix.is_empty() {
            "bare service"
        } else {
            "Router"
        };
        println!(
            "  {what}: allowed over baseline ({:.1} ns): sluicegate {:+.1} ns, tower_governor {:+.1} ns (fastest slices)",
            best[base],
            best[ours] - best[base],
            best[gov] - best[base],
        );
        let (m, lo, hi) = spread(&|r| (r[ours] - r[base]) - (r[gov] - r[base]));
        println!(
            "    per round, sluicegate's added cost minus tower_governor's: median {m:+.1} ns (range {lo:+.1} to {hi:+.1})"
        );
        let (m, lo, hi) = spread(&|r| r[rej_gov] / r[rej_ours]);
        println!(
            "    rejected: sluicegate {:.1} ns, tower_governor {:.1} ns; per round tower_governor / sluicegate: median {m:.1}x (range {lo:.1}-{hi:.1}x)",
            best[rej_ours], best[rej_gov],
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = layer_benches
}

fn main() {
    // `LAYER_ONLY=<variant> LAYER_CALLS=<n>`: only `n` requests of one variant, no timing,
    // for counting instructions under callgrind (immune to the machine's load):
    // the difference between two `n` is the cost of the extra requests.
    if let Ok(name) = std::env::var("LAYER_ONLY") {
        let calls: u32 = std::env::var("LAYER_CALLS").map_or(10_000, |n| n.parse().unwrap());
        let mut cx = Context::from_waker(Waker::noop());
        let (_, mut call, _) = variants()
            .into_iter()
            .find(|v| v.0 == name)
            .expect("no such variant");
        for _ in 0..calls {
            black_box(call(&mut cx));
        }
        return;
    }
    benches();
    paired_summary();
    Criterion::default().configure_from_args().final_summary();
}
