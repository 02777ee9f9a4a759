//! The demo (`examples/demo/`) in its quick form: the same server, tour, load, table and chart
//! as `cargo run --release --example demo`, with a 1 s window and 2 s of load, so a broken
//! demo fails CI. Real HTTP on a free loopback port.
#![cfg(feature = "tower")]

#[allow(dead_code)]
#[path = "../examples/demo/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../examples/demo/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../examples/demo/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../examples/demo/run.rs"]
mod run;

#[cfg(feature = "redis-tokio")]
mod support;

use load::{Exchange, Route, Sample, Scenario};
use report::Counts;
use run::{Outcome, Store};

fn counts(samples: &[Sample], route: Route, phase: Option<usize>) -> Counts {
    Counts::of(
        samples
            .iter()
            .filter(|s| s.route == route && phase.is_none_or(|p| s.phase == p)),
    )
}

/// Runs the quick demo on `provider`; returns the tour, the outcome and the chart's text.
async fn quick_demo(provider: &Store) -> (Vec<Exchange>, Outcome, String) {
    let chart = std::env::temp_dir().join(format!(
        "sluicegate-demo-smoke-{}-{}.svg",
        provider.name(),
        std::process::id()
    ));
    let mut tour = Vec::new();
    let outcome = run::run(&Scenario::quick(), provider, &chart, false, |addr, t| {
        assert!(addr.ip().is_loopback());
        tour = t.to_vec();
    })
    .await
    .expect("the quick demo runs");
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    let _ = std::fs::remove_file(&chart);
    (tour, outcome, svg)
}

fn header<T: std::str::FromStr>(e: &Exchange, name: &str) -> Option<T> {
    e.fields
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// The tour: health, no key (a 401 that says what to send), then a free key (5 per window)
/// six times. Exact providers admit 5 and refuse the 6th; the hybrid provider decides a new
/// key on its first lease from Redis, whose arrival depends on timing, so there it is only
/// bounded.
fn check_tour(tour: &[Exchange], exact: bool) {
    let statuses: Vec<u16> = tour.iter().map(|e| e.status).collect();
    assert_eq!(statuses[..2], [200, 401], "{statuses:?}");
    assert!(tour[1].body.contains("x-api-key"), "{}", tour[1].body);
    let free = &tour[2..];
    assert_eq!(free.len(), 6);
    if exact {
        assert_eq!(statuses[2..], [200, 200, 200, 200, 200, 429]);
    } else {
        assert!(
            free.iter().all(|e| e.status == 200 || e.status == 429),
            "{statuses:?}"
        );
        // A new key admits at least one call before its first lease, and one instance on a
        // key never admits more than the capacity (its first refresh reserves only what is
        // left of it): the tour runs inside one window, as the exact providers' 5-then-429
        // shows.
        assert_eq!(free[0].status, 200, "{statuses:?}");
        let admitted = free.iter().filter(|e| e.status == 200).count();
        assert!((1..=5).contains(&admitted), "{statuses:?}");
    }
    for refused in free.iter().filter(|e| e.status == 429) {
        assert!(header::<u64>(refused, "retry-after").is_some_and(|s| s >= 1));
        assert!(refused.fields.iter().any(|(n, _)| *n == "ratelimit"));
    }
}

/// `/search` (burst 3/s and minute 10/min together): rounds of 4, 4, 4, 2 requests 1.2 s
/// apart admit exactly 3, 3, 3, 1: a request either limit refused counted in neither.
/// Every 429 lists both policies, and the minute's 429 waits for the minute.
fn check_search(search: &[Exchange]) {
    let statuses: Vec<u16> = search.iter().map(|e| e.status).collect();
    let round = [200, 200, 200, 429];
    let want: Vec<u16> = [round, round, round]
        .concat()
        .into_iter()
        .chain([200, 429])
        .collect();
    assert_eq!(statuses, want);
    for refused in search.iter().filter(|e| e.status == 429) {
        let policy: String = header(refused, "ratelimit-policy").unwrap();
        assert_eq!(policy, "\"burst\";q=3;w=1, \"minute\";q=10;w=60");
        let retry: u64 = header(refused, "retry-after").unwrap();
        assert!(retry >= 1);
    }
    let last = search.last().unwrap();
    let retry: u64 = header(last, "retry-after").unwrap();
    // The first three went about 3.6 s before: the minute frees them 56-58 s later.
    assert!((55..=60).contains(&retry), "Retry-After {retry}");
    assert!(
        last.body.contains(r#""violated-policies":["minute"]"#),
        "{}",
        last.body
    );
    assert!(search[3].body.contains(r#""violated-policies":["burst"]"#));
}

/// What the load must show on every provider.
fn check_load(outcome: &Outcome, svg: &str) {
    let scenario = Scenario::quick();
    assert_eq!(outcome.provider_errors, 0, "the provider failed");
    check_search(&outcome.search);
    // Every planned request was answered.
    let samples = &outcome.samples;
    let planned: u64 = scenario
        .phases
        .iter()
        .flat_map(|p| Route::ALL.map(|r| (scenario.offered_per_s(r, p) * p.secs).round() as u64))
        .sum();
    assert_eq!(samples.len() as u64, planned);
    assert!(samples.iter().all(|s| s.status != 0), "a request failed");

    // Below the limit everything is admitted.
    for route in Route::ALL {
        let below = counts(samples, route, Some(0));
        assert_eq!(below.ok, below.offered, "{route:?} below the limit");
    }
    // /health is never limited.
    let health = counts(samples, Route::Health, None);
    assert_eq!(health.ok, health.offered);

    // /api: absolute, so over the limit it answers 429 with Retry-After, never 503.
    let api = counts(samples, Route::Api, None);
    assert!(api.too_many > 0, "{api:?}");
    assert_eq!(api.ok + api.too_many, api.offered, "{api:?}");
    assert!(
        samples
            .iter()
            .filter(|s| s.status == 429)
            .all(|s| s.retry_after_s.is_some_and(|r| r >= 1)),
        "every 429 carries Retry-After >= 1"
    );

    // /feed: suppressed, so it sheds with 503 and a factor, never 429; at 3x the hard limit
    // is crossed and the factor reaches 1.
    let feed = counts(samples, Route::Feed, None);
    assert_eq!(feed.too_many, 0, "{feed:?}");
    assert!(feed.unavailable > 0, "{feed:?}");
    assert!(
        samples
            .iter()
            .filter(|s| s.status == 503)
            .all(|s| s.suppression_factor.is_some_and(|f| f > 0.0 && f <= 1.0)),
        "every 503 carries a suppression factor in (0, 1]"
    );
    let flood = counts(samples, Route::Feed, Some(scenario.phases.len() - 1));
    assert_eq!(flood.factor.map(|(_, hi)| hi), Some(1.0), "{flood:?}");

    // The table names every route; the chart is an SVG with both panels.
    for route in Route::ALL {
        assert!(outcome.table.contains(route.path()), "{}", outcome.table);
    }
    assert!(svg.starts_with("<svg"), "not an SVG");
    assert!(svg.contains("GET /api") && svg.contains("GET /feed"));
    assert!(svg.contains("<polyline"), "no series drawn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_demo_on_the_local_provider() {
    let (tour, outcome, svg) = quick_demo(&Store::Local).await;
    check_tour(&tour, true);
    check_load(&outcome, &svg);
}

#[cfg(feature = "redis-tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_demo_on_the_redis_provider() {
    let redis = support::TestRedis::get();
    let (tour, outcome, svg) = quick_demo(&Store::Redis(redis.url().to_owned())).await;
    check_tour(&tour, true);
    check_load(&outcome, &svg);
}

#[cfg(feature = "redis-tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_demo_on_the_hybrid_provider() {
    let redis = support::TestRedis::get();
    let (tour, outcome, svg) = quick_demo(&Store::Hybrid(redis.url().to_owned())).await;
    check_tour(&tour, false);
    check_load(&outcome, &svg);
}
