//! The cases of `benches/local.rs`, measured in interleaved rounds: on a shared machine a
//! burst of someone else's load lands on every subject alike instead of on whichever
//! criterion happened to be measuring, so the ratios hold still. Prints a table.
//!
//! ```text
//! cargo bench -p sluicegate-benches --bench ratios            # about a minute and a half
//! cargo bench -p sluicegate-benches --bench ratios -- 40      # rounds (default 60)
//! cargo bench -p sluicegate-benches --bench ratios -- hot_key 1k_keys   # only these cases
//! ```
//!
//! Each round runs one batch (about 2 ms) of every subject of a case, starting with a
//! different subject each round; a subject's figure is the median (and the best) of its
//! batches, in ns per call. The 1M-key cases run 30 times the rounds, after untimed rounds
//! covering one window (11 s), so that every key's window is full and steady (see `main`).
//! Limiters are configured as in `benches/local.rs`; for two threads the figure is the wall
//! time for each thread to make one call.
//!
//! Cache misses of a steady call on many keys (no timing; callgrind's cache simulation with
//! a 4 MB last-level cache, counting only the calls inside `steady_calls`; divide the `DLmr`
//! and `DLmw` totals by the calls). Subjects: `sluicegate`, `sluicegate_suppressed`,
//! `governor`, `trypema`, `trypema_suppressed`:
//!
//! ```text
//! cargo bench -p sluicegate-benches --bench ratios --no-run   # prints the binary's path
//! RATIOS_CACHEGRIND=sluicegate:100000:100000 valgrind --tool=callgrind --cache-sim=yes \
//!     --LL=4194304,16,64 --toggle-collect='*steady_calls*' --callgrind-out-file=cg.out \
//!     target/release/deps/ratios-<hash>
//! callgrind_annotate cg.out | grep 'PROGRAM TOTALS'   # Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
//! ```
//!
//! About 0.9 of each subject's misses a call are the bench's own: reading the key's `String`
//! from the key list and hashing its bytes.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota};
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    HardLimitFactor, RateGroupSizeMs, RateLimit, RateLimiter, RateLimiterBuilder,
    SuppressionFactorCacheMs, WindowSizeSeconds,
};
use trypema::RateLimiterBuilder as _;
use trypema::local::LocalRateLimiterProvider;

const WINDOW_S: u64 = 10;
const GROUP_MS: u64 = 100;
const HOT_RATE: f64 = 1e9;
const REJECT_RATE: f64 = 0.1;

/// Runs `calls` calls and says how long they took.
type Batch<'a> = Box<dyn Fn(u64) -> Duration + Sync + 'a>;

fn ours() -> RateLimiter {
    RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(WINDOW_S).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(GROUP_MS).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(1.5).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::try_from(100).unwrap(),
    })
    .build()
    .unwrap()
}

fn trypema_local() -> Arc<LocalRateLimiterProvider> {
    LocalRateLimiterProvider::builder()
        .window_size(trypema::WindowSize::seconds_or_panic(WINDOW_S))
        .bucket_size(trypema::BucketSize::milliseconds_or_panic(GROUP_MS))
        .hard_limit_factor(trypema::HardLimitFactor::new_or_panic(1.5))
        .suppression_factor_cache_period(
            trypema::SuppressionFactorCachePeriod::milliseconds_or_panic(100),
        )
        .disable_cleanup()
        .build()
        .unwrap()
}

/// As in `benches/local.rs`: `rate × window` cells of burst, refilled at `rate` per second.
fn governor_keyed(rate: f64) -> DefaultKeyedRateLimiter<String> {
    let burst = (rate * WINDOW_S as f64).clamp(1.0, u32::MAX as f64) as u32;
    let quota = if rate >= 1.0 {
        Quota::per_second(NonZeroU32::new(rate.min(u32::MAX as f64) as u32).unwrap())
    } else {
        Quota::with_period(Duration::from_secs_f64(1.0 / rate)).unwrap()
    };
    DefaultKeyedRateLimiter::keyed(quota.allow_burst(NonZeroU32::new(burst).unwrap()))
}

/// A batch of calls on `keys` round robin (each subject keeps its own position).
fn cycling<'a, T>(keys: &'a [String], call: impl Fn(&String) -> T + Sync + 'a) -> Batch<'a> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    Box::new(move |calls| {
        let mut i = next.load(std::sync::atomic::Ordering::Relaxed);
        let start = Instant::now();
        for _ in 0..calls {
            black_box(call(black_box(&keys[i])));
            i += 1;
            if i == keys.len() {
                i = 0;
            }
        }
        let took = start.elapsed();
        next.store(i, std::sync::atomic::Ordering::Relaxed);
        took
    })
}

/// A batch of `calls` calls on each of two threads at once.
fn two_threads<'a, T>(call: impl Fn() -> T + Sync + 'a) -> Batch<'a> {
    Box::new(move |calls| {
        // The wall time from the first thread's start to the last one's end, as the threads
        // see them: a descheduled main thread would read a late start.
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..calls {
                            black_box(call());
                        }
                        (start, Instant::now())
                    })
                })
                .collect();
            let spans: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let first = spans.iter().map(|s| s.0).min().unwrap();
            let last = spans.iter().map(|s| s.1).max().unwrap();
            last - first
        })
    })
}

/// Measures the subjects of one case in interleaved rounds; returns (name, median, best).
/// Untimed rounds first, for at least `warm_up` (and one batch of each subject).
fn measure(
    rounds: usize,
    per_call_ns: f64,
    warm_up: Duration,
    subjects: &[(&str, Batch<'_>)],
) -> Vec<(String, f64, f64)> {
    let calls = ((2e6 / per_call_ns) as u64).max(100);
    let started = Instant::now();
    let mut round = 0;
    loop {
        for j in 0..subjects.len() {
            (subjects[(round + j) % subjects.len()].1)(calls);
        }
        round += 1;
        if started.elapsed() >= warm_up {
            break;
        }
    }
    let mut samples = vec![Vec::with_capacity(rounds); subjects.len()];
    for round in 0..rounds {
        for j in 0..subjects.len() {
            let k = (round + j) % subjects.len();
            let took = (subjects[k].1)(calls);
            samples[k].push(took.as_nanos() as f64 / calls as f64);
        }
    }
    subjects
        .iter()
        .zip(samples)
        .map(|((name, _), mut s)| {
            s.sort_by(f64::total_cmp);
            (name.to_string(), s[s.len() / 2], s[0])
        })
        .collect()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user_{i:08}")).collect()
}

/// `RATIOS_CACHEGRIND=subject:keys:calls`: no timing; `keys` keys brought to the steady
/// state of the 1M-key rounds, then `calls` more calls round robin inside [`steady_calls`],
/// for callgrind's cache simulation to count alone (see the header). sluicegate runs on a
/// manual clock that moves [`CACHEGRIND_PERIOD_MS`] per pass over the keys, as the timed
/// rounds' real clock does at 1M keys; the peers run on their real clocks for 11 s.
fn cachegrind(spec: &str) {
    let mut parts = spec.split(':');
    let subject = parts.next().expect("RATIOS_CACHEGRIND=subject:keys:calls");
    let n: usize = parts.next().map_or(100_000, |s| s.parse().unwrap());
    let calls: usize = parts.next().map_or(200_000, |s| s.parse().unwrap());
    let keys = keys(n);
    let hot = RateLimit::try_from(HOT_RATE).unwrap();
    let t_hot = trypema::RateLimit::per_second_or_panic(HOT_RATE);
    let clock = sluicegate::ManualClock::new(1_000_000);
    let rl = RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(WINDOW_S).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(GROUP_MS).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(1.5).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::try_from(100).unwrap(),
    })
    .clock(clock.clone())
    .build()
    .unwrap();
    let (tr, gv) = (trypema_local(), governor_keyed(HOT_RATE));
    let call: Box<dyn Fn(&String)> = match subject {
        "sluicegate" => Box::new(|k| {
            black_box(rl.local().absolute().inc(k, &hot, 1));
        }),
        "sluicegate_suppressed" => Box::new(|k| {
            black_box(rl.local().suppressed().inc(k, &hot, 1));
        }),
        "trypema" => Box::new(|k| {
            black_box(tr.absolute().inc(k, &t_hot, 1));
        }),
        "trypema_suppressed" => Box::new(|k| {
            black_box(tr.suppressed().inc(k, &t_hot, 1));
        }),
        "governor" => Box::new(|k| {
            let _ = black_box(gv.check_key(k));
        }),
        other => panic!("unknown subject {other}"),
    };
    let ours = subject.starts_with("sluicegate");
    // The manual clock at call `i` of the run: `CACHEGRIND_PERIOD_MS` per pass.
    let tick = |i: usize| {
        if ours {
            clock.set(1_000_000 + (i as u64 * CACHEGRIND_PERIOD_MS) / n as u64);
        }
    };
    let mut i = 0;
    let started = Instant::now();
    let passes = (WINDOW_S * 1000 + 1000).div_ceil(CACHEGRIND_PERIOD_MS) as usize + 1;
    while if ours {
        i < passes * n
    } else {
        i < n || started.elapsed() < Duration::from_secs(WINDOW_S + 1)
    } {
        tick(i);
        call(&keys[i % n]);
        i += 1;
    }
    steady_calls(&keys, i, calls, &tick, &*call);
}

/// The simulated time a pass over every key takes in [`cachegrind`]: about what the 1M-key
/// rounds take with three subjects interleaved, so that a key holds as many buckets.
const CACHEGRIND_PERIOD_MS: u64 = 1500;

/// The calls callgrind counts (`--toggle-collect=*steady_calls*`).
#[inline(never)]
fn steady_calls(
    keys: &[String],
    from: usize,
    calls: usize,
    tick: &dyn Fn(usize),
    call: &dyn Fn(&String),
) {
    for i in from..from + calls {
        tick(i);
        call(&keys[i % keys.len()]);
    }
}

fn main() {
    if let Ok(spec) = std::env::var("RATIOS_CACHEGRIND") {
        return cachegrind(&spec);
    }
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60);
    // Any other argument picks cases by name: `-- 60 hot_key 2_threads`.
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<usize>().is_err() && !a.starts_with("--"))
        .collect();
    let wanted = |case: &str| names.is_empty() || names.iter().any(|n| case.contains(n.as_str()));
    let hot = RateLimit::try_from(HOT_RATE).unwrap();
    let t_hot = trypema::RateLimit::per_second_or_panic(HOT_RATE);
    let slow = RateLimit::try_from(REJECT_RATE).unwrap();
    let t_slow = trypema::RateLimit::per_second_or_panic(REJECT_RATE);

    println!("{rounds} interleaved rounds; ns per call, median (best)\n");
    println!(
        "| case | sluicegate | trypema | governor | trypema / sluicegate | governor / sluicegate |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let report = |case: &str, rows: Vec<(String, f64, f64)>| {
        let get = |name: &str| rows.iter().find(|r| r.0 == name).map(|r| (r.1, r.2));
        let ours = get("sluicegate").expect("sluicegate measured").0;
        let cell = |name: &str| get(name).map_or("–".into(), |(m, b)| format!("{m:.1} ({b:.1})"));
        let ratio =
            |name: &str| get(name).map_or("–".into(), |(m, _)| format!("{:.2}×", m / ours));
        println!(
            "| {case} | {} | {} | {} | {} | {} |",
            cell("sluicegate"),
            cell("trypema"),
            cell("governor"),
            ratio("trypema"),
            ratio("governor")
        );
    };

    // One key, always allowed.
    if wanted("hot_key") {
        let (rl, tr, gv) = (ours(), trypema_local(), governor_keyed(HOT_RATE));
        let one = keys(1);
        report(
            "absolute/hot_key",
            measure(
                rounds,
                50.0,
                Duration::ZERO,
                &[
                    (
                        "sluicegate",
                        cycling(&one, |k| rl.local().absolute().inc(k, &hot, 1)),
                    ),
                    (
                        "trypema",
                        cycling(&one, |k| tr.absolute().inc(k, &t_hot, 1)),
                    ),
                    ("governor", cycling(&one, |k| gv.check_key(k))),
                ],
            ),
        );
        report(
            "suppressed/hot_key",
            measure(
                rounds,
                50.0,
                Duration::ZERO,
                &[
                    (
                        "sluicegate",
                        cycling(&one, |k| rl.local().suppressed().inc(k, &hot, 1)),
                    ),
                    (
                        "trypema",
                        cycling(&one, |k| tr.suppressed().inc(k, &t_hot, 1)),
                    ),
                ],
            ),
        );
    }

    // Many keys, every one created before measuring.
    // With 1M keys, as many rounds as give each key about ten calls per subject, as in
    // `benches/local.rs`: every call then starts a new bucket on a key that has a few. Each
    // key gets only those few calls, so the first ones after the key's creation would be
    // timed while its window still grows: sluicegate's and trypema's per-key storage
    // allocates on a key's second bucket and again as it fills (governor keeps one cell),
    // and the heap grows into fresh pages. So the 1M-key rounds start only after untimed
    // rounds covering a whole window (plus a second): by then every key holds a window's
    // worth of buckets, old ones expire as new ones open, and nothing allocates, which is
    // the steady state of a server with a million active keys. With 1k keys every key gets
    // thousands of calls and the growth is lost in them.
    let full_window = Duration::from_secs(WINDOW_S + 1);
    for (label, n, per_call, rounds, warm_up) in [
        ("1k_keys", 1_000, 60.0, rounds, Duration::ZERO),
        ("1M_keys", 1_000_000, 400.0, rounds * 30, full_window),
    ] {
        if !wanted(label) {
            continue;
        }
        let keys = keys(n);
        let (rl, tr, gv) = (ours(), trypema_local(), governor_keyed(HOT_RATE));
        for k in &keys {
            rl.local().absolute().inc(k, &hot, 1);
            rl.local().suppressed().inc(k, &hot, 1);
            tr.absolute().inc(k, &t_hot, 1);
            tr.suppressed().inc(k, &t_hot, 1);
            let _ = gv.check_key(k);
        }
        report(
            &format!("absolute/{label}"),
            measure(
                rounds,
                per_call,
                warm_up,
                &[
                    (
                        "sluicegate",
                        cycling(&keys, |k| rl.local().absolute().inc(k, &hot, 1)),
                    ),
                    (
                        "trypema",
                        cycling(&keys, |k| tr.absolute().inc(k, &t_hot, 1)),
                    ),
                    ("governor", cycling(&keys, |k| gv.check_key(k))),
                ],
            ),
        );
        report(
            &format!("suppressed/{label}"),
            measure(
                rounds,
                per_call,
                warm_up,
                &[
                    (
                        "sluicegate",
                        cycling(&keys, |k| rl.local().suppressed().inc(k, &hot, 1)),
                    ),
                    (
                        "trypema",
                        cycling(&keys, |k| tr.suppressed().inc(k, &t_hot, 1)),
                    ),
                ],
            ),
        );
    }

    // A key kept over its limit (suppressed: over the hard limit, declined with factor 1).
    if wanted("reject") {
        let (rl, tr, gv) = (ours(), trypema_local(), governor_keyed(REJECT_RATE));
        let over = keys(1);
        for _ in 0..3 {
            rl.local().absolute().inc(&over[0], &slow, 1);
            rl.local().suppressed().inc(&over[0], &slow, 1);
            tr.absolute().inc(&over[0], &t_slow, 1);
            tr.suppressed().inc(&over[0], &t_slow, 1);
            let _ = gv.check_key(&over[0]);
        }
        assert!(!rl.local().absolute().inc(&over[0], &slow, 1).is_allowed());
        assert!(!rl.local().suppressed().inc(&over[0], &slow, 1).is_allowed());
        assert!(matches!(
            tr.absolute().inc(&over[0], &t_slow, 1),
            trypema::RateLimitDecision::Rejected { .. }
        ));
        assert!(gv.check_key(&over[0]).is_err());
        report(
            "absolute/reject",
            measure(
                rounds,
                50.0,
                Duration::ZERO,
                &[
                    (
                        "sluicegate",
                        cycling(&over, |k| rl.local().absolute().inc(k, &slow, 1)),
                    ),
                    (
                        "trypema",
                        cycling(&over, |k| tr.absolute().inc(k, &t_slow, 1)),
                    ),
                    ("governor", cycling(&over, |k| gv.check_key(k))),
                ],
            ),
        );
        report(
            "suppressed/reject",
            measure(
                rounds,
                50.0,
                Duration::ZERO,
                &[
                    (
                        "sluicegate",
                        cycling(&over, |k| rl.local().suppressed().inc(k, &slow, 1)),
                    ),
                    (
                        "trypema",
                        cycling(&over, |k| tr.suppressed().inc(k, &t_slow, 1)),
                    ),
                ],
            ),
        );
    }

    // Two threads on one hot key.
    if wanted("2_threads_one_key") {
        let (rl, tr, gv) = (ours(), trypema_local(), governor_keyed(HOT_RATE));
        let key = String::from("user_hot");
        report(
            "absolute/2_threads_one_key",
            measure(
                rounds,
                // About 20 ms a batch, so that the two threads really overlap.
                10.0,
                Duration::ZERO,
                &[
                    (
                        "sluicegate",
                        two_threads(|| rl.local().absolute().inc(black_box(&key), &hot, 1)),
                    ),
                    (
                        "trypema",
                        two_threads(|| tr.absolute().inc(black_box(&key), &t_hot, 1)),
                    ),
                    ("governor", two_threads(|| gv.check_key(black_box(&key)))),
                ],
            ),
        );
        report(
            "suppressed/2_threads_one_key",
            measure(
                rounds,
                // About 20 ms a batch, so that the two threads really overlap.
                10.0,
                Duration::ZERO,
                &[
                    (
                        "sluicegate",
                        two_threads(|| rl.local().suppressed().inc(black_box(&key), &hot, 1)),
                    ),
                    (
                        "trypema",
                        two_threads(|| tr.suppressed().inc(black_box(&key), &t_hot, 1)),
                    ),
                ],
            ),
        );
        assert!(rl.local().absolute().inc(&key, &hot, 1).is_allowed());
        assert!(gv.check_key(&key).is_ok(), "the hot key stayed allowed");
    }
}
