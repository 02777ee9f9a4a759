//! One whole run: start the server, show the answers, drive the load, tabulate, draw.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use sluicegate::RateLimiter;
use sluicegate::layer::Provider;

use crate::app::{self, Server};
use crate::load::{self, Exchange, Sample, Scenario};
use crate::report;

/// Where the limiter keeps its counts (the layer reaches it as a `layer::Provider`).
#[derive(Debug, Clone)]
pub enum Store {
    /// In-process.
    Local,
    /// A Redis server at this URL, one script call per decision.
    #[cfg(feature = "redis-tokio")]
    Redis(String),
    /// Local decisions, flushed to the Redis server at this URL in batches.
    #[cfg(feature = "redis-tokio")]
    Hybrid(String),
}

impl Store {
    /// The provider's name, for the output and the chart.
    pub fn name(&self) -> &'static str {
        match self {
            Store::Local => "local",
            #[cfg(feature = "redis-tokio")]
            Store::Redis(_) => "Redis",
            #[cfg(feature = "redis-tokio")]
            Store::Hybrid(_) => "hybrid",
        }
    }

    /// The limiter for `scenario`.
    pub async fn limiter(
        &self,
        scenario: &Scenario,
    ) -> Result<Arc<RateLimiter>, Box<dyn std::error::Error>> {
        match self {
            Store::Local => Ok(scenario.limits.local_limiter()?),
            #[cfg(feature = "redis-tokio")]
            Store::Redis(url) | Store::Hybrid(url) => networked_limiter(url, scenario.limits).await,
        }
    }

    /// How the layer reaches this provider.
    pub fn layer_provider(&self) -> Provider {
        match self {
            Store::Local => Provider::Local,
            #[cfg(feature = "redis-tokio")]
            Store::Redis(_) => Provider::Redis,
            #[cfg(feature = "redis-tokio")]
            Store::Hybrid(_) => Provider::Hybrid,
        }
    }
}

/// A limiter with a Redis connection; its keys go under a prefix of their own, so a run
/// never sees the counts of an earlier one.
#[cfg(feature = "redis-tokio")]
async fn networked_limiter(
    url: &str,
    limits: crate::app::Limits,
) -> Result<Arc<RateLimiter>, Box<dyn std::error::Error>> {
    use sluicegate::hybrid::SyncIntervalMs;
    use sluicegate::redis::{RedisKey, RedisRateLimiterOptions};
    use sluicegate::{RateLimiterOptions, redis::DEFAULT_REDIS_TIMEOUT};

    let client = redis::Client::open(url).map_err(|e| format!("Redis at {url}: {e}"))?;
    let connect = client.get_connection_manager();
    let connection_manager = tokio::time::timeout(DEFAULT_REDIS_TIMEOUT * 5, connect)
        .await
        .map_err(|_| format!("Redis at {url}: no answer within 5 s; is redis-server running?"))?
        .map_err(|e| format!("Redis at {url}: {e}; is redis-server running?"))?;
    let local = limits.options()?;
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let prefix = format!("sluicegate_demo_{started}_{}_{run}", std::process::id());
    let mut builder = RateLimiter::builder(RateLimiterOptions {
        local,
        redis: RedisRateLimiterOptions {
            connection_manager,
            prefix: Some(RedisKey::try_from(prefix)?),
            window_size_seconds: local.window_size_seconds,
            rate_group_size_ms: local.rate_group_size_ms,
            hard_limit_factor: local.hard_limit_factor,
            suppression_factor_cache_ms: local.suppression_factor_cache_ms,
            sync_interval_ms: SyncIntervalMs::default(),
        },
    });
    if let Some(max_keys) = limits.max_keys {
        builder = builder.max_keys(max_keys);
    }
    let limiter = Arc::new(builder.build()?);
    limiter.run_cleanup_loop();
    Ok(limiter)
}

/// Everything a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Every request of the load.
    pub samples: Vec<Sample>,
    /// The per-route table, as printed.
    pub table: String,
    /// Decisions the provider failed to make (let through).
    pub provider_errors: u64,
    /// `/search` under its two limits ([`load::search_tour`]), after the load.
    pub search: Vec<Exchange>,
}

/// Runs the demo end to end on a free loopback port and writes the chart to `chart`.
/// `on_ready` is told the server's address and the tour's answers before the load starts.
pub async fn run(
    scenario: &Scenario,
    provider: &Store,
    chart: &Path,
    progress: bool,
    on_ready: impl FnOnce(SocketAddr, &[Exchange]),
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let limiter = provider.limiter(scenario).await?;
    let app = app::app(limiter, scenario.limits, provider.layer_provider())?;
    let server = Server::start(app.router.clone(), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = server.addr;
    let tour = load::tour(addr).await?;
    on_ready(addr, &tour);
    let samples = load::drive(addr, scenario, progress).await?;
    let search = load::search_tour(addr).await?;
    server.stop().await?;
    let table = report::table(&samples, scenario);
    if let Some(dir) = chart.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    report::chart(&samples, scenario, provider.name(), chart)?;
    Ok(Outcome {
        samples,
        table,
        provider_errors: app.provider_errors(),
        search,
    })
}
