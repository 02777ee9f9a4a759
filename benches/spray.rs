//! A key spray against a key budget: 5M distinct new keys thrown at a limiter whose budget
//! is 100k keys, under each `WhenFull` policy. Prints, per policy: the resident memory the
//! limiter holds after the spray against the budget's documented size (100k × the bytes per
//! key the `KeyBudget` docs give), the calls per second of the spray against calls on held
//! keys without it, and whether a key at its limit was still refused afterwards.
//!
//! ```text
//! cargo bench -p sluicegate-benches --bench spray              # 5M new keys, budget 100k
//! cargo bench -p sluicegate-benches --bench spray -- 1000000   # fewer new keys
//! ```
//!
//! Each policy runs in a fresh child process (this binary with `--policy NAME SPRAY [HELD]`),
//! so its resident memory is its own. Instructions per call, by callgrind: run one child
//! twice with different counts and divide the difference, e.g.
//!
//! ```text
//! B=target/release/deps/spray-*; for a in "200000 1000000" "400000 1000000" "200000 2000000"; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null $B --policy evict $a 2>&1 | grep refs
//! done   # (2nd - 1st) / 200k: a spray call; (3rd - 1st) / 1M: a held-key call
//! ```
//!
//! Keys are written into one reused buffer: the benchmark's own strings take no memory in
//! the numbers (formatting one costs about 420 instructions, in held and spray calls alike).

use std::fmt::Write as _;
use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    HardLimitFactor, KeyBudget, ManualClock, RateGroupSizeMs, RateLimit, RateLimitDecision,
    RateLimiterBuilder, SuppressionFactorCacheMs, WhenFull, WindowSizeSeconds,
};

const BUDGET: usize = 100_000;
/// The bytes per key the `KeyBudget` docs give for an absolute key with one bucket (at most:
/// a 64-byte aligned entry and its control byte at the tables' emptiest load).
const DOCUMENTED_BYTES_PER_KEY: u64 = 149;
const WINDOW_S: u64 = 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--policy") {
        let spray: usize = args[i + 2].parse().unwrap();
        let held = args.get(i + 3).map_or(2_000_000, |a| a.parse().unwrap());
        child(&args[i + 1], spray, held);
        return;
    }
    let spray: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let documented = BUDGET as u64 * DOCUMENTED_BYTES_PER_KEY;
    println!(
        "{spray} new keys sprayed at a budget of {BUDGET} keys (absolute); documented size \
         {:.1} MB ({DOCUMENTED_BYTES_PER_KEY} B a key)\n",
        documented as f64 / 1e6
    );
    println!(
        "| when full | RSS full, MB | RSS after spray, MB | of documented | held calls/s | spray calls/s | spray / held | limited key refused after |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for policy in ["refuse", "overflow", "evict"] {
        let exe = std::env::current_exe().expect("own executable");
        let out = Command::new(exe)
            .args(["--policy", policy, &spray.to_string()])
            .output()
            .expect("child runs");
        assert!(
            out.status.success(),
            "{policy} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let v: Vec<f64> = line
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        let (full, after, held_rate, spray_rate, refused) = (v[0], v[1], v[2], v[3], v[4]);
        println!(
            "| {policy} | {:.1} | {:.1} | {:.0} % | {:.2} M | {:.2} M | {:.2} | {} |",
            full / 1e6,
            after / 1e6,
            after / documented as f64 * 100.0,
            held_rate / 1e6,
            spray_rate / 1e6,
            spray_rate / held_rate,
            if refused == 1.0 { "yes" } else { "NO" }
        );
    }
}

/// Resident bytes of this process, from `/proc/self/statm` (second field, in 4 KiB pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn child(policy: &str, spray: usize, calls: usize) {
    let when_full = match policy {
        "refuse" => WhenFull::Refuse,
        "overflow" => WhenFull::Overflow,
        "evict" => WhenFull::Evict,
        other => panic!("unknown policy {other}"),
    };
    let clock = ManualClock::new(0);
    let rl = RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(WINDOW_S).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(100).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(1.5).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::try_from(100).unwrap(),
    })
    .key_budget(KeyBudget::new(BUDGET).when_full(when_full))
    .clock(clock.clone())
    .build()
    .unwrap();
    let empty = rss_bytes();
    let rate = RateLimit::try_from(100.0).unwrap();
    let mut key = String::with_capacity(32);

    // A client at its limit (capacity 1000), then the budget filled with ordinary keys.
    let victim = RateLimit::try_from(1.0).unwrap(); // capacity 10
    for _ in 0..10 {
        assert!(rl.local().absolute().inc("victim", &victim, 1).is_allowed());
    }
    assert!(!rl.local().absolute().inc("victim", &victim, 1).is_allowed());
    for i in 1..BUDGET {
        key.clear();
        write!(key, "held_{i:08}").unwrap();
        assert!(rl.local().absolute().inc(&key, &rate, 1).is_allowed());
    }
    assert_eq!(rl.key_count(), BUDGET);
    let full = rss_bytes() - empty;

    // Calls on held keys, no spray.
    let start = Instant::now();
    for i in 0..calls {
        key.clear();
        write!(key, "held_{:08}", 1 + i % (BUDGET - 1)).unwrap();
        black_box(rl.local().absolute().inc(&key, &rate, 1));
    }
    let held_rate = calls as f64 / start.elapsed().as_secs_f64();

    // The spray: every call a new key, the clock moving a millisecond per 1000 calls (5 s
    // over 5M keys: still inside the victim's window).
    let start = Instant::now();
    for i in 0..spray {
        if i % 1000 == 0 {
            clock.set(i as u64 / 1000);
        }
        key.clear();
        write!(key, "spray_{i:08}").unwrap();
        black_box(rl.local().absolute().inc(&key, &rate, 1));
    }
    let spray_rate = spray as f64 / start.elapsed().as_secs_f64();
    assert!(rl.key_count() <= BUDGET);
    let after = rss_bytes() - empty;
    let refused = matches!(
        rl.local().absolute().inc("victim", &victim, 1),
        RateLimitDecision::Rejected { .. }
    );
    println!(
        "{full} {after} {held_rate} {spray_rate} {}",
        u8::from(refused)
    );
}
