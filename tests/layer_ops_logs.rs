//! The layer's logs, captured by a real `tracing` subscriber: a Redis outage writes one
//! warning a second (each with the failures it stands for), and a refusal is one debug line
//! with the policy and the key's fingerprint, never the key. A file of its own: `tracing`
//! caches each call site's interest process-wide, and tests on other threads without this
//! subscriber would race it.
#![cfg(all(feature = "axum", feature = "metrics", feature = "redis-tokio"))]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use metrics_exporter_prometheus::PrometheusBuilder;
use sluicegate::layer::RateLimitLayer;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{ManualClock, RateLimit, RateLimiterBuilder};

fn per_window(n: f64) -> RateLimit {
    RateLimit::try_from(n / 10.0).unwrap()
}

/// A `MakeWriter` into a shared buffer: what a real `fmt` subscriber writes.
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
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_outage_writes_one_warning_a_second_and_refusals_name_no_key() {
    use sluicegate::hybrid::SyncIntervalMs;
    use sluicegate::layer::Provider;
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // A Redis that is not there: every decision fails (the breaker answers at once).
    let mut redis = support::RedisServer::start();
    let manager = redis::Client::open(redis.url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    redis.kill();
    let clock = ManualClock::new(0);
    let local = LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: Default::default(),
    };
    let rl = Arc::new(
        RateLimiterBuilder::new(local)
            .clock(clock.clone())
            .redis_timeout(std::time::Duration::from_millis(50))
            .redis_connection(
                manager,
                support::redis_settings(
                    &local,
                    &support::unique_prefix("outage"),
                    SyncIntervalMs::default(),
                ),
            )
            .build()
            .unwrap(),
    );
    let layer = RateLimitLayer::builder(rl.clone())
        .rate(per_window(1.0))
        .provider(Provider::Redis)
        .policy_name("outage_t")
        .build()
        .unwrap();
    let svc = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone());
    let request = || {
        let mut req = http::Request::new(axum::body::Body::empty());
        req.extensions_mut()
            .insert("198.51.100.7:1".parse::<SocketAddr>().unwrap());
        req
    };
    use tower::ServiceExt;
    for second in 0..3u64 {
        for _ in 0..200 {
            let resp = svc.clone().oneshot(request()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "fails open");
        }
        clock.advance(1_000);
        let _ = second;
    }
    assert_eq!(layer.provider_errors(), 600);
    let warnings: Vec<_> = captured
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("provider failed"))
        .collect();
    assert_eq!(warnings.len(), 3, "one line a second: {warnings:#?}");
    assert!(warnings[0].contains("failures=1"), "{}", warnings[0]);
    assert!(warnings[1].contains("failures=200"), "{}", warnings[1]);
    assert!(
        prometheus.render().contains(
            "sluicegate_requests_total{policy=\"outage_t\",outcome=\"provider_error\"} 600"
        ),
        "{}",
        prometheus.render()
    );

    // A refusal is one debug line with the policy and a fingerprint, never the key.
    let local_layer = RateLimitLayer::builder(rl.clone())
        .rate(per_window(1.0))
        .policy_name("refusal_t")
        .build()
        .unwrap();
    let svc = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(local_layer);
    let statuses = [
        svc.clone().oneshot(request()).await.unwrap().status(),
        svc.clone().oneshot(request()).await.unwrap().status(),
    ];
    assert_eq!(statuses, [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    let refusals: Vec<_> = captured
        .lines()
        .into_iter()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "{:#?}", captured.lines());
    let line = &refusals[0];
    assert!(
        line.contains("DEBUG") && line.contains("policy=\"refusal_t\""),
        "{line}"
    );
    let fp = sluicegate::observe::fingerprint("198.51.100.7").to_string();
    assert!(line.contains(&format!("key={fp}")), "{line}");
    assert!(!line.contains("198.51.100.7"), "{line}");
}
