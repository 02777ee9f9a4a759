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
//! ```text
//! cargo bench --bench layer --features axum
//! ```

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use sluicegate::layer::{KeyExtractor, PeerIp, RateLimitLayer, RequestHead};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{RateLimit, RateLimiterBuilder};
use tower::{Layer, Service};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

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

fn bench<S, B>(c: &mut Criterion, name: &str, mut svc: S, expect: StatusCode)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(one(&mut svc, &mut cx), expect, "{name}");
    c.bench_function(name, |b| b.iter(|| black_box(one(&mut svc, &mut cx))));
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

    // Allowed: rates the key never reaches.
    bench(c, "allowed/baseline", Ok200, StatusCode::OK);
    let ours = RateLimitLayer::new(limiter(), RateLimit::try_from(1e9).unwrap());
    bench(c, "allowed/sluicegate", ours.layer(Ok200), StatusCode::OK);
    let governor = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .finish()
        .unwrap();
    let governor = GovernorLayer::new(Arc::new(governor));
    bench(
        c,
        "allowed/tower_governor",
        governor.layer(Ok200),
        StatusCode::OK,
    );

    // Rejected: one request a window, spent before measuring.
    let ours = RateLimitLayer::new(limiter(), RateLimit::try_from(0.1).unwrap());
    let mut svc = ours.layer(Ok200);
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(one(&mut svc, &mut cx), StatusCode::OK);
    bench(c, "rejected/sluicegate", svc, StatusCode::TOO_MANY_REQUESTS);
    let governor = GovernorConfigBuilder::default()
        .per_second(3600)
        .burst_size(1)
        .finish()
        .unwrap();
    let mut svc = GovernorLayer::new(Arc::new(governor)).layer(Ok200);
    assert_eq!(one(&mut svc, &mut cx), StatusCode::OK);
    bench(
        c,
        "rejected/tower_governor",
        svc,
        StatusCode::TOO_MANY_REQUESTS,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = layer_benches
}
criterion_main!(benches);
