//! The demo's server: three routes, two strategies, one limiter.
//!
//! - `GET /api`: absolute, keyed by the `x-api-key` header; `pro_` keys get 50 requests per
//!   window, any other key 5; no key is `401` with a body that says to send one.
//! - `GET /feed`: suppressed, keyed by the client's IP, 50 requests per window; the limiter's
//!   hard limit factor (1.5) is where shedding becomes total.
//! - `GET /search`: two absolute limits together, keyed by `x-api-key` (401 without):
//!   `burst` 3 per 1 s and `minute` 10 per 60 s, both in 100 ms groups, decided all or
//!   nothing (a request one refuses counts in neither). Its 429s list both policies and a
//!   `Retry-After` that covers the wait until both admit; the problem+json body names the
//!   violated ones. The same limits in the full and the quick run.
//! - `GET /health`: not limited.
//!
//! The window is 10 s in the full demo (so 5 requests/s for `pro_` keys and for the feed) and
//! 1 s in the quick run, which replays the same story ten times faster.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use http::HeaderName;
use sluicegate::Strategy;
use sluicegate::layer::{HeaderKey, PeerIp, Provider, RateLimitLayer};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::policy::{Limit, LimitName, LimitSet, Quota};
use sluicegate::{RateGroupSizeMs, RateLimit, RateLimiter, RateLimiterBuilder};
use tokio::net::TcpListener;

/// The header `/api` is keyed by.
pub const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// Requests per window for a `pro_` key on `/api`, and for one client IP on `/feed`.
pub const PRO_PER_WINDOW: f64 = 50.0;
/// Requests per window for any other key on `/api`.
pub const FREE_PER_WINDOW: f64 = 5.0;
/// `/feed`: full shedding once the observed load reaches this multiple of the capacity.
pub const HARD_LIMIT_FACTOR: f64 = 1.5;
/// `/search`: (name, requests, window in seconds) of its two limits.
pub const SEARCH_LIMITS: [(&str, f64, u64); 2] = [("burst", 3.0, 1), ("minute", 10.0, 60)];
/// `/search`'s limits count in groups this wide.
pub const SEARCH_GROUP_MS: u64 = 100;

/// `/search`'s set: `burst` 3 per 1 s and `minute` 10 per 60 s, in 100 ms groups.
pub fn search_limits() -> Result<LimitSet, sluicegate::Error> {
    let group = RateGroupSizeMs::try_from(SEARCH_GROUP_MS)?;
    let limits = SEARCH_LIMITS
        .iter()
        .map(|&(name, count, window_s)| {
            Limit::new(LimitName::new(name)?, Quota::new(count, window_s)?).group(group)
        })
        .collect::<Result<Vec<_>, _>>()?;
    LimitSet::new(limits)
}

/// How the limiter is set up: the window, and how fine its buckets are.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The window every route's budget refills over, in seconds.
    pub window_s: u64,
    /// The key budget (`--max-keys N`): at most this many keys held; new keys past it are
    /// refused (the layer answers them by its provider-error policy). `None`: no cap.
    pub max_keys: Option<usize>,
}

impl Limits {
    /// Requests per second a `pro_` key (and a feed client) may make on average.
    pub fn limit_per_s(self) -> f64 {
        PRO_PER_WINDOW / self.window_s as f64
    }

    /// The limiter's settings: buckets of a hundredth of the window, the suppression factor
    /// re-estimated as often.
    pub fn options(self) -> Result<LocalRateLimiterOptions, sluicegate::Error> {
        let grain_ms = self.window_s * 10;
        Ok(LocalRateLimiterOptions {
            window_size_seconds: self.window_s.try_into()?,
            rate_group_size_ms: grain_ms.try_into()?,
            hard_limit_factor: HARD_LIMIT_FACTOR.try_into()?,
            suppression_factor_cache_ms: grain_ms.try_into()?,
        })
    }

    /// The in-process limiter.
    pub fn local_limiter(self) -> Result<Arc<RateLimiter>, sluicegate::Error> {
        let mut builder = RateLimiterBuilder::new(self.options()?);
        if let Some(max_keys) = self.max_keys {
            builder = builder.max_keys(max_keys);
        }
        let limiter = Arc::new(builder.build()?);
        // Drops idle keys in the background; stops when the limiter is dropped.
        limiter.run_cleanup_loop();
        Ok(limiter)
    }
}

/// The demo's app: the router, and its layers (cheap clones) to read their counters.
pub struct App {
    /// The routes.
    pub router: Router,
    layers: Vec<RateLimitLayer>,
}

impl App {
    /// How many decisions a networked provider failed to make (each one let through: the
    /// layers fail open, the default). Always 0 on the local provider.
    pub fn provider_errors(&self) -> u64 {
        self.layers
            .iter()
            .map(RateLimitLayer::provider_errors)
            .sum()
    }
}

/// The routes on `limiter`, decided by `provider`. One limiter; a layer per route, each
/// built from one base builder (a clone per route). A new route is one more entry in
/// `limited` (or a plain `.route` for an unlimited one).
pub fn app(
    limiter: Arc<RateLimiter>,
    limits: Limits,
    provider: Provider,
) -> Result<App, sluicegate::Error> {
    let window = limits.window_s as f64;
    let base = RateLimitLayer::builder(limiter).provider(provider);
    let api = base
        .clone()
        .key(HeaderKey::new(API_KEY))
        .rate_fn(move |key, _req| {
            let per_window = if key.as_str().starts_with("pro_") {
                PRO_PER_WINDOW
            } else {
                FREE_PER_WINDOW
            };
            RateLimit::try_from(per_window / window).expect("plan rates are positive")
        })
        .strategy(Strategy::Absolute)
        .policy_name("api")
        .headers_on_allowed(true)
        .build()?;
    let feed = base
        .clone()
        .key(PeerIp::new())
        .rate(RateLimit::try_from(limits.limit_per_s())?)
        .strategy(Strategy::Suppressed)
        .policy_name("feed")
        .build()?;
    let search = base
        .key(HeaderKey::new(API_KEY))
        .limits(search_limits()?)
        .headers_on_allowed(true)
        .problem_json()
        .build()?;

    let limited = [
        ("/api", get(|| async { "api: ok\n" }), api),
        ("/feed", get(|| async { "feed: ok\n" }), feed),
        ("/search", get(|| async { "search: ok\n" }), search),
    ];
    let mut router = Router::new().route("/health", get(|| async { "ok\n" }));
    let mut layers = Vec::new();
    for (path, handler, layer) in limited {
        router = router.route(path, handler.layer(layer.clone()));
        layers.push(layer);
    }
    let router = router
        // `PeerIp` reads the connection's address from a `SocketAddr` request extension
        // (with the crate's `axum` feature it also reads axum's `ConnectInfo` itself).
        .layer(axum::middleware::map_request(copy_peer_addr));
    Ok(App { router, layers })
}

async fn copy_peer_addr(ConnectInfo(peer): ConnectInfo<SocketAddr>, mut req: Request) -> Request {
    req.extensions_mut().insert(peer);
    req
}

/// A running server: its address, and a handle that stops it.
pub struct Server {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Serves `router` on `addr` (port 0: any free port).
    pub async fn start(router: Router, addr: SocketAddr) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Server { addr, stop, task })
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server to end.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.task.await.map_err(std::io::Error::other)?
    }

    /// Waits until the server ends (it serves until the process is interrupted).
    pub async fn wait(self) -> std::io::Result<()> {
        // Keep the stop sender alive: dropping it would shut the server down.
        let Server { stop, task, .. } = self;
        let result = task.await.map_err(std::io::Error::other)?;
        drop(stop);
        result
    }
}
