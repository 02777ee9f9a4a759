//! The layer in front of a real tonic server (`grpc.health.v1`, from tonic-health), called
//! by a real tonic client over HTTP/2 on loopback: a refusal is `RESOURCE_EXHAUSTED` and a
//! shed `UNAVAILABLE`, each with the retry delay as `grpc-retry-pushback-ms` and as a
//! `google.rpc.RetryInfo` detail. Time is a `ManualClock`.

use std::sync::Arc;
use std::time::Duration;

use sluicegate::layer::{GlobalKey, Protocol, RateLimitLayer};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{HardLimitFactor, ManualClock, RateLimit, RateLimiterBuilder, Strategy};
use tonic::Code;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

/// A health server behind `layer`, on a free loopback port; a client connected to it.
async fn serve(layer: RateLimitLayer) -> HealthClient<Channel> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

fn limiter(clock: &ManualClock, hard: f64) -> Arc<sluicegate::RateLimiter> {
    Arc::new(
        RateLimiterBuilder::new(LocalRateLimiterOptions {
            window_size_seconds: 10.try_into().unwrap(),
            rate_group_size_ms: 100.try_into().unwrap(),
            hard_limit_factor: HardLimitFactor::try_from(hard).unwrap(),
            suppression_factor_cache_ms: 0.try_into().unwrap(),
        })
        .clock(clock.clone())
        .build()
        .unwrap(),
    )
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

#[tokio::test]
async fn a_refusal_is_resource_exhausted_with_the_retry_delay() {
    let clock = ManualClock::new(0);
    let layer = RateLimitLayer::builder(limiter(&clock, 1.0))
        .key(GlobalKey::new("grpc"))
        .rate(RateLimit::try_from(0.2).unwrap()) // 2 a window
        .protocol(Protocol::Grpc)
        .build()
        .unwrap();
    let mut client = serve(layer).await;
    for _ in 0..2 {
        let reply = client.check(check()).await.unwrap().into_inner();
        assert_eq!(reply.status, 1, "SERVING");
    }
    clock.advance(2_500);
    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("Too Many Requests"), "{status:?}");
    // Bucket 0 counts until 10.1 s; no advertised wait exceeds the window: 8 s from 2.5 s
    // (7.6 s, rounded up to whole seconds as Retry-After is).
    let pushback = status.metadata().get("grpc-retry-pushback-ms").unwrap();
    assert_eq!(pushback, "8000");
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(8)));
    // The layer's other fields ride along as metadata.
    assert_eq!(status.metadata().get("retry-after").unwrap(), "8");
    // Once the window frees the units, calls succeed again.
    clock.advance(8_000);
    assert!(client.check(check()).await.is_ok());
}

#[tokio::test]
async fn a_shed_is_unavailable() {
    let clock = ManualClock::new(0);
    // Hard limit at capacity: past it every call is shed.
    let layer = RateLimitLayer::builder(limiter(&clock, 1.0))
        .key(GlobalKey::new("grpc"))
        .rate(RateLimit::try_from(0.2).unwrap())
        .strategy(Strategy::Suppressed)
        .protocol(Protocol::Grpc)
        .build()
        .unwrap();
    let mut client = serve(layer).await;
    for _ in 0..2 {
        client.check(check()).await.unwrap();
    }
    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1_000..=10_000).contains(&pushback), "{pushback}");
    assert!(status.get_details_retry_info().is_some());
    let factor = status
        .metadata()
        .get(sluicegate::layer::SUPPRESSION_FACTOR.as_str())
        .expect("the suppression factor rides along");
    assert_eq!(factor, "1.000");
}
