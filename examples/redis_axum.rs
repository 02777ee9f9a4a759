//! `RateLimitLayer` on Redis: several app instances share one budget per key. The same
//! layer type as the local examples; only `.provider(..)` changes.
//!
//! - `/`: per client IP on the Redis provider (one script round trip per request, exact
//!   across instances); if Redis is down, requests go through (fail open) and the layer
//!   counts the failures.
//! - `/api/items`: per API key on the hybrid provider (decisions in memory, flushed to Redis in
//!   the background), failing closed.
//!
//! ```text
//! redis-server --port 6379 --save "" --appendonly no &
//! cargo run --example redis_axum --features axum,redis-tokio   # an instance; prints its address
//! cargo run --example redis_axum --features axum,redis-tokio   # a second one, on another port
//! curl -i http://127.0.0.1:PORT1/ ; curl -i http://127.0.0.1:PORT2/   # one shared budget
//! ```
//! `SLUICEGATE_REDIS_URL` overrides `redis://127.0.0.1:6379/`; `PORT` picks the port
//! (default: any free one).

#[path = "common/redis.rs"]
mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use http::HeaderName;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::layer::{HeaderKey, Provider, ProviderErrorPolicy, RateLimitLayer};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisSettings;
use sluicegate::{RateLimit, RateLimiterBuilder};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("redis_axum example: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|e| format!("PORT={p}: {e}"))?,
        Err(_) => 0,
    };
    let (manager, url) = common::connect().await?;

    let local = LocalRateLimiterOptions {
        window_size_seconds: 60.try_into()?,
        rate_group_size_ms: 100.try_into()?,
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: Default::default(),
    };
    let limiter = Arc::new(
        RateLimiterBuilder::new(local)
            .redis_connection(
                manager,
                RedisSettings {
                    prefix: None,
                    window_size_seconds: local.window_size_seconds,
                    rate_group_size_ms: local.rate_group_size_ms,
                    hard_limit_factor: local.hard_limit_factor,
                    suppression_factor_cache_ms: local.suppression_factor_cache_ms,
                    sync_interval_ms: SyncIntervalMs::try_from(10)?,
                },
            )
            .build()?,
    );
    limiter.run_cleanup_loop();

    let pages = RateLimitLayer::builder(limiter.clone())
        .rate(RateLimit::per_minute(30.0)?)
        .provider(Provider::Redis)
        .headers_on_allowed(true)
        .build()?;
    let api = RateLimitLayer::builder(limiter)
        .key(HeaderKey::new(HeaderName::from_static("x-api-key")))
        .rate(RateLimit::try_from(10.0)?)
        .provider(Provider::Hybrid)
        .on_provider_error(ProviderErrorPolicy::FailClosed)
        .problem_json()
        .build()?;

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route_layer(pages.clone())
        .nest(
            "/api",
            Router::new()
                .route("/items", get(|| async { "items\n" }))
                .layer(api),
        );

    // Loopback only: this is an example.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("listening on {base} (Redis at {url}); Ctrl-C stops it. Try:");
    println!(
        "  curl -i {base}/                                   # 30 a minute per client IP, shared"
    );
    println!("  curl -i -H 'x-api-key: alice' {base}/api/items    # 10/s per key, hybrid");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            let failures = pages.provider_errors();
            if failures > 0 {
                eprintln!("Redis failures so far (requests let through): {failures}");
            }
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
