//! The Redis provider on a loopback Redis: sequential latency (p50 / p99) and the
//! throughput of 64 concurrent tasks on one multiplexed connection, for both strategies,
//! beside three floors (a raw `EVALSHA` of a one-line script; the same with sluicegate's keys
//! and arguments; a script doing the least a limiter that records a call must: `TIME`, one
//! `HMGET`, one `HSET`) and trypema 2.x's Redis provider.
//!
//! ```sh
//! cargo bench -p sluicegate-benches --bench redis
//! # against a running server on this machine instead of one started by the bench:
//! SLUICEGATE_REDIS_URL=redis://127.0.0.1:6379/ cargo bench -p sluicegate-benches --bench redis
//! ```
//!
//! Before criterion's own runs it prints a table, from nine rounds of every subject in turn,
//! each round starting with a different subject (so load from elsewhere on the machine falls
//! on all of them alike): p50 / p99 over 18 000 sequential calls over 100 keys and on one
//! key, the median round of 64 tasks × 200 calls over 100 keys and on one key, the server's
//! time per script call (`INFO commandstats`; `SLUICEGATE_BENCH_COMMANDSTATS=1` prints every
//! command's), and the ratios the targets are stated in. Every subject uses a 60 s window
//! with 10 ms groups, a hard limit factor of 1.5, a rate no call reaches (the admitted path),
//! and the same `ConnectionManager` type from the same redis crate. Over 100 keys, a key
//! comes back every 100 calls: sequential calls are further apart than a group, so nearly
//! every one opens a new bucket and expires an old one; how many of the tasks' calls add
//! into an open bucket instead depends on the throughput itself. On one key nearly every call
//! adds into the open bucket (sluicegate's cheapest path).
//!
//! Read ratios from the table, not from criterion's groups: criterion measures each subject
//! in its own few seconds, one after another, and on a shared machine the load moves between
//! them (the floors alone moved 3x between the table and criterion in one run), so a ratio
//! of two criterion figures says as much about the neighbours as about the limiters. The
//! criterion groups measure the same calls as the table (64 tasks over 100 keys).

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use redis::aio::ConnectionManager;
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisKey, RedisRateLimiterOptions};
use sluicegate::{RateLimit, RateLimiter, RateLimiterOptions};
use trypema::RateLimiterBuilder as _;

const KEYS: usize = 100;
const SEQUENTIAL_CALLS: usize = 18_000;
const TASKS: usize = 64;
const CALLS_PER_TASK: usize = 200;
const ROUNDS: usize = 9;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    RawEvalsha,
    RawOurArgs,
    RawReadWrite,
    Absolute,
    Suppressed,
    TrypemaAbsolute,
    TrypemaSuppressed,
}

impl Subject {
    const ALL: [Subject; 7] = [
        Subject::RawEvalsha,
        Subject::RawOurArgs,
        Subject::RawReadWrite,
        // Each of ours next to trypema's, so both see the same moment of the machine.
        Subject::Absolute,
        Subject::TrypemaAbsolute,
        Subject::Suppressed,
        Subject::TrypemaSuppressed,
    ];

    fn name(self) -> &'static str {
        match self {
            Subject::RawEvalsha => "raw_evalsha_return_1",
            Subject::RawOurArgs => "raw_evalsha_our_arguments",
            Subject::RawReadWrite => "raw_evalsha_time_hmget_hset",
            Subject::Absolute => "sluicegate_absolute",
            Subject::Suppressed => "sluicegate_suppressed",
            Subject::TrypemaAbsolute => "trypema_absolute",
            Subject::TrypemaSuppressed => "trypema_suppressed",
        }
    }
}

/// Everything the subjects call, sharing one multiplexed connection each.
struct Bench {
    conn: ConnectionManager,
    floor: redis::Script,
    floor_with_arguments: redis::Script,
    floor_read_write: redis::Script,
    ours: RateLimiter,
    theirs: Arc<trypema::redis::RedisRateLimiterProvider>,
    our_keys: Vec<RedisKey>,
    their_keys: Vec<trypema::redis::RedisKey>,
    our_rate: RateLimit,
    their_rate: trypema::RateLimit,
}

impl Bench {
    async fn new(url: &str, run: &str) -> Self {
        let client = redis::Client::open(url).unwrap();
        let conn = client.get_connection_manager().await.unwrap();
        let local = LocalRateLimiterOptions {
            window_size_seconds: 60.try_into().unwrap(),
            rate_group_size_ms: 10.try_into().unwrap(),
            hard_limit_factor: 1.5.try_into().unwrap(),
            suppression_factor_cache_ms: Default::default(),
        };
        let ours = RateLimiter::new(RateLimiterOptions {
            local,
            redis: RedisRateLimiterOptions {
                connection_manager: client.get_connection_manager().await.unwrap(),
                prefix: Some(RedisKey::try_from(format!("bench_{run}")).unwrap()),
                window_size_seconds: local.window_size_seconds,
                rate_group_size_ms: local.rate_group_size_ms,
                hard_limit_factor: local.hard_limit_factor,
                suppression_factor_cache_ms: local.suppression_factor_cache_ms,
                sync_interval_ms: SyncIntervalMs::default(),
            },
        });
        let theirs = trypema::redis::RedisRateLimiterProvider::builder(
            client.get_connection_manager().await.unwrap(),
        )
        .prefix(trypema::redis::RedisKey::try_from(format!("trypema_{run}").as_str()).unwrap())
        .window_size(trypema::WindowSize::seconds(60).unwrap())
        .bucket_size(trypema::BucketSize::milliseconds(10).unwrap())
        .hard_limit_factor(trypema::HardLimitFactor::try_from(1.5).unwrap())
        .disable_cleanup()
        .build()
        .unwrap();
        Bench {
            conn,
            floor: redis::Script::new("return 1"),
            floor_with_arguments: redis::Script::new("return {0}"),
            // The commands of sluicegate's hot path with none of its logic: the time, one
            // read and one write of a hash of five fields.
            floor_read_write: redis::Script::new(
                "redis.call('TIME') \
                 local v = redis.call('HMGET', KEYS[2], 'n', 'l', 't', 'c', 'r') \
                 redis.call('HSET', KEYS[2], 'c', (tonumber(v[4]) or 0) + 1, \
                   't', (tonumber(v[3]) or 0) + 1) \
                 return {0}",
            ),
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

    async fn call(&self, subject: Subject, i: usize) {
        let k = i % KEYS;
        let admitted = match subject {
            Subject::RawEvalsha => {
                let mut conn = self.conn.clone();
                let one: i64 = self.floor.invoke_async(&mut conn).await.unwrap();
                one == 1
            }
            Subject::RawOurArgs | Subject::RawReadWrite => {
                // The same keys and arguments as sluicegate's absolute inc, to a script that
                // only answers (what the protocol and arguments cost), or that does the least
                // any limiter recording a call must: read the time, read the key, write it.
                let script = if subject == Subject::RawOurArgs {
                    &self.floor_with_arguments
                } else {
                    &self.floor_read_write
                };
                let mut conn = self.conn.clone();
                let list = format!("bench_floor:{{user{k}}}:a:b");
                let hash = format!("bench_floor:{{user{k}}}:a:h");
                let reply: Vec<i64> = script
                    .prepare_invoke()
                    .key(&list)
                    .key(&hash)
                    .arg("")
                    .arg(60u64)
                    .arg(10u64)
                    .arg("i")
                    .arg(1e7f64)
                    .arg(1u64)
                    .arg(6e8f64)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                reply == [0]
            }
            Subject::Absolute => self
                .ours
                .redis()
                .absolute()
                .inc(&self.our_keys[k], &self.our_rate, 1)
                .await
                .unwrap()
                .is_allowed(),
            Subject::Suppressed => self
                .ours
                .redis()
                .suppressed()
                .inc(&self.our_keys[k], &self.our_rate, 1)
                .await
                .unwrap()
                .is_allowed(),
            Subject::TrypemaAbsolute => matches!(
                self.theirs
                    .absolute()
                    .inc(&self.their_keys[k], &self.their_rate, 1)
                    .await
                    .unwrap(),
                trypema::RateLimitDecision::Allowed
            ),
            Subject::TrypemaSuppressed => matches!(
                self.theirs
                    .suppressed()
                    .inc(&self.their_keys[k], &self.their_rate, 1)
                    .await
                    .unwrap(),
                trypema::RateLimitDecision::Allowed
            ),
        };
        assert!(
            black_box(admitted),
            "{subject:?} refused a call far below its rate"
        );
    }

    /// `TASKS` tasks of `calls` calls each; returns the wall time. Over 100 keys, call `i`
    /// of task `t` takes key `(t + i * TASKS) % KEYS`: the calls in flight at any moment are
    /// on `TASKS` different keys, and each key comes back every `KEYS` calls, as in the
    /// sequential loop. On one key, every call of every task is on key 0, so nearly all of
    /// them add into its open bucket.
    async fn concurrent(
        self: &Arc<Self>,
        subject: Subject,
        calls: usize,
        one_key: bool,
    ) -> Duration {
        let started = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let bench = self.clone();
                tokio::spawn(async move {
                    for i in 0..calls {
                        let n = if one_key { 0 } else { t + i * TASKS };
                        bench.call(subject, n).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        started.elapsed()
    }
}

struct Summary {
    p50: Duration,
    p99: Duration,
    /// p50 of sequential calls on one key, nearly all into its open bucket.
    hot_p50: Duration,
    /// Median round's throughput of `TASKS` tasks over 100 keys.
    ops_per_s: f64,
    /// Throughput of each round over 100 keys, in order.
    rounds: Vec<f64>,
    /// The same on one key.
    hot_ops_per_s: f64,
    hot_rounds: Vec<f64>,
    /// Server time per script call (`INFO commandstats`, evalsha `usec / calls`).
    server_us: f64,
}

/// `(usec, calls)` of EVALSHA since the last `CONFIG RESETSTAT`, and every command's line.
async fn evalsha_stats(conn: &ConnectionManager) -> (f64, f64, Vec<String>) {
    let mut conn = conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let field = |line: &str, name: &str| -> f64 {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let evalsha = info.lines().find(|l| l.starts_with("cmdstat_evalsha:"));
    let lines = info
        .lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .map(str::to_owned)
        .collect();
    match evalsha {
        Some(line) => (field(line, "usec="), field(line, "calls="), lines),
        None => (0.0, 0.0, lines),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn reset_stats(conn: &ConnectionManager) {
    let mut conn = conn.clone();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Rounds of every subject in turn, so a burst of load from elsewhere on the machine falls
/// on all of them alike, starting with a different subject each round (as
/// `benches/ratios.rs` does), so that no subject always runs first or just after another:
/// latency samples pooled over the rounds, throughput the median round, server time summed
/// over the rounds.
async fn summarize_all(bench: &Arc<Bench>) -> Vec<(Subject, Summary)> {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); Subject::ALL.len()];
    let mut hot: Vec<Vec<Duration>> = vec![Vec::new(); Subject::ALL.len()];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); Subject::ALL.len()];
    let mut hot_rates: Vec<Vec<f64>> = vec![Vec::new(); Subject::ALL.len()];
    let mut server: Vec<(f64, f64)> = vec![(0.0, 0.0); Subject::ALL.len()];
    for subject in Subject::ALL {
        for i in 0..1_000 {
            bench.call(subject, i).await;
        }
    }
    for round in 0..ROUNDS {
        for j in 0..Subject::ALL.len() {
            let n = (round + j) % Subject::ALL.len();
            let subject = Subject::ALL[n];
            reset_stats(&bench.conn).await;
            // 100 keys in turn, and one key (call i picks key i % KEYS), in alternating
            // order from round to round: the second loop of a round measures slower here.
            for pass in 0..2 {
                let one_key = (pass + round) % 2 == 1;
                for i in 0..SEQUENTIAL_CALLS / ROUNDS {
                    let started = Instant::now();
                    if one_key {
                        bench.call(subject, i * KEYS).await;
                        hot[n].push(started.elapsed());
                    } else {
                        bench.call(subject, i).await;
                        samples[n].push(started.elapsed());
                    }
                }
            }
            // The same for the tasks: over 100 keys and on one key, in alternating order.
            for pass in 0..2 {
                let one_key = (pass + round) % 2 == 1;
                let took = bench.concurrent(subject, CALLS_PER_TASK, one_key).await;
                let rate = (TASKS * CALLS_PER_TASK) as f64 / took.as_secs_f64();
                if one_key {
                    hot_rates[n].push(rate);
                } else {
                    rates[n].push(rate);
                }
            }
            let (usec, calls, lines) = evalsha_stats(&bench.conn).await;
            server[n].0 += usec;
            server[n].1 += calls;
            if round == 0 && std::env::var_os("SLUICEGATE_BENCH_COMMANDSTATS").is_some() {
                // What each script spends its server time on: the commands it runs.
                println!("{}:", subject.name());
                for line in lines {
                    println!("    {line}");
                }
            }
        }
    }
    Subject::ALL
        .into_iter()
        .enumerate()
        .map(|(n, subject)| {
            samples[n].sort();
            hot[n].sort();
            let rounds = rates[n].clone();
            rates[n].sort_by(f64::total_cmp);
            let hot_rounds = hot_rates[n].clone();
            hot_rates[n].sort_by(f64::total_cmp);
            let s = &samples[n];
            let summary = Summary {
                p50: s[s.len() / 2],
                p99: s[s.len() * 99 / 100],
                hot_p50: hot[n][hot[n].len() / 2],
                ops_per_s: rates[n][rates[n].len() / 2],
                rounds,
                hot_ops_per_s: hot_rates[n][hot_rates[n].len() / 2],
                hot_rounds,
                server_us: server[n].0 / server[n].1,
            };
            (subject, summary)
        })
        .collect()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = support::TestRedis::get();
    let run = support::unique("run");
    let bench = Arc::new(runtime.block_on(Bench::new(redis.url(), &run)));

    println!(
        "redis at {}; {ROUNDS} rounds of every subject in turn: {SEQUENTIAL_CALLS} sequential \
         calls in all, {TASKS} tasks x {CALLS_PER_TASK} calls a round (median round)",
        redis.url()
    );
    let table = runtime.block_on(summarize_all(&bench));
    // The floor script's keys carry no TTL (it is the bare minimum): drop them.
    runtime.block_on(async {
        let mut conn = bench.conn.clone();
        for k in 0..KEYS {
            let _: () = redis::cmd("DEL")
                .arg(format!("bench_floor:{{user{k}}}:a:h"))
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    });
    for (subject, s) in &table {
        println!(
            "{:<24} p50 {:>7.1} us   p99 {:>7.1} us   one key p50 {:>7.1} us   {:>7.0} ops/s \
             (one key {:>7.0})   server {:>5.1} us/call",
            subject.name(),
            micros(s.p50),
            micros(s.p99),
            micros(s.hot_p50),
            s.ops_per_s,
            s.hot_ops_per_s,
            s.server_us
        );
    }
    let get = |subject| &table.iter().find(|(s, _)| *s == subject).unwrap().1;
    let floor = get(Subject::RawEvalsha);
    // Each p50 against the raw EVALSHA's on the same keys: 100 keys in turn (every call
    // opens a bucket and expires one), and one key (calls add into its open bucket).
    let ratio = |subject| {
        (
            micros(get(subject).p50) / micros(floor.p50),
            micros(get(subject).hot_p50) / micros(floor.hot_p50),
        )
    };
    let (keys, one) = ratio(Subject::RawReadWrite);
    println!(
        "{:<24} p50 / raw EVALSHA p50 = {keys:.2} over 100 keys, {one:.2} on one key (the \
         least any script that reads the time and records a call costs)",
        Subject::RawReadWrite.name(),
    );
    for (ours, theirs) in [
        (Subject::Absolute, Subject::TrypemaAbsolute),
        (Subject::Suppressed, Subject::TrypemaSuppressed),
    ] {
        // The throughput ratio of each round (ours and trypema's run back to back): median,
        // least and most.
        let spread = |a: &[f64], b: &[f64]| {
            let mut ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
            ratios.sort_by(f64::total_cmp);
            (
                ratios[ratios.len() / 2],
                ratios[0],
                ratios[ratios.len() - 1],
            )
        };
        let (m, lo, hi) = spread(&get(ours).rounds, &get(theirs).rounds);
        let (hm, hlo, hhi) = spread(&get(ours).hot_rounds, &get(theirs).hot_rounds);
        let (keys, one) = ratio(ours);
        println!(
            "{:<24} p50 / raw EVALSHA p50 = {keys:.2} over 100 keys, {one:.2} on one key \
             (target <= 1.5)   throughput / trypema = {m:.2} over 100 keys (median of the \
             rounds' ratios, {lo:.2}..{hi:.2}; target >= 1.3), {hm:.2} on one key \
             ({hlo:.2}..{hhi:.2})",
            ours.name(),
        );
    }

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    {
        let mut group = c.benchmark_group("redis_sequential");
        for subject in Subject::ALL {
            let bench = bench.clone();
            let mut i = 0;
            group.bench_function(subject.name(), |b| {
                b.to_async(&runtime).iter(|| {
                    i += 1;
                    let bench = bench.clone();
                    let n = i;
                    async move { bench.call(subject, n).await }
                })
            });
        }
        group.finish();
    }
    {
        let mut group = c.benchmark_group("redis_concurrent_64_tasks");
        group.throughput(Throughput::Elements(TASKS as u64));
        group.sample_size(20);
        for subject in Subject::ALL {
            let bench = bench.clone();
            group.bench_function(subject.name(), |b| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let bench = bench.clone();
                    async move { bench.concurrent(subject, iters as usize, false).await }
                })
            });
        }
        group.finish();
    }
    c.final_summary();
}
