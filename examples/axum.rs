//! `RateLimitLayer` in an axum app: a budget per client IP on the public pages, and a
//! budget per route and API key (with plans by key prefix) on the API.
//!
//! ```text
//! cargo run --example axum --features axum            # prints its address and curl lines
//! PORT=3000 cargo run --example axum --features axum  # a port of your choice (loopback)
//! ```
//!
//! `scripts/wrk_layer.sh` also runs this binary with `--bench-target bare|layer [PORT]`: one
//! trivial route, without the layer or with it (local provider, a rate it never reaches).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use http::{HeaderName, StatusCode};
use sluicegate::layer::{
    Both, HeaderKey, KEY_SEPARATOR, KeyErrorPolicy, MatchedRoute, PeerIp, RateLimitLayer,
};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{RateLimit, RateLimiter, RateLimiterBuilder};

fn limiter() -> Result<Arc<RateLimiter>, sluicegate::Error> {
    let limiter = Arc::new(
        RateLimiterBuilder::new(LocalRateLimiterOptions {
            window_size_seconds: 10.try_into()?,
            rate_group_size_ms: 100.try_into()?,
            hard_limit_factor: Default::default(),
            suppression_factor_cache_ms: Default::default(),
        })
        .build()?,
    );
    // Drops idle keys in the background; stops when the limiter is dropped.
    limiter.run_cleanup_loop();
    Ok(limiter)
}

fn app(limiter: Arc<RateLimiter>) -> Result<Router, sluicegate::Error> {
    // The API: every (route, API key) pair has its own budget, by plan.
    let (free, pro) = (RateLimit::try_from(1.0)?, RateLimit::try_from(20.0)?);
    let api = Router::new()
        .route(
            "/items/{id}",
            get(|Path(id): Path<u32>| async move { format!("item {id}\n") }),
        )
        .route("/items", get(|| async { "all items\n" }))
        .layer(
            RateLimitLayer::builder(limiter.clone())
                .key(Both(
                    MatchedRoute,
                    HeaderKey::new(HeaderName::from_static("x-api-key")),
                ))
                .rate_fn(move |key, _req| {
                    // The key is "route<KEY_SEPARATOR>api key".
                    let plan = key
                        .as_str()
                        .rsplit(KEY_SEPARATOR)
                        .next()
                        .unwrap_or_default();
                    if plan.starts_with("pro_") { pro } else { free }
                })
                .policy_name("api")
                .headers_on_allowed(true)
                .on_key_error(KeyErrorPolicy::RejectWith(StatusCode::UNAUTHORIZED))
                .problem_json()
                .build()?,
        );

    // Public pages: 5 requests a second per client IP (IPv6 clients grouped by /64).
    Ok(Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route_layer(
            RateLimitLayer::builder(limiter)
                .key(PeerIp::new())
                .rate(RateLimit::try_from(5.0)?)
                .policy_name("pages")
                .build()?,
        )
        .nest("/api", api))
}

/// The wrk target: one trivial route, bare or behind a layer that never limits.
fn bench_target(limiter: Arc<RateLimiter>, with_layer: bool) -> Result<Router, sluicegate::Error> {
    let router = Router::new().route("/", get(|| async { "hello\n" }));
    if !with_layer {
        return Ok(router);
    }
    Ok(router.layer(RateLimitLayer::new(limiter, RateLimit::try_from(1e9)?)))
}

/// `PORT` from the environment, or 0 (any free port).
fn port_from_env() -> Result<u16, String> {
    match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|e| format!("PORT={p}: {e}")),
        Err(_) => Ok(0),
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let limiter = limiter()?;
    let (app, port, tour) = match args.first().map(String::as_str) {
        Some("--bench-target") => {
            let with_layer = match args.get(1).map(String::as_str) {
                Some("layer") => true,
                Some("bare") => false,
                _ => return Err("usage: axum --bench-target bare|layer [PORT]".into()),
            };
            let port = match args.get(2) {
                Some(p) => p.parse().map_err(|e| format!("port {p}: {e}"))?,
                None => port_from_env()?,
            };
            (bench_target(limiter, with_layer)?, port, false)
        }
        None => (app(limiter)?, port_from_env()?, true),
        Some(other) => {
            return Err(format!(
                "unknown argument `{other}`; usage: axum [--bench-target bare|layer [PORT]]"
            )
            .into());
        }
    };
    // Loopback only: this is an example.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("listening on {base}; Ctrl-C stops it");
    if tour {
        println!("  curl -i {base}/                                        # 5/s per client IP");
        println!("  curl -i {base}/api/items/1                             # 401: no key");
        println!(
            "  curl -i -H 'x-api-key: free_alice' {base}/api/items/1  # 1/s: the 11th in 10 s is 429"
        );
        println!("  curl -i -H 'x-api-key: pro_bob' {base}/api/items/1     # 20/s");
    }
    // The peer-IP key reads the connection's address: serve with connect info.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("axum example: {err}");
            ExitCode::FAILURE
        }
    }
}
