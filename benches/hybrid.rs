//! The hybrid provider on a loopback Redis of the bench's own: decision latency (p50 / p99)
//! beside the local provider on the same key and beside trypema 2.x's hybrid provider, and
//! the Redis commands per second the committer costs at 10k and at 100k decisions a second
//! over 100 keys.
//!
//! ```sh
//! cargo bench -p sluicegate-benches --bench hybrid
//! ```
//!
//! Latency: 200 000 sequential calls on one key after 20 000 of warm-up, each timed alone
//! (the timer's own cost is printed), on a 2-worker tokio runtime whose other worker runs
//! the committers. Every subject uses a 60 s window, 10 ms groups, a hard limit factor of
//! 1.5, a 10 ms sync interval and a rate no call reaches (the admitted path). Redis load:
//! decisions paced every millisecond for 3 s, round robin over 100 keys, with `CONFIG
//! RESETSTAT` before and `INFO stats` / `INFO commandstats` after, each run on a fresh
//! server and fresh limiters. `total_commands_processed` counts the commands scripts run
//! (`redis.call`) too; `EVALSHA` counts script calls.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisKey, RedisRateLimiterOptions};
use sluicegate::{RateLimit, RateLimiter, RateLimiterOptions};
use trypema::RateLimiterBuilder as _;

const WARM_UP: usize = 20_000;
const CALLS: usize = 200_000;
const KEYS: usize = 100;
/// As many rounds as subjects: each subject starts one round.
const ROUNDS: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    LocalAbsolute,
    HybridAbsolute,
    TrypemaHybridAbsolute,
    LocalSuppressed,
    HybridSuppressed,
    TrypemaHybridSuppressed,
}

impl Subject {
    const ALL: [Subject; 6] = [
        Subject::LocalAbsolute,
        Subject::HybridAbsolute,
        Subject::TrypemaHybridAbsolute,
        Subject::LocalSuppressed,
        Subject::HybridSuppressed,
        Subject::TrypemaHybridSuppressed,
    ];

    fn name(self) -> &'static str {
        match self {
            Subject::LocalAbsolute => "local_absolute",
            Subject::HybridAbsolute => "hybrid_absolute",
            Subject::TrypemaHybridAbsolute => "trypema_hybrid_absolute",
            Subject::LocalSuppressed => "local_suppressed",
            Subject::HybridSuppressed => "hybrid_suppressed",
            Subject::TrypemaHybridSuppressed => "trypema_hybrid_suppressed",
        }
    }
}

struct Bench {
    ours: RateLimiter,
    theirs: Arc<trypema::hybrid::HybridRateLimiterProvider>,
    our_keys: Vec<RedisKey>,
    their_keys: Vec<trypema::redis::RedisKey>,
    our_rate: RateLimit,
    their_rate: trypema::RateLimit,
}

async fn manager(url: &str) -> ConnectionManager {
    redis::Client::open(url)
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap()
}

impl Bench {
    async fn new(url: &str, run: &str) -> Self {
        let local = LocalRateLimiterOptions {
            window_size_seconds: 60.try_into().unwrap(),
            rate_group_size_ms: 10.try_into().unwrap(),
            hard_limit_factor: 1.5.try_into().unwrap(),
            suppression_factor_cache_ms: Default::default(),
        };
        let ours = RateLimiter::new(RateLimiterOptions {
            local,
            redis: RedisRateLimiterOptions {
                connection_manager: manager(url).await,
                prefix: Some(RedisKey::try_from(format!("bench_{run}")).unwrap()),
                window_size_seconds: local.window_size_seconds,
                rate_group_size_ms: local.rate_group_size_ms,
                hard_limit_factor: local.hard_limit_factor,
                suppression_factor_cache_ms: local.suppression_factor_cache_ms,
                sync_interval_ms: SyncIntervalMs::try_from(10).unwrap(),
            },
        });
        let theirs = trypema::hybrid::HybridRateLimiterProvider::builder(manager(url).await)
            .prefix(trypema::redis::RedisKey::try_from(format!("trypema_{run}").as_str()).unwrap())
            .sync_interval(trypema::hybrid::SyncInterval::milliseconds(10).unwrap())
            .window_size(trypema::WindowSize::seconds(60).unwrap())
            .bucket_size(trypema::BucketSize::milliseconds(10).unwrap())
            .hard_limit_factor(trypema::HardLimitFactor::try_from(1.5).unwrap())
            .disable_cleanup()
            .build()
            .unwrap();
        Bench {
            ours,
            theirs,
            our_keys: (0..KEYS)
                .map(|i| RedisKey::try_from(format!("user{i}")).unwrap())
                .collect(),
            their_keys: (0..KEYS)
                .map(|i| trypema::redis::RedisKey::try_from(format!("user{i}").as_str()).unwrap())
                .collect(),
            our_rate: RateLimit::try_from(1e7).unwrap(),
            their_rate: trypema::RateLimit::per_second(1e7).unwrap(),
        }
    }

    /// One decision on key `k`; whether it was admitted.
    async fn call(&self, subject: Subject, k: usize) -> bool {
        let ours = &self.our_keys[k];
        let theirs = &self.their_keys[k];
        match subject {
            Subject::LocalAbsolute => self
                .ours
                .local()
                .absolute()
                .inc(ours.as_str(), &self.our_rate, 1)
                .is_allowed(),
            Subject::LocalSuppressed => self
                .ours
                .local()
                .suppressed()
                .inc(ours.as_str(), &self.our_rate, 1)
                .is_allowed(),
            Subject::HybridAbsolute => self
                .ours
                .hybrid()
                .absolute()
                .inc(ours, &self.our_rate, 1)
                .await
                .unwrap()
                .is_allowed(),
            Subject::HybridSuppressed => self
                .ours
                .hybrid()
                .suppressed()
                .inc(ours, &self.our_rate, 1)
                .await
                .unwrap()
                .is_allowed(),
            Subject::TrypemaHybridAbsolute => matches!(
                self.theirs
                    .absolute()
                    .inc(theirs, &self.their_rate, 1)
                    .await
                    .unwrap(),
                trypema::RateLimitDecision::Allowed
            ),
            Subject::TrypemaHybridSuppressed => !matches!(
                self.theirs
                    .suppressed()
                    .inc(theirs, &self.their_rate, 1)
                    .await
                    .unwrap(),
                trypema::RateLimitDecision::Suppressed {
                    is_allowed: false,
                    ..
                } | trypema::RateLimitDecision::Rejected { .. }
            ),
        }
    }
}

struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    /// Mean of a tight loop timed as a whole (the fastest of 20 runs): free of the timer's
    /// cost and granularity, and of other processes as far as possible.
    mean: f64,
    admitted: usize,
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

async fn latency(bench: &Bench, subject: Subject) -> Latency {
    for _ in 0..WARM_UP {
        bench.call(subject, 0).await;
    }
    let mut samples = Vec::with_capacity(CALLS);
    let mut admitted = 0;
    for _ in 0..CALLS {
        let started = Instant::now();
        let ok = bench.call(subject, 0).await;
        samples.push(started.elapsed());
        admitted += usize::from(ok);
        if samples.len() % 256 == 0 {
            // Let the committer in if it shares this worker.
            tokio::task::yield_now().await;
        }
    }
    samples.sort();
    // The fastest of 20 runs of 10 000 calls: what a call costs when nothing else runs
    // (the machine may be shared).
    let mut mean = f64::INFINITY;
    for _ in 0..20 {
        let started = Instant::now();
        for _ in 0..10_000 {
            std::hint::black_box(bench.call(subject, 0).await);
        }
        mean = mean.min(ns(started.elapsed()) / 10_000.0);
        tokio::task::yield_now().await;
    }
    Latency {
        mean,
        p50: ns(samples[CALLS / 2]),
        p99: ns(samples[CALLS * 99 / 100]),
        p999: ns(samples[CALLS * 999 / 1000]),
        admitted,
    }
}

fn timer_cost() -> f64 {
    let mut samples: Vec<Duration> = (0..100_000)
        .map(|_| {
            let started = Instant::now();
            started.elapsed()
        })
        .collect();
    samples.sort();
    ns(samples[samples.len() / 2])
}

/// What the server counted since the last `CONFIG RESETSTAT`.
async fn server_counts(conn: &mut ConnectionManager) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("all")
        .query_async(conn)
        .await
        .unwrap();
    let field = |prefix: &str, key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key))
                    .or(Some(rest))
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("total_commands_processed:", ""),
        field("cmdstat_evalsha:", "calls="),
    )
}

async fn reset_stats(conn: &mut ConnectionManager) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}

struct Load {
    decisions_per_s: f64,
    commands_per_s: f64,
    evalsha_per_s: f64,
    /// Ours only: commands per flush cycle, whatever number of cycles the CPU allowed.
    commands_per_cycle: Option<f64>,
}

/// Paces `per_second` decisions round robin over the keys for `run`, counting what the
/// server processed meanwhile: a fresh server and fresh limiters for each run, so nothing
/// else talks to it.
async fn load(subject: Subject, per_second: u64, run: Duration) -> Load {
    let server = support::RedisServer::start();
    let bench = Bench::new(&server.url(), &support::unique("load")).await;
    let mut admin = manager(&server.url()).await;
    // One round over the keys first, so no key is new during the measurement.
    for k in 0..KEYS {
        bench.call(subject, k).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    reset_stats(&mut admin).await;
    let cycles_before = bench.ours.hybrid().stats().flushes;
    let per_tick = per_second / 1000;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    let mut done = 0u64;
    let mut k = 0;
    while started.elapsed() < run {
        tick.tick().await;
        for _ in 0..per_tick {
            bench.call(subject, k).await;
            k = (k + 1) % KEYS;
            done += 1;
        }
    }
    let took = started.elapsed().as_secs_f64();
    if std::env::var_os("HYBRID_BENCH_COMMANDSTATS").is_some() {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut admin)
            .await
            .unwrap();
        for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
            let calls = line
                .split("calls=")
                .nth(1)
                .and_then(|v| v.split(',').next());
            println!(
                "      {} {}/s",
                line.split(':').next().unwrap_or(""),
                calls
                    .and_then(|c| c.parse::<f64>().ok())
                    .map_or(0.0, |c| c / took)
                    .round()
            );
        }
    }
    let (commands, evalsha) = server_counts(&mut admin).await;
    let cycles = bench.ours.hybrid().stats().flushes - cycles_before;
    Load {
        commands_per_cycle: (subject == Subject::HybridAbsolute && cycles > 0)
            .then(|| commands.saturating_sub(1) as f64 / cycles as f64),
        decisions_per_s: done as f64 / took,
        // INFO itself is one command.
        commands_per_s: commands.saturating_sub(1) as f64 / took,
        evalsha_per_s: evalsha as f64 / took,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` and `cargo test --benches`: nothing to list or run.
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A server of our own: its command counts must be ours alone.
    let server = support::RedisServer::start();
    let run = support::unique("hybrid");
    let bench = runtime.block_on(Bench::new(&server.url(), &run));

    println!(
        "redis at {} (ours); timer cost {:.0} ns (included in every sample)",
        server.url(),
        timer_cost()
    );
    println!(
        "decision latency, one key, {CALLS} sequential calls after {WARM_UP} of warm-up; \
         {ROUNDS} rounds with the subjects interleaved, each figure the median of the rounds:"
    );
    let mut rounds: Vec<(Subject, Vec<Latency>)> =
        Subject::ALL.iter().map(|&s| (s, Vec::new())).collect();
    // Each round starts with a different subject (as `benches/ratios.rs` does), so no
    // subject always runs first, or always just after the same neighbour.
    for round in 0..ROUNDS {
        for j in 0..rounds.len() {
            let k = (round + j) % rounds.len();
            let (subject, runs) = &mut rounds[k];
            runs.push(runtime.block_on(latency(&bench, *subject)));
        }
    }
    let mut table = Vec::new();
    for (subject, runs) in rounds {
        let median = |f: fn(&Latency) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let l = Latency {
            p50: median(|l| l.p50),
            p99: median(|l| l.p99),
            p999: median(|l| l.p999),
            mean: median(|l| l.mean),
            admitted: runs.iter().map(|l| l.admitted).min().unwrap_or(0),
        };
        println!(
            "  {:<26} p50 {:>6.0} ns   p99 {:>6.0} ns   p99.9 {:>7.0} ns   best loop mean {:>5.1} ns   admitted {}/{CALLS}",
            subject.name(),
            l.p50,
            l.p99,
            l.p999,
            l.mean,
            l.admitted
        );
        table.push((subject, l));
    }
    let get = |subject| &table.iter().find(|(s, _)| *s == subject).unwrap().1;
    for (hybrid, local, theirs) in [
        (
            Subject::HybridAbsolute,
            Subject::LocalAbsolute,
            Subject::TrypemaHybridAbsolute,
        ),
        (
            Subject::HybridSuppressed,
            Subject::LocalSuppressed,
            Subject::TrypemaHybridSuppressed,
        ),
    ] {
        let (h, l, t) = (get(hybrid), get(local), get(theirs));
        println!(
            "  {:<26} p50 / local p50 = {:.2} (target <= 1.5; best loop means {:.2})   p99 = {:.2} us (target < 10)   p50 / trypema p50 = {:.2}",
            hybrid.name(),
            h.p50 / l.p50,
            h.mean / l.mean,
            h.p99 / 1000.0,
            h.p50 / t.p50
        );
    }

    println!("Redis load, 3 s paced over {KEYS} keys (absolute strategy):");
    let run_for = Duration::from_secs(3);
    for subject in [Subject::HybridAbsolute, Subject::TrypemaHybridAbsolute] {
        let mut rows = Vec::new();
        for rate in [10_000, 100_000] {
            let l = runtime.block_on(load(subject, rate, run_for));
            let per_cycle = l.commands_per_cycle.map_or(String::new(), |c| {
                format!("   {c:.0} commands a flush cycle")
            });
            println!(
                "  {:<26} offered {:>6}/s   achieved {:>8.0}/s   Redis commands {:>7.0}/s   EVALSHA {:>7.0}/s{per_cycle}",
                subject.name(),
                rate,
                l.decisions_per_s,
                l.commands_per_s,
                l.evalsha_per_s
            );
            rows.push(l);
        }
        let per_cycle = match (rows[0].commands_per_cycle, rows[1].commands_per_cycle) {
            (Some(a), Some(b)) => format!("   commands a cycle at 100k / at 10k = {:.3}", b / a),
            _ => String::new(),
        };
        println!(
            "  {:<26} commands/s at 100k / at 10k = {:.3} (target: within 10%){per_cycle}",
            subject.name(),
            rows[1].commands_per_s / rows[0].commands_per_s
        );
    }
}
