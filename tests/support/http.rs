//! Test support for the layer's tests: a real axum server on a free loopback port, and a
//! local limiter on a manual clock. Included by path (`#[path = "support/http.rs"]`), so
//! the layer tests that need no Redis do not build the Redis support beside it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{ManualClock, RateLimiter, RateLimiterBuilder};

/// Serves `app` on 127.0.0.1 with the peer address in `ConnectInfo`; its base URL.
pub async fn serve(app: Router) -> String {
    serve_on("127.0.0.1:0", app).await
}

/// Serves `app` on `bind` (a loopback address with port 0) with `ConnectInfo`.
pub async fn serve_on(bind: &str, app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    format!("http://{addr}")
}

/// Serves `app` on 127.0.0.1 without `ConnectInfo` (no peer address for the layer).
pub async fn serve_without_connect_info(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Local options: a window of `window_s`, 100 ms groups, the default hard limit and cache.
pub fn options(window_s: u64) -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: window_s.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: Default::default(),
    }
}

/// A local limiter with [`options`]`(window_s)` on `clock`.
pub fn limiter(clock: &ManualClock, window_s: u64) -> Arc<RateLimiter> {
    Arc::new(
        RateLimiterBuilder::new(options(window_s))
            .clock(clock.clone())
            .build()
            .unwrap(),
    )
}
