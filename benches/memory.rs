//! Memory per idle key: 1M keys with one call each, before and after cleanup, for both
//! strategies, beside trypema 2.x's local provider. Prints a table.
//!
//! ```text
//! cargo bench -p sluicegate-benches --bench memory
//! ```
//!
//! Each row runs in a fresh child process (this same binary with `--scenario NAME`), twice:
//! once on the plain system allocator for resident memory (`/proc/self/statm`), and once with
//! `dhat` counting live heap bytes (its own bookkeeping is not counted, and it is not running
//! in the resident-memory process). Keys are formatted into one reused buffer, so the
//! benchmark's own key strings never show up in the numbers.
//!
//! Cleanup: sluicegate drives a `ManualClock` past the window and calls `cleanup()`.
//! trypema's cleanup is its own loop, which drops keys idle for `stale_after`; it is started
//! (with a 1 s `stale_after`) only once the 1M keys are measured, and given time to pass.

use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    HardLimitFactor, ManualClock, RateGroupSizeMs, RateLimit, RateLimiter, RateLimiterBuilder,
    SuppressionFactorCacheMs, WindowSizeSeconds,
};
use trypema::RateLimiterBuilder as _;
use trypema::local::LocalRateLimiterProvider;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const KEYS: usize = 1_000_000;
const WINDOW_S: u64 = 10;
const GROUP_MS: u64 = 100;
const RATE: f64 = 100.0;

const SCENARIOS: [&str; 4] = [
    "sluicegate absolute",
    "sluicegate suppressed",
    "trypema absolute",
    "trypema suppressed",
];

/// What one child process reports: bytes at three points, for `KEYS` keys.
#[derive(Debug, Clone, Copy)]
struct Sample {
    empty: u64,
    full: u64,
    cleaned: u64,
}

impl Sample {
    fn parse(line: &str) -> Option<Sample> {
        let mut it = line.split_whitespace().map(|w| w.parse::<u64>().ok());
        Some(Sample {
            empty: it.next()??,
            full: it.next()??,
            cleaned: it.next()??,
        })
    }

    fn per_key(self) -> (f64, f64) {
        let per = |b: u64| b.saturating_sub(self.empty) as f64 / KEYS as f64;
        (per(self.full), per(self.cleaned))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scenario") {
        let scenario = args[i + 1].as_str();
        let counted = args.iter().any(|a| a == "--counted");
        child(scenario, counted);
        return;
    }

    println!(
        "{KEYS} idle keys, one call each; bytes per key above the empty limiter \
         (window {WINDOW_S} s, groups {GROUP_MS} ms)\n"
    );
    println!(
        "| limiter | RSS/key | RSS/key after cleanup | live heap/key | live heap/key after cleanup |"
    );
    println!("|---|---:|---:|---:|---:|");
    for scenario in SCENARIOS {
        let rss = run_child(scenario, false);
        let heap = run_child(scenario, true);
        let (rss_full, rss_clean) = rss.per_key();
        let (heap_full, heap_clean) = heap.per_key();
        println!(
            "| {scenario} | {rss_full:.1} | {rss_clean:.1} | {heap_full:.1} | {heap_clean:.1} |"
        );
    }
}

fn run_child(scenario: &str, counted: bool) -> Sample {
    let exe = std::env::current_exe().expect("own executable");
    let mut cmd = Command::new(exe);
    cmd.args(["--scenario", scenario]);
    if counted {
        cmd.arg("--counted");
    }
    let out = cmd.output().expect("child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Sample::parse(stdout.trim()).unwrap_or_else(|| panic!("{scenario}: bad report {stdout:?}"))
}

/// Resident bytes of this process, from `/proc/self/statm` (second field, in pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * page_size()
}

fn page_size() -> u64 {
    // The kernel's page size is what statm counts in; 4 KiB on x86-64 and most arm64 kernels.
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    smaps
        .lines()
        .find_map(|l| l.strip_prefix("KernelPageSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(4096, |kb| kb * 1024)
}

fn child(scenario: &str, counted: bool) {
    let profiler = counted.then(|| dhat::Profiler::builder().testing().build());
    let measure = || {
        if counted {
            dhat::HeapStats::get().curr_bytes as u64
        } else {
            rss_bytes()
        }
    };
    let mut key = String::with_capacity(32);
    let mut each_key = |f: &mut dyn FnMut(&str)| {
        for i in 0..KEYS {
            key.clear();
            write!(key, "user_{i:08}").unwrap();
            f(&key);
        }
    };

    let sample = match scenario {
        "sluicegate absolute" | "sluicegate suppressed" => {
            let clock = ManualClock::new(0);
            let rl = ours(clock.clone());
            let rate = RateLimit::try_from(RATE).unwrap();
            let empty = measure();
            let local = rl.local();
            if scenario.ends_with("absolute") {
                each_key(&mut |k| assert!(local.absolute().inc(k, &rate, 1).is_allowed()));
                assert_eq!(local.absolute().key_count(), KEYS);
            } else {
                each_key(&mut |k| assert!(local.suppressed().inc(k, &rate, 1).is_allowed()));
                assert_eq!(local.suppressed().key_count(), KEYS);
            }
            let full = measure();
            clock.advance(WINDOW_S * 1000 + GROUP_MS);
            assert_eq!(rl.cleanup(), KEYS);
            Sample {
                empty,
                full,
                cleaned: measure(),
            }
        }
        "trypema absolute" | "trypema suppressed" => {
            let tr = trypema_local();
            let rate = trypema::RateLimit::per_second_or_panic(RATE);
            let empty = measure();
            let allowed = |d| matches!(d, trypema::RateLimitDecision::Allowed);
            if scenario.ends_with("absolute") {
                each_key(&mut |k| assert!(allowed(tr.absolute().inc(k, &rate, 1))));
            } else {
                each_key(&mut |k| assert!(allowed(tr.suppressed().inc(k, &rate, 1))));
            }
            let full = measure();
            std::thread::sleep(TRYPEMA_STALE_AFTER);
            tr.start_cleanup_loop();
            std::thread::sleep(TRYPEMA_CLEANUP_INTERVAL * 3 + Duration::from_secs(1));
            tr.stop_cleanup_loop();
            Sample {
                empty,
                full,
                cleaned: measure(),
            }
        }
        other => panic!("unknown scenario {other:?}"),
    };
    println!("{} {} {}", sample.empty, sample.full, sample.cleaned);
    // The numbers were read with `HeapStats`; no report file is wanted.
    std::mem::forget(profiler);
}

fn ours(clock: ManualClock) -> RateLimiter {
    RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(WINDOW_S).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(GROUP_MS).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(1.5).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::default(),
    })
    .clock(clock)
    .build()
    .unwrap()
}

const TRYPEMA_STALE_AFTER: Duration = Duration::from_secs(1);
const TRYPEMA_CLEANUP_INTERVAL: Duration = Duration::from_millis(200);

fn trypema_local() -> Arc<LocalRateLimiterProvider> {
    LocalRateLimiterProvider::builder()
        .window_size(trypema::WindowSize::seconds_or_panic(WINDOW_S))
        .bucket_size(trypema::BucketSize::milliseconds_or_panic(GROUP_MS))
        .hard_limit_factor(trypema::HardLimitFactor::new_or_panic(1.5))
        .stale_after(TRYPEMA_STALE_AFTER)
        .cleanup_interval(TRYPEMA_CLEANUP_INTERVAL)
        .disable_cleanup()
        .build()
        .unwrap()
}
