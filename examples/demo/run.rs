//! One whole run: start the server, show the answers, drive the load, tabulate, draw.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use sluicegate::RateLimiter;

use crate::app::{self, Server};
use crate::load::{self, Exchange, Sample, Scenario};
use crate::report;

/// Where the limiter keeps its counts.
#[derive(Debug, Clone)]
pub enum Provider {
    /// In-process.
    Local,
    /// A Redis server at this URL, one script call per decision.
    #[cfg(feature = "redis-tokio")]
    Redis(String),
}

impl Provider {
    /// The provider's name, for the output and the chart.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Local => "local",
            #[cfg(feature = "redis-tokio")]
            Provider::Redis(_) => "Redis",
        }
    }

    /// The limiter for `scenario`.
    pub async fn limiter(
        &self,
        scenario: &Scenario,
    ) -> Result<Arc<RateLimiter>, Box<dyn std::error::Error>> {
        match self {
            Provider::Local => Ok(scenario.limits.local_limiter()?),
            #[cfg(feature = "redis-tokio")]
            Provider::Redis(url) => Err(format!(
                "--redis {url}: the Redis provider is not wired into the demo yet"
            )
            .into()),
        }
    }
}

/// Everything a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Every request of the load.
    pub samples: Vec<Sample>,
    /// The per-route table, as printed.
    pub table: String,
}

/// Runs the demo end to end on a free loopback port and writes the chart to `chart`.
/// `on_ready` is told the server's address and the tour's answers before the load starts.
pub async fn run(
    scenario: &Scenario,
    provider: &Provider,
    chart: &Path,
    progress: bool,
    on_ready: impl FnOnce(SocketAddr, &[Exchange]),
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let limiter = provider.limiter(scenario).await?;
    let router = app::router(limiter, scenario.limits)?;
    let server = Server::start(router, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = server.addr;
    let tour = load::tour(addr).await?;
    on_ready(addr, &tour);
    let samples = load::drive(addr, scenario, progress).await?;
    server.stop().await?;
    let table = report::table(&samples, scenario);
    if let Some(dir) = chart.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    report::chart(&samples, scenario, provider.name(), chart)?;
    Ok(Outcome { samples, table })
}
