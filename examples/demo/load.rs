//! The load: an open-loop schedule of requests in phases, sent over real HTTP to the demo's
//! own server on loopback, with a progress bar per phase.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::app::{API_KEY, Limits};

/// At most this many requests in flight: the load is bounded even if the server stalls.
const MAX_IN_FLIGHT: usize = 64;
/// A request that takes longer than this counts as failed (status 0).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The `/api` key the load uses: a `pro_` plan.
pub const PRO_KEY: &str = "pro_demo";
/// The response fields worth showing.
const SHOWN_FIELDS: [&str; 4] = [
    "retry-after",
    "ratelimit-policy",
    "ratelimit",
    "x-suppression-factor",
];

/// The demo's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Absolute strategy, per API key.
    Api,
    /// Suppressed strategy, per client IP.
    Feed,
    /// Not limited.
    Health,
}

impl Route {
    /// Every route, in table order.
    pub const ALL: [Route; 3] = [Route::Api, Route::Feed, Route::Health];

    /// The request path.
    pub fn path(self) -> &'static str {
        match self {
            Route::Api => "/api",
            Route::Feed => "/feed",
            Route::Health => "/health",
        }
    }
}

/// A stretch of constant offered load on `/api` and `/feed`.
#[derive(Debug, Clone)]
pub struct Phase {
    /// What the phase is, for the progress bar and the table.
    pub name: &'static str,
    /// Offered load as a multiple of the limit.
    pub load: f64,
    /// How long it lasts.
    pub secs: f64,
}

/// The whole run: the limiter's settings, the phases, and how the chart bins time.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The limiter's window.
    pub limits: Limits,
    /// Phases, run back to back.
    pub phases: Vec<Phase>,
    /// Requests per second to `/health` throughout.
    pub health_per_s: f64,
    /// The chart's time resolution.
    pub bin_s: f64,
}

impl Scenario {
    /// The demo: a 10 s window (5 requests/s for a `pro_` key and for the feed), 28 s of load.
    pub fn full() -> Scenario {
        Scenario::scaled(10, 1.0)
    }

    /// The same story ten times faster: a 1 s window, 2.8 s of load.
    pub fn quick() -> Scenario {
        Scenario::scaled(1, 0.1)
    }

    fn scaled(window_s: u64, time: f64) -> Scenario {
        let phase = |name, load, secs: f64| Phase {
            name,
            load,
            secs: secs * time,
        };
        Scenario {
            limits: Limits {
                window_s,
                max_keys: None,
            },
            // `/feed`'s hard limit is 1.5x: the third phase stays under it, the fourth goes
            // over it, and the last shows how long the flood keeps counting after it ends.
            phases: vec![
                phase("below the limit", 0.6, 3.0),
                phase("at the limit", 1.0, 3.0),
                phase("1.3x: under the hard limit", 1.3, 9.0),
                phase("3x: over the hard limit", 3.0, 5.0),
                phase("load subsides", 0.6, 8.0),
            ],
            health_per_s: 2.0 / time,
            bin_s: time,
        }
    }

    /// Seconds from the start of the load to the end of the last phase.
    pub fn duration_s(&self) -> f64 {
        self.phases.iter().map(|p| p.secs).sum()
    }

    /// When each phase starts, in seconds from the start of the load.
    pub fn phase_starts(&self) -> Vec<f64> {
        self.phases
            .iter()
            .scan(0.0, |t, p| {
                let start = *t;
                *t += p.secs;
                Some(start)
            })
            .collect()
    }

    /// Requests per second offered to `route` during `phase`.
    pub fn offered_per_s(&self, route: Route, phase: &Phase) -> f64 {
        match route {
            Route::Api | Route::Feed => phase.load * self.limits.limit_per_s(),
            Route::Health => self.health_per_s,
        }
    }

    /// Every request of the run: when it is due (seconds from the start), where, in which
    /// phase; sorted by time.
    fn schedule(&self) -> Vec<(f64, Route, usize)> {
        let mut plan = Vec::new();
        for ((i, phase), start) in self.phases.iter().enumerate().zip(self.phase_starts()) {
            for route in Route::ALL {
                let rate = self.offered_per_s(route, phase);
                let n = (rate * phase.secs).round() as u64;
                plan.extend((0..n).map(|k| (start + k as f64 / rate, route, i)));
            }
        }
        plan.sort_by(|a, b| a.0.total_cmp(&b.0));
        plan
    }
}

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Where it went.
    pub route: Route,
    /// Index of the phase it belongs to.
    pub phase: usize,
    /// When it was sent, in seconds from the start of the load.
    pub sent_s: f64,
    /// The response status; 0 if no response came.
    pub status: u16,
    /// `x-suppression-factor`, if the response had one.
    pub suppression_factor: Option<f64>,
    /// `Retry-After` in seconds, if the response had one.
    pub retry_after_s: Option<u64>,
    /// The rate-limit fields of the response, to show.
    pub fields: Vec<(&'static str, String)>,
}

/// A request made by hand, and its answer.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request as a curl command.
    pub curl: String,
    /// The response status.
    pub status: u16,
    /// The rate-limit fields of the response.
    pub fields: Vec<(&'static str, String)>,
    /// The response body.
    pub body: String,
}

/// An HTTP client for loopback: no proxy (an environment proxy must never see this load).
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build()
}

fn shown_fields(response: &reqwest::Response) -> Vec<(&'static str, String)> {
    SHOWN_FIELDS
        .iter()
        .filter_map(|&name| {
            let value = response.headers().get(name)?.to_str().ok()?;
            Some((name, value.to_owned()))
        })
        .collect()
}

fn field<T: std::str::FromStr>(fields: &[(&'static str, String)], name: &str) -> Option<T> {
    fields
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// The tour before the load: one request of each kind a newcomer should see answered.
/// Uses its own key, so it does not touch the load's budgets.
pub async fn tour(addr: SocketAddr) -> reqwest::Result<Vec<Exchange>> {
    let client = client()?;
    let base = format!("http://{addr}");
    let mut out = vec![
        exchange(&client, &base, "/health", None).await?,
        exchange(&client, &base, "/api", None).await?,
    ];
    // A free key has 5 requests per window: the 6th is refused.
    for _ in 0..=crate::app::FREE_PER_WINDOW as usize {
        out.push(exchange(&client, &base, "/api", Some(TOUR_KEY)).await?);
    }
    Ok(out)
}

/// The key the `/search` tour uses.
pub const SEARCH_KEY: &str = "search_tour";

/// `/search` under its two limits, in real time: four requests at once (the burst's 3, then
/// a 429 from `burst`), three more rounds 1.2 s apart (a 1 s window in 100 ms groups has
/// let the last round go by then), until the minute's 10 are spent and a 429 from `minute`
/// says to wait for the oldest of them. Every refused request counts in neither limit, so
/// exactly 10 are admitted. About 3.6 s.
pub async fn search_tour(addr: SocketAddr) -> reqwest::Result<Vec<Exchange>> {
    let client = client()?;
    let base = format!("http://{addr}");
    let mut out = Vec::new();
    for (round, calls) in [4, 4, 4, 2].into_iter().enumerate() {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        for _ in 0..calls {
            out.push(exchange(&client, &base, "/search", Some(SEARCH_KEY)).await?);
        }
    }
    Ok(out)
}

/// The free key the tour uses.
pub const TOUR_KEY: &str = "free_tour";

async fn exchange(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    key: Option<&str>,
) -> reqwest::Result<Exchange> {
    let mut request = client.get(format!("{base}{path}"));
    let mut curl = format!("curl -i {base}{path}");
    if let Some(key) = key {
        request = request.header(API_KEY, key);
        curl = format!("curl -i -H '{API_KEY}: {key}' {base}{path}");
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let fields = shown_fields(&response);
    let body = response.text().await?;
    Ok(Exchange {
        curl,
        status,
        fields,
        body,
    })
}

/// Live counts of one phase, for its progress bar.
#[derive(Default)]
struct Tally {
    api: [AtomicU64; 2],
    feed: [AtomicU64; 2],
}

impl Tally {
    fn record(&self, route: Route, status: u16) {
        let slot = match route {
            Route::Api => &self.api,
            Route::Feed => &self.feed,
            Route::Health => return,
        };
        slot[usize::from(status != 200)].fetch_add(1, Ordering::Relaxed);
    }

    fn message(&self) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "/api 200:{} 429:{} | /feed 200:{} 503:{}",
            n(&self.api[0]),
            n(&self.api[1]),
            n(&self.feed[0]),
            n(&self.feed[1])
        )
    }
}

/// Runs the scenario against the server at `addr` and returns every request's outcome.
/// Progress bars go to stderr when `progress` is set (indicatif hides them when stderr is not
/// a terminal).
pub async fn drive(
    addr: SocketAddr,
    scenario: &Scenario,
    progress: bool,
) -> reqwest::Result<Vec<Sample>> {
    let client = client()?;
    let bars = MultiProgress::with_draw_target(if progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style =
        ProgressStyle::with_template("{prefix:<28} [{bar:24.cyan/blue}] {pos:>3}/{len:3} {msg}")
            .expect("the template is valid")
            .progress_chars("=> ");
    let plan = scenario.schedule();
    let phases: Vec<(ProgressBar, Arc<Tally>)> = scenario
        .phases
        .iter()
        .enumerate()
        .map(|(i, phase)| {
            let planned = plan.iter().filter(|p| p.2 == i).count() as u64;
            let bar = ProgressBar::hidden().with_style(style.clone());
            bar.set_length(planned);
            bar.set_prefix(format!(
                "{} ({:.1}/s)",
                phase.name,
                scenario.offered_per_s(Route::Api, phase)
            ));
            (bar, Arc::new(Tally::default()))
        })
        .collect();

    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let mut shown = None;
    for (due, route, phase) in plan {
        if shown != Some(phase) {
            // The phase's bar appears when its first request is due.
            bars.add(phases[phase].0.clone());
            shown = Some(phase);
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(due)).await;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut request = client.get(format!("http://{addr}{}", route.path()));
        if route == Route::Api {
            request = request.header(API_KEY, PRO_KEY);
        }
        let (bar, tally) = phases[phase].clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let sent_s = start.elapsed().as_secs_f64();
            let (status, fields) = match request.send().await {
                Ok(response) => {
                    let fields = shown_fields(&response);
                    // Read the body so the connection is reused.
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    (status, fields)
                }
                Err(_) => (0, Vec::new()),
            };
            drop(permit);
            tally.record(route, status);
            bar.set_message(tally.message());
            bar.inc(1);
            if bar.position() >= bar.length().unwrap_or(0) {
                bar.finish();
            }
            let _ = tx.send(Sample {
                route,
                phase,
                sent_s,
                status,
                suppression_factor: field(&fields, "x-suppression-factor"),
                retry_after_s: field(&fields, "retry-after"),
                fields,
            });
        });
    }
    drop(tx);
    let mut samples = Vec::new();
    while let Some(sample) = rx.recv().await {
        samples.push(sample);
    }
    for (bar, _) in &phases {
        bar.finish();
    }
    samples.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
    Ok(samples)
}
