//! Check-and-add is one atomic step: 8 threads on one key never admit more than the
//! capacity, and admit exactly `floor(capacity)` once every thread has been refused a
//! single unit. The clock is a `ManualClock`, frozen while threads run and moved between
//! rounds, so expiry is exercised too.

use std::sync::{Arc, Barrier};
use std::thread;

use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    HardLimitFactor, ManualClock, RandomSource, RateGroupSizeMs, RateLimit, RateLimitDecision,
    RateLimiter, RateLimiterBuilder, SuppressionFactorCacheMs, WindowSizeSeconds,
};

const THREADS: usize = 8;
const WINDOW_S: u64 = 10;
const GROUP_MS: u64 = 100;
/// 100.05/s over 10 s: capacity 1000.5, so exactly 1000 units fit.
const RATE: f64 = 100.05;
const FITS: u64 = 1000;

/// A draw that never admits a shed call (the factor is always above 0 here, see below).
#[derive(Debug)]
struct AlwaysDecline;

impl RandomSource for AlwaysDecline {
    fn next_f64(&self) -> f64 {
        0.0
    }
}

/// A draw that admits every shed call whose factor is below 1.
#[derive(Debug)]
struct AlmostOne;

impl RandomSource for AlmostOne {
    fn next_f64(&self) -> f64 {
        1.0 - f64::EPSILON / 2.0 // the largest f64 below 1
    }
}

fn limiter(clock: &ManualClock, random: impl RandomSource) -> Arc<RateLimiter> {
    Arc::new(
        RateLimiterBuilder::new(LocalRateLimiterOptions {
            window_size_seconds: WindowSizeSeconds::try_from(WINDOW_S).unwrap(),
            rate_group_size_ms: RateGroupSizeMs::try_from(GROUP_MS).unwrap(),
            hard_limit_factor: HardLimitFactor::try_from(1.5).unwrap(),
            suppression_factor_cache_ms: SuppressionFactorCacheMs::try_from(0).unwrap(),
        })
        .clock(clock.clone())
        .random(random)
        .build()
        .unwrap(),
    )
}

/// The counts a thread offers, in turn: big ones first, so the window fills in uneven
/// steps, then single units until one is refused.
fn counts(thread: usize) -> impl Iterator<Item = u64> {
    let big = [7, 3, 13, 2, 5, 11, 4, 9][thread % 8];
    [big, 1, big / 2 + 1, 1].into_iter().cycle()
}

/// How long each thread of a round keeps calling.
#[derive(Clone, Copy)]
enum Until {
    /// Until the thread is refused a single unit: the window is then full.
    Full,
    /// For this many calls: the window fills partly, in this round's bucket.
    Calls(usize),
}

/// Runs `THREADS` threads against one key at once; returns the units the decisions
/// admitted, summed over all threads.
fn hammer(
    rl: &Arc<RateLimiter>,
    key: &'static str,
    until: Until,
    inc: fn(&RateLimiter, &str, u64) -> RateLimitDecision,
) -> u64 {
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let rl = Arc::clone(rl);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                let mut admitted = 0;
                for (call, count) in counts(t).enumerate() {
                    if let Until::Calls(calls) = until
                        && call == calls
                    {
                        return admitted;
                    }
                    let decision = inc(&rl, key, count);
                    if decision.is_allowed() {
                        admitted += count;
                    } else if count == 1 && matches!(until, Until::Full) {
                        // With the clock frozen usage only grows: one unit refused means full.
                        return admitted;
                    }
                }
                unreachable!("the cycle never ends")
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Rounds of 8 threads, the clock moved between them: partial rounds leave buckets of
/// different ages in the window, so each full round starts from a partly expired window
/// and must admit exactly what expired.
fn rounds(
    rl: &Arc<RateLimiter>,
    clock: &ManualClock,
    usage: impl Fn() -> u64,
    inc: fn(&RateLimiter, &str, u64) -> RateLimitDecision,
) {
    let plan = [
        (0, Until::Calls(6)),
        (1_500, Until::Calls(6)),
        (1_500, Until::Calls(6)),
        (1_500, Until::Full),
        (3_000, Until::Calls(4)),
        (3_050, Until::Full), // t = 10 550: the buckets of t = 0 have expired
        (1_450, Until::Full), // t = 12 000: those of t = 1 500 too
        (2_599, Until::Full), // t = 14 599: t = 3 000's bucket expired at 13 100
        (1, Until::Full),     // t = 14 600: the bucket of t = 4 500 expires now
        (10_100, Until::Calls(3)),
        (20_000, Until::Full), // everything expired
        (0, Until::Full),
    ];
    let mut full_rounds_that_admitted = 0;
    for (round, (step, until)) in plan.into_iter().enumerate() {
        clock.advance(step);
        let before = usage();
        let admitted = hammer(rl, "hot", until, inc);
        let after = usage();
        assert_eq!(
            before + admitted,
            after,
            "round {round}: admitted units are all counted"
        );
        assert!(
            after <= FITS,
            "round {round}: {after} units in a window of {FITS}"
        );
        if let Until::Full = until {
            assert_eq!(
                after, FITS,
                "round {round}: {before} live, {admitted} admitted"
            );
            if before > 0 && admitted > 0 {
                full_rounds_that_admitted += 1;
            }
        }
    }
    assert!(
        full_rounds_that_admitted >= 3,
        "the plan must refill partly expired windows"
    );
}

fn absolute_inc(rl: &RateLimiter, key: &str, count: u64) -> RateLimitDecision {
    let rate = RateLimit::try_from(RATE).unwrap();
    rl.local().absolute().inc(key, &rate, count)
}

fn suppressed_inc(rl: &RateLimiter, key: &str, count: u64) -> RateLimitDecision {
    let rate = RateLimit::try_from(RATE).unwrap();
    let decision = rl.local().suppressed().inc(key, &rate, count);
    // With `AlwaysDecline` only step 2 admits; a shed call that got through would be a bug.
    assert!(
        !matches!(
            decision,
            RateLimitDecision::Suppressed {
                is_allowed: true,
                ..
            }
        ),
        "a shed call was admitted: {decision:?}"
    );
    decision
}

#[test]
fn absolute_admits_exactly_the_capacity_from_eight_threads() {
    let clock = ManualClock::new(1_000_000);
    let rl = limiter(&clock, AlwaysDecline);
    let admitted = hammer(&rl, "hot", Until::Full, absolute_inc);
    assert_eq!(admitted, FITS);
    assert_eq!(rl.local().absolute().usage("hot"), FITS);
    assert!(!rl.local().absolute().is_allowed("hot").is_allowed());
}

#[test]
fn absolute_stays_exact_across_window_expiries() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock, AlwaysDecline);
    rounds(
        &rl,
        &clock,
        || rl.local().absolute().usage("hot"),
        absolute_inc,
    );
}

#[test]
fn suppressed_step_two_admits_exactly_the_capacity_from_eight_threads() {
    // `AlwaysDecline` draws 0.0, which admits only a factor of exactly 0. With the clock
    // frozen, every call lands in the last second, so R ≥ O ≥ 990 ≫ r and the factor is
    // about 0.9: every admission comes from step 2, which must stop at the capacity.
    let clock = ManualClock::new(1_000_000);
    let rl = limiter(&clock, AlwaysDecline);
    let admitted = hammer(&rl, "hot", Until::Full, suppressed_inc);
    assert_eq!(admitted, FITS);
    let (accepted, observed) = rl.local().suppressed().usage("hot");
    assert_eq!(accepted, FITS);
    assert!(observed > FITS, "the refused calls count as observed");
}

#[test]
fn suppressed_step_two_stays_exact_across_window_expiries() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock, AlwaysDecline);
    rounds(
        &rl,
        &clock,
        || rl.local().suppressed().usage("hot").0,
        suppressed_inc,
    );
}

#[test]
fn suppressed_hard_limit_is_exact_from_eight_threads() {
    // `AlmostOne` admits every shed call (the factor 1 − r/R is below 1 for any finite R),
    // so the key admits everything until observed usage reaches the hard limit
    // H = 1.5 × 1000.5 = 1500.75, and nothing after: exactly 1501 units get in.
    const CALLS_PER_THREAD: u64 = 1_000;
    let clock = ManualClock::new(1_000_000);
    let rl = limiter(&clock, AlmostOne);
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let rl = Arc::clone(&rl);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let rate = RateLimit::try_from(RATE).unwrap();
                start.wait();
                let mut admitted = 0u64;
                for _ in 0..CALLS_PER_THREAD {
                    match rl.local().suppressed().inc("hot", &rate, 1) {
                        RateLimitDecision::Allowed
                        | RateLimitDecision::Suppressed {
                            is_allowed: true, ..
                        } => admitted += 1,
                        RateLimitDecision::Suppressed {
                            suppression_factor,
                            is_allowed: false,
                        } => assert_eq!(suppression_factor, 1.0, "only the hard limit declines"),
                        other => panic!("{other:?}"),
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 1501);
    assert_eq!(
        rl.local().suppressed().usage("hot"),
        (1501, THREADS as u64 * CALLS_PER_THREAD)
    );
    assert_eq!(rl.local().suppressed().get_suppression_factor("hot"), 1.0);
}

#[test]
fn threads_on_different_keys_do_not_share_capacity() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock, AlwaysDecline);
    let rate = RateLimit::try_from(RATE).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let rl = Arc::clone(&rl);
            thread::spawn(move || {
                let key = format!("key-{}", t % 4); // two threads per key
                (0..700)
                    .filter(|_| rl.local().absolute().inc(&key, &rate, 1).is_allowed())
                    .count() as u64
            })
        })
        .collect();
    let admitted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 4 * FITS);
    for k in 0..4 {
        assert_eq!(rl.local().absolute().usage(&format!("key-{k}")), FITS);
    }
    assert_eq!(rl.local().absolute().key_count(), 4);
}
