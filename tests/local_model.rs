//! The local provider against a plain reference model.
//!
//! The model keeps every call as a timestamped event `(t_ms, accepted, observed)` and
//! recomputes everything from that list on each call, straight from SPEC §2–§4: it is
//! written to be obviously right, not fast. Random operation sequences (keys from a small
//! set, rates that change between calls, counts from 0 to above capacity, clock advances
//! from 0 to past the window, reads, cleanup) drive both on a `ManualClock`, and every
//! answer must be identical: decisions, `retry_after_ms`, `remaining_after_waiting`,
//! suppression factors, usage, errors and key counts. Both sides draw from their own
//! `SeededRandom` with the same seed, so the suppressed strategy's draws line up exactly
//! as long as both consume a draw at the same calls (step 3 only).

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    Error, HardLimitFactor, ManualClock, RandomSource, RateGroupSizeMs, RateLimit,
    RateLimitDecision, RateLimiter, RateLimiterBuilder, SeededRandom, SuppressionFactorCacheMs,
    WindowSizeSeconds,
};

// ---------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------

/// The relative slack against f64 rounding in `rate × window` (0.3 × 10 is 3.0000000000000004).
const SLACK: f64 = 1e-9;

/// `used ≤ capacity`, with the slack.
fn fits(used: u64, capacity: f64) -> bool {
    used as f64 <= capacity * (1.0 + SLACK)
}

/// `used ≥ limit`, with the slack.
fn reaches(used: u64, limit: f64) -> bool {
    used as f64 >= limit * (1.0 - SLACK)
}

/// The limiter's fixed settings.
#[derive(Debug, Clone, Copy)]
struct Config {
    window_s: u64,
    group_ms: u64,
    hard_limit_factor: f64,
    cache_ms: u64,
}

impl Config {
    fn window_ms(&self) -> u64 {
        self.window_s * 1000
    }

    fn capacity(&self, rate: f64) -> f64 {
        rate * self.window_s as f64
    }

    /// The first instant at which an event made at `t_ms` no longer counts.
    fn expiry(&self, t_ms: u64) -> u64 {
        let bucket = t_ms / self.group_ms;
        (bucket + 1) * self.group_ms + self.window_ms()
    }

    /// An event counts at `now` iff its bucket `b = t/g` satisfies `(b+1)·g + W > now`.
    fn counts_at(&self, event: &Event, now: u64) -> bool {
        self.expiry(event.t_ms) > now
    }

    /// Whether the event's bucket overlaps the last second `(now − 1000, now]`.
    fn in_last_second(&self, event: &Event, now: u64) -> bool {
        let bucket = event.t_ms / self.group_ms;
        (bucket + 1) * self.group_ms > now.saturating_sub(1000)
    }
}

#[derive(Debug, Clone, Copy)]
struct Event {
    t_ms: u64,
    accepted: u64,
    observed: u64,
}

/// Why a call is malformed, in the order the provider checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    CapacityBelowOne,
    ZeroCount,
    CountAboveCapacity,
}

fn malformed(capacity: f64, count: u64) -> Option<Malformed> {
    if !fits(1, capacity) {
        Some(Malformed::CapacityBelowOne)
    } else if count == 0 {
        Some(Malformed::ZeroCount)
    } else if !fits(count, capacity) {
        Some(Malformed::CountAboveCapacity)
    } else {
        None
    }
}

fn malformed_of(err: &Error) -> Malformed {
    match err {
        Error::CapacityBelowOne { .. } => Malformed::CapacityBelowOne,
        Error::ZeroCount => Malformed::ZeroCount,
        Error::CountAboveCapacity { .. } => Malformed::CountAboveCapacity,
        other => panic!("a local call failed with {other:?}"),
    }
}

/// One key in the model: every call it ever took, and what the strategy remembers.
#[derive(Debug, Clone)]
struct ModelKey {
    /// The rate of the latest well-formed call.
    rate: f64,
    events: Vec<Event>,
    /// Suppressed only: `(factor, computed_at)`.
    cached: Option<(f64, u64)>,
}

impl ModelKey {
    fn new(rate: f64) -> Self {
        ModelKey {
            rate,
            events: Vec::new(),
            cached: None,
        }
    }

    /// `(accepted, observed)` of the events that count at `now`.
    fn usage(&self, cfg: &Config, now: u64) -> (u64, u64) {
        self.events
            .iter()
            .filter(|e| cfg.counts_at(e, now))
            .fold((0, 0), |(a, o), e| (a + e.accepted, o + e.observed))
    }

    /// `clamp(1 − r/R, 0, 1)` with `R = max(O/W, observed in the last second)` (SPEC §4),
    /// each sum divided by the time its bucket positions cover: from the start of the oldest
    /// bucket that may still count (for the window) or that overlaps the last second, up to
    /// now, at least one second. Written from those words and this model's own liveness
    /// rule (`counts_at`), not from the crate's code: the oldest bucket is found by walking
    /// up from a bucket that is certainly too old.
    fn formula(&self, cfg: &Config, now: u64) -> f64 {
        let g = cfg.group_ms;
        // The first bucket `b` from `start` on for which `still(b)` holds.
        let first_bucket = |start: u64, still: &dyn Fn(u64) -> bool| {
            let mut b = start;
            while !still(b) {
                b += 1;
            }
            b
        };
        // Bucket b counts at `now` iff an event at its start does.
        let oldest_counting = first_bucket(now.saturating_sub(cfg.window_ms() + g) / g, &|b| {
            cfg.counts_at(
                &Event {
                    t_ms: b * g,
                    accepted: 0,
                    observed: 0,
                },
                now,
            )
        });
        // Bucket b overlaps (now − 1 s, now] iff it ends after now − 1 s.
        let oldest_recent = first_bucket(now.saturating_sub(1000 + g) / g, &|b| {
            (b + 1) * g > now.saturating_sub(1000)
        });
        // Units per second over the span (compared bit for bit with the provider, so the
        // arithmetic is the plain one: units × 1000 / ms).
        let rate_over = |observed: u64, from_bucket: u64| {
            let span_ms = (now - from_bucket * g).max(1000);
            observed as f64 * 1000.0 / span_ms as f64
        };
        let (_, observed) = self.usage(cfg, now);
        let last_second: u64 = self
            .events
            .iter()
            .filter(|e| cfg.counts_at(e, now) && cfg.in_last_second(e, now))
            .map(|e| e.observed)
            .sum();
        let perceived = f64::max(
            rate_over(observed, oldest_counting),
            rate_over(last_second, oldest_recent),
        );
        if perceived <= self.rate {
            // Not over the rate (or nothing observed): nothing to shed.
            0.0
        } else {
            1.0 - self.rate / perceived
        }
    }

    /// The absolute refusal: the first instant at which enough of the oldest buckets have
    /// expired for `count` to fit, and what still counts then.
    fn rejection(&self, cfg: &Config, now: u64, count: u64, capacity: f64) -> RateLimitDecision {
        let mut instants: Vec<u64> = self
            .events
            .iter()
            .filter(|e| cfg.counts_at(e, now))
            .map(|e| cfg.expiry(e.t_ms))
            .collect();
        instants.sort_unstable();
        instants.dedup();
        for at in instants {
            let (left, _) = self.usage(cfg, at);
            if fits(left + count, capacity) {
                return RateLimitDecision::Rejected {
                    window_size_seconds: cfg.window_s,
                    retry_after_ms: at - now,
                    remaining_after_waiting: left,
                };
            }
        }
        unreachable!("a well-formed count fits an empty window")
    }
}

/// Both strategies' keys, the clock and the draws.
struct Model {
    cfg: Config,
    now: u64,
    draws: SeededRandom,
    absolute: BTreeMap<String, ModelKey>,
    suppressed: BTreeMap<String, ModelKey>,
    /// What the runs went through, so a test can check the sequences were not vacuous.
    seen: Coverage,
}

impl Model {
    fn new(cfg: Config, seed: u64) -> Self {
        Model {
            cfg,
            now: 0,
            draws: SeededRandom::new(seed),
            absolute: BTreeMap::new(),
            suppressed: BTreeMap::new(),
            seen: Coverage::default(),
        }
    }

    fn absolute_inc(
        &mut self,
        key: &str,
        rate: f64,
        count: u64,
    ) -> Result<RateLimitDecision, Malformed> {
        let (cfg, now) = (self.cfg, self.now);
        let capacity = cfg.capacity(rate);
        if let Some(why) = malformed(capacity, count) {
            return Err(why);
        }
        let k = self
            .absolute
            .entry(key.to_owned())
            .or_insert_with(|| ModelKey::new(rate));
        k.rate = rate;
        let (accepted, _) = k.usage(&cfg, now);
        if fits(accepted + count, capacity) {
            k.events.push(Event {
                t_ms: now,
                accepted: count,
                observed: count,
            });
            Ok(RateLimitDecision::Allowed)
        } else {
            self.seen.rejected += 1;
            Ok(k.rejection(&cfg, now, count, capacity))
        }
    }

    fn absolute_is_allowed(&self, key: &str) -> RateLimitDecision {
        let Some(k) = self.absolute.get(key) else {
            return RateLimitDecision::Allowed;
        };
        let capacity = self.cfg.capacity(k.rate);
        let (accepted, _) = k.usage(&self.cfg, self.now);
        if fits(accepted + 1, capacity) {
            RateLimitDecision::Allowed
        } else {
            k.rejection(&self.cfg, self.now, 1, capacity)
        }
    }

    fn suppressed_inc(
        &mut self,
        key: &str,
        rate: f64,
        count: u64,
    ) -> Result<RateLimitDecision, Malformed> {
        let (cfg, now) = (self.cfg, self.now);
        let capacity = cfg.capacity(rate);
        if let Some(why) = malformed(capacity, count) {
            return Err(why);
        }
        let k = self
            .suppressed
            .entry(key.to_owned())
            .or_insert_with(|| ModelKey::new(rate));
        if k.rate != rate {
            // A new rate makes a new factor.
            k.rate = rate;
            k.cached = None;
        }
        let (accepted, observed) = k.usage(&cfg, now);
        let record = |k: &mut ModelKey, accepted| {
            k.events.push(Event {
                t_ms: now,
                accepted,
                observed: count,
            })
        };
        // Step 1: over the hard limit.
        if reaches(observed, capacity * cfg.hard_limit_factor) {
            record(k, 0);
            self.seen.hard_limit += 1;
            return Ok(RateLimitDecision::Suppressed {
                suppression_factor: 1.0,
                is_allowed: false,
            });
        }
        // Step 2: below capacity.
        if fits(accepted + count, capacity) {
            record(k, count);
            return Ok(RateLimitDecision::Allowed);
        }
        // Step 3: the (possibly cached) factor and one draw.
        let fresh = k.formula(&cfg, now);
        let factor = match k.cached {
            Some((factor, at)) if now < at + cfg.cache_ms => {
                if factor != fresh {
                    self.seen.stale_cache_used += 1;
                }
                factor
            }
            _ => {
                k.cached = Some((fresh, now));
                fresh
            }
        };
        let is_allowed = self.draws.next_f64() >= factor;
        record(k, if is_allowed { count } else { 0 });
        if factor > 0.0 && factor < 1.0 {
            if is_allowed {
                self.seen.shed_admitted += 1;
            } else {
                self.seen.shed_declined += 1;
            }
        }
        Ok(RateLimitDecision::Suppressed {
            suppression_factor: factor,
            is_allowed,
        })
    }

    fn suppression_factor(&self, key: &str) -> f64 {
        let Some(k) = self.suppressed.get(key) else {
            return 0.0;
        };
        let capacity = self.cfg.capacity(k.rate);
        let (accepted, observed) = k.usage(&self.cfg, self.now);
        if reaches(observed, capacity * self.cfg.hard_limit_factor) {
            1.0
        } else if fits(accepted + 1, capacity) {
            0.0
        } else {
            k.formula(&self.cfg, self.now)
        }
    }

    fn absolute_usage(&self, key: &str) -> u64 {
        self.absolute
            .get(key)
            .map_or(0, |k| k.usage(&self.cfg, self.now).0)
    }

    fn suppressed_usage(&self, key: &str) -> (u64, u64) {
        self.suppressed
            .get(key)
            .map_or((0, 0), |k| k.usage(&self.cfg, self.now))
    }

    /// Forgets every key with nothing left in its window (absolute: accepted; suppressed:
    /// observed), cached factor and latest rate included.
    fn cleanup(&mut self) -> usize {
        let (cfg, now) = (self.cfg, self.now);
        let before = self.absolute.len() + self.suppressed.len();
        self.absolute.retain(|_, k| k.usage(&cfg, now).0 > 0);
        self.suppressed.retain(|_, k| k.usage(&cfg, now).1 > 0);
        let removed = before - self.absolute.len() - self.suppressed.len();
        self.seen.cleaned += removed as u64;
        removed
    }
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// Keys from a small set, the empty key included.
const KEYS: [&str; 3] = ["a", "b", ""];

/// A rate, given so that it scales with the window: a capacity per window, or a raw rate
/// per second (0.3/s and 0.7/s exercise the rounding slack).
#[derive(Debug, Clone, Copy)]
enum RateSpec {
    PerWindow(f64),
    PerSecond(f64),
}

impl RateSpec {
    fn per_second(self, cfg: &Config) -> f64 {
        match self {
            RateSpec::PerWindow(capacity) => capacity / cfg.window_s as f64,
            RateSpec::PerSecond(rate) => rate,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Advance {
    Ms(u64),
    /// Exactly one window and one group: everything recorded before has expired.
    PastWindow,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    AbsoluteInc {
        key: usize,
        rate: usize,
        count: u64,
        fallible: bool,
    },
    AbsoluteIsAllowed {
        key: usize,
    },
    AbsoluteUsage {
        key: usize,
    },
    SuppressedInc {
        key: usize,
        rate: usize,
        count: u64,
        fallible: bool,
    },
    SuppressionFactor {
        key: usize,
    },
    SuppressedUsage {
        key: usize,
    },
    Advance(Advance),
    Cleanup,
}

#[derive(Debug, Clone)]
struct Case {
    cfg: Config,
    /// The rates calls pick from; the first one is picked most often, so a key's rate
    /// mostly holds (and its cached factor lives) but changes now and then.
    rates: [RateSpec; 3],
    seed: u64,
    ops: Vec<Op>,
}

fn config() -> impl Strategy<Value = Config> {
    // (window s, group ms): group = 1 ms, group = window, and odd sizes between.
    let geometry = prop::sample::select(vec![
        (1, 1),
        (1, 100),
        (1, 1000),
        (2, 250),
        (3, 7),
        (5, 1),
        (10, 1000),
        (10, 10_000),
    ]);
    let hard = prop::sample::select(vec![1.0, 1.25, 1.5, 2.0]);
    let cache = prop::sample::select(vec![0, 1, 100, 1500, 60_000]);
    (geometry, hard, cache).prop_map(
        |((window_s, group_ms), hard_limit_factor, cache_ms)| Config {
            window_s,
            group_ms,
            hard_limit_factor,
            cache_ms,
        },
    )
}

fn rate_spec() -> impl Strategy<Value = RateSpec> {
    prop_oneof![
        4 => prop::sample::select(vec![0.5, 1.0, 2.0, 3.0, 4.5, 7.0, 10.5]).prop_map(RateSpec::PerWindow),
        1 => prop::sample::select(vec![0.3, 0.7, 1.1]).prop_map(RateSpec::PerSecond),
    ]
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0),
        8 => Just(1),
        3 => 2..=4u64,
        1 => 5..=15u64,
    ]
}

fn rate_index() -> impl Strategy<Value = usize> {
    prop_oneof![8 => Just(0), 1 => Just(1), 1 => Just(2)]
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let advance = prop_oneof![
        4 => Just(Advance::Ms(0)),
        6 => (1..=60u64).prop_map(Advance::Ms),
        3 => (61..=1500u64).prop_map(Advance::Ms),
        1 => (1501..=12_000u64).prop_map(Advance::Ms),
        1 => Just(Advance::PastWindow),
    ];
    prop_oneof![
        6 => (key.clone(), rate_index(), count(), any::<bool>())
            .prop_map(|(key, rate, count, fallible)| Op::AbsoluteInc { key, rate, count, fallible }),
        1 => key.clone().prop_map(|key| Op::AbsoluteIsAllowed { key }),
        1 => key.clone().prop_map(|key| Op::AbsoluteUsage { key }),
        8 => (key.clone(), rate_index(), count(), any::<bool>())
            .prop_map(|(key, rate, count, fallible)| Op::SuppressedInc { key, rate, count, fallible }),
        1 => key.clone().prop_map(|key| Op::SuppressionFactor { key }),
        1 => key.prop_map(|key| Op::SuppressedUsage { key }),
        6 => advance.prop_map(Op::Advance),
        1 => Just(Op::Cleanup),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        config(),
        [rate_spec(), rate_spec(), rate_spec()],
        any::<u64>(),
        prop::collection::vec(op(), 1..300),
    )
        .prop_map(|(cfg, rates, seed, ops)| Case {
            cfg,
            rates,
            seed,
            ops,
        })
}

// ---------------------------------------------------------------------------------------
// Running both side by side
// ---------------------------------------------------------------------------------------

/// How often the interesting branches were taken.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    rejected: u64,
    hard_limit: u64,
    shed_admitted: u64,
    shed_declined: u64,
    stale_cache_used: u64,
    cleaned: u64,
    malformed: u64,
}

impl std::ops::AddAssign for Coverage {
    fn add_assign(&mut self, o: Coverage) {
        self.rejected += o.rejected;
        self.hard_limit += o.hard_limit;
        self.shed_admitted += o.shed_admitted;
        self.shed_declined += o.shed_declined;
        self.stale_cache_used += o.stale_cache_used;
        self.cleaned += o.cleaned;
        self.malformed += o.malformed;
    }
}

fn provider(cfg: &Config, clock: &ManualClock, seed: u64) -> RateLimiter {
    RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(cfg.window_s).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(cfg.group_ms).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(cfg.hard_limit_factor).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::try_from(cfg.cache_ms).unwrap(),
    })
    .clock(clock.clone())
    .random(SeededRandom::new(seed))
    .build()
    .unwrap()
}

/// What the infallible absolute `inc` answers for a malformed call (the local module's table).
fn absolute_answer(why: Malformed, window_s: u64) -> RateLimitDecision {
    match why {
        Malformed::ZeroCount => RateLimitDecision::Allowed,
        Malformed::CapacityBelowOne | Malformed::CountAboveCapacity => {
            RateLimitDecision::Rejected {
                window_size_seconds: window_s,
                retry_after_ms: u64::MAX,
                remaining_after_waiting: 0,
            }
        }
    }
}

/// What the infallible suppressed `inc` answers for a malformed call.
fn suppressed_answer(why: Malformed) -> RateLimitDecision {
    match why {
        Malformed::ZeroCount => RateLimitDecision::Allowed,
        Malformed::CapacityBelowOne | Malformed::CountAboveCapacity => {
            RateLimitDecision::Suppressed {
                suppression_factor: 1.0,
                is_allowed: false,
            }
        }
    }
}

/// Runs one case on the provider and the model; the first difference fails the case.
fn run(case: &Case) -> Result<Coverage, TestCaseError> {
    let cfg = case.cfg;
    let clock = ManualClock::new(0);
    let rl = provider(&cfg, &clock, case.seed);
    let mut model = Model::new(cfg, case.seed);
    let absolute = rl.local().absolute();
    let suppressed = rl.local().suppressed();

    for (step, op) in case.ops.iter().enumerate() {
        let at = model.now;
        match *op {
            Op::AbsoluteInc {
                key,
                rate,
                count,
                fallible,
            } => {
                let r = case.rates[rate].per_second(&cfg);
                let limit = RateLimit::try_from(r).unwrap();
                let expected = model.absolute_inc(KEYS[key], r, count);
                if expected.is_err() {
                    model.seen.malformed += 1;
                }
                if fallible {
                    let got = absolute.try_inc(KEYS[key], &limit, count);
                    let got = got.map_err(|e| malformed_of(&e));
                    prop_assert_eq!(got, expected, "step {} at {} ms: {:?}", step, at, op);
                } else {
                    let got = absolute.inc(KEYS[key], &limit, count);
                    let expected =
                        expected.unwrap_or_else(|why| absolute_answer(why, cfg.window_s));
                    prop_assert_eq!(got, expected, "step {} at {} ms: {:?}", step, at, op);
                }
            }
            Op::AbsoluteIsAllowed { key } => {
                let got = absolute.is_allowed(KEYS[key]);
                prop_assert_eq!(
                    got,
                    model.absolute_is_allowed(KEYS[key]),
                    "step {} at {} ms: {:?}",
                    step,
                    at,
                    op
                );
            }
            Op::AbsoluteUsage { key } => {
                prop_assert_eq!(
                    absolute.usage(KEYS[key]),
                    model.absolute_usage(KEYS[key]),
                    "step {} at {} ms: {:?}",
                    step,
                    at,
                    op
                );
            }
            Op::SuppressedInc {
                key,
                rate,
                count,
                fallible,
            } => {
                let r = case.rates[rate].per_second(&cfg);
                let limit = RateLimit::try_from(r).unwrap();
                let expected = model.suppressed_inc(KEYS[key], r, count);
                if expected.is_err() {
                    model.seen.malformed += 1;
                }
                if fallible {
                    let got = suppressed.try_inc(KEYS[key], &limit, count);
                    let got = got.map_err(|e| malformed_of(&e));
                    prop_assert_eq!(got, expected, "step {} at {} ms: {:?}", step, at, op);
                } else {
                    let got = suppressed.inc(KEYS[key], &limit, count);
                    let expected = expected.unwrap_or_else(suppressed_answer);
                    prop_assert_eq!(got, expected, "step {} at {} ms: {:?}", step, at, op);
                }
            }
            Op::SuppressionFactor { key } => {
                let got = suppressed.get_suppression_factor(KEYS[key]);
                prop_assert_eq!(
                    got,
                    model.suppression_factor(KEYS[key]),
                    "step {} at {} ms: {:?}",
                    step,
                    at,
                    op
                );
            }
            Op::SuppressedUsage { key } => {
                prop_assert_eq!(
                    suppressed.usage(KEYS[key]),
                    model.suppressed_usage(KEYS[key]),
                    "step {} at {} ms: {:?}",
                    step,
                    at,
                    op
                );
            }
            Op::Advance(advance) => {
                let ms = match advance {
                    Advance::Ms(ms) => ms,
                    Advance::PastWindow => cfg.window_ms() + cfg.group_ms,
                };
                clock.advance(ms);
                model.now += ms;
            }
            Op::Cleanup => {
                prop_assert_eq!(rl.cleanup(), model.cleanup(), "step {} at {} ms", step, at);
            }
        }
        prop_assert_eq!(
            absolute.key_count(),
            model.absolute.len(),
            "absolute keys after step {}: {:?}",
            step,
            op
        );
        prop_assert_eq!(
            suppressed.key_count(),
            model.suppressed.len(),
            "suppressed keys after step {}: {:?}",
            step,
            op
        );
    }

    // Every key's usage agrees at the end, whatever the sequence asked.
    for key in KEYS {
        prop_assert_eq!(absolute.usage(key), model.absolute_usage(key));
        prop_assert_eq!(suppressed.usage(key), model.suppressed_usage(key));
        prop_assert_eq!(
            suppressed.get_suppression_factor(key),
            model.suppression_factor(key)
        );
        prop_assert_eq!(absolute.is_allowed(key), model.absolute_is_allowed(key));
    }
    Ok(model.seen)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn local_provider_matches_the_reference_model(case in case()) {
        run(&case)?;
    }
}

/// `retry_after_ms` is the shortest wait, checked on the provider alone: two limiters fed
/// the same calls; one waits `retry_after_ms − 1` and is refused again, the other waits
/// `retry_after_ms` and is admitted, with `remaining_after_waiting` as its usage then.
fn replay(cfg: &Config, calls: &[(u64, u64)], capacity: f64) -> (RateLimiter, ManualClock) {
    let clock = ManualClock::new(0);
    let rl = provider(cfg, &clock, 0);
    let rate = RateLimit::try_from(capacity / cfg.window_s as f64).unwrap();
    for &(advance, count) in calls {
        clock.advance(advance);
        rl.local().absolute().inc("k", &rate, count);
    }
    (rl, clock)
}

/// One shortest-wait case: a configuration, a capacity, calls `(advance ms, count)` and the
/// probe's count (at most the capacity).
type WaitCase = (Config, f64, Vec<(u64, u64)>, u64);

fn wait_case() -> impl Strategy<Value = WaitCase> {
    (
        config(),
        prop::sample::select(vec![1.0, 3.0, 7.5, 20.0]),
        prop::collection::vec((0..700u64, 1..=4u64), 1..60),
        1..=4u64,
    )
        .prop_filter("the probe fits the capacity", |(_, capacity, _, probe)| {
            fits(*probe, *capacity)
        })
}

/// Checks one case; returns how many probes were admitted before the refusal that is
/// checked. A case whose calls leave room is not skipped: the probe is repeated at the same
/// instant (as part of the replayed calls) until the window is full and refuses it.
fn check_shortest_wait(case: &WaitCase) -> Result<usize, TestCaseError> {
    let (cfg, capacity, calls, probe) = case;
    let (capacity, probe) = (*capacity, *probe);
    let rate = RateLimit::try_from(capacity / cfg.window_s as f64).unwrap();
    let mut calls = calls.clone();
    let (rl, clock) = replay(cfg, &calls, capacity);
    let mut filled = 0;
    let (retry_after_ms, remaining_after_waiting) = loop {
        match rl.local().absolute().inc("k", &rate, probe) {
            RateLimitDecision::Rejected {
                retry_after_ms,
                remaining_after_waiting,
                ..
            } => break (retry_after_ms, remaining_after_waiting),
            RateLimitDecision::Allowed => {
                calls.push((0, probe));
                filled += 1;
                prop_assert!(
                    filled as f64 * probe as f64 <= capacity * (1.0 + SLACK),
                    "admitted past the capacity"
                );
            }
            other => return Err(TestCaseError::fail(format!("absolute answered {other:?}"))),
        }
    };
    prop_assert!(retry_after_ms >= 1 && retry_after_ms <= cfg.window_ms() + cfg.group_ms);

    let (early, early_clock) = replay(cfg, &calls, capacity);
    early_clock.advance(retry_after_ms - 1);
    prop_assert!(!early.local().absolute().inc("k", &rate, probe).is_allowed());

    clock.advance(retry_after_ms);
    prop_assert_eq!(rl.local().absolute().usage("k"), remaining_after_waiting);
    prop_assert_eq!(
        rl.local().absolute().inc("k", &rate, probe),
        RateLimitDecision::Allowed
    );
    Ok(filled)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn retry_after_is_the_shortest_wait(case in wait_case()) {
        check_shortest_wait(&case)?;
    }
}

/// The shortest-wait property checks a refusal in every case, and its cases cover both a
/// window the generated calls filled (refused at once) and one the probe had to fill.
#[test]
fn shortest_wait_cases_reach_both_kinds_of_refusal() {
    let mut runner = TestRunner::deterministic();
    let strategy = wait_case();
    let (mut at_once, mut after_filling) = (0, 0);
    for _ in 0..256 {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        match check_shortest_wait(&case).unwrap_or_else(|e| panic!("{e}")) {
            0 => at_once += 1,
            _ => after_filling += 1,
        }
    }
    println!("256 cases: {at_once} refused at once, {after_filling} after filling the window");
    assert!(
        at_once >= 64 && after_filling >= 32,
        "{at_once} refused at once, {after_filling} after filling"
    );
}

/// The generated sequences reach every branch the property is meant to check: without this,
/// a generator that never filled a window would pass the property trivially.
#[test]
fn generated_sequences_reach_every_branch() {
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let mut total = Coverage::default();
    for _ in 0..200 {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        total += run(&case).unwrap_or_else(|e| panic!("{e}"));
    }
    let Coverage {
        rejected,
        hard_limit,
        shed_admitted,
        shed_declined,
        stale_cache_used,
        cleaned,
        malformed,
    } = total;
    for (what, n) in [
        ("absolute rejections", rejected),
        ("suppressed hard-limit declines", hard_limit),
        ("shed calls admitted", shed_admitted),
        ("shed calls declined", shed_declined),
        (
            "cached factors that differ from a fresh one",
            stale_cache_used,
        ),
        ("keys removed by cleanup", cleaned),
        ("malformed calls", malformed),
    ] {
        assert!(n >= 20, "only {n} {what} in 200 cases: {total:?}");
    }
    println!("200 generated cases went through {total:?}");
}

/// A hand-checked sequence, so the model itself is pinned to numbers worked out on paper.
#[test]
fn model_agrees_with_worked_examples() {
    let cfg = Config {
        window_s: 1,
        group_ms: 100,
        hard_limit_factor: 1.5,
        cache_ms: 0,
    };
    let mut m = Model::new(cfg, 7);
    // Capacity 3: three admitted at 0, 150 and 150 (buckets 0 and 1).
    assert_eq!(m.absolute_inc("k", 3.0, 1), Ok(RateLimitDecision::Allowed));
    m.now = 150;
    assert_eq!(m.absolute_inc("k", 3.0, 2), Ok(RateLimitDecision::Allowed));
    // Bucket 0 expires at 1100, bucket 1 at 1200.
    assert_eq!(
        m.absolute_inc("k", 3.0, 1),
        Ok(RateLimitDecision::Rejected {
            window_size_seconds: 1,
            retry_after_ms: 950,
            remaining_after_waiting: 2
        })
    );
    assert_eq!(
        m.absolute_inc("k", 3.0, 2),
        Ok(RateLimitDecision::Rejected {
            window_size_seconds: 1,
            retry_after_ms: 1050,
            remaining_after_waiting: 0
        })
    );
    assert_eq!(
        m.absolute_inc("k", 3.0, 4),
        Err(Malformed::CountAboveCapacity)
    );
    assert_eq!(
        m.absolute_inc("k", 0.5, 1),
        Err(Malformed::CapacityBelowOne)
    );
    m.now = 1100;
    assert_eq!(m.absolute_usage("k"), 2);
    m.now = 1200;
    assert_eq!(m.absolute_usage("k"), 0);

    // Suppressed, capacity 2, hard limit 3: two allowed, then R = 2/s in the last second,
    // sf = 1 − 2/2 = 0 → admitted whatever the draw; then O = 3 reaches the hard limit.
    m.now = 5000;
    assert_eq!(
        m.suppressed_inc("s", 2.0, 1),
        Ok(RateLimitDecision::Allowed)
    );
    assert_eq!(
        m.suppressed_inc("s", 2.0, 1),
        Ok(RateLimitDecision::Allowed)
    );
    assert_eq!(
        m.suppressed_inc("s", 2.0, 1),
        Ok(RateLimitDecision::Suppressed {
            suppression_factor: 0.0,
            is_allowed: true
        })
    );
    assert_eq!(
        m.suppressed_inc("s", 2.0, 1),
        Ok(RateLimitDecision::Suppressed {
            suppression_factor: 1.0,
            is_allowed: false
        })
    );
    assert_eq!(m.suppressed_usage("s"), (3, 4));
    assert_eq!(m.suppression_factor("s"), 1.0);
    assert_eq!(m.suppression_factor("unknown"), 0.0);
}

/// The factor worked on paper where coarse groups matter, for the model and the provider
/// alike: a 2 s window of 500 ms groups, rate 1/s (capacity 2, hard limit 6).
#[test]
fn factor_with_coarse_groups_is_worked_by_hand() {
    let cfg = Config {
        window_s: 2,
        group_ms: 500,
        hard_limit_factor: 3.0,
        cache_ms: 0,
    };
    let clock = ManualClock::new(0);
    // A draw of 0.99 admits whatever the factor below 1 (the model's seeded draws are not
    // used: only its factor is read).
    #[derive(Debug)]
    struct Admit;
    impl RandomSource for Admit {
        fn next_f64(&self) -> f64 {
            0.99
        }
    }
    let rl = RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(cfg.window_s).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(cfg.group_ms).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(cfg.hard_limit_factor).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::try_from(cfg.cache_ms).unwrap(),
    })
    .clock(clock.clone())
    .random(Admit)
    .build()
    .unwrap();
    let mut m = Model::new(cfg, 7);
    let rate = RateLimit::try_from(1.0).unwrap();
    let s = rl.local().suppressed();
    // Three calls at 0 ms, all in bucket 0 = [0, 500): two fill the capacity; the third
    // sees O = 2 observed over the one second the window and the last second both cover at
    // least: R = 2/s, sf = 1 − 1/2.
    for _ in 0..2 {
        assert_eq!(s.inc("s", &rate, 1), RateLimitDecision::Allowed);
        assert_eq!(
            m.suppressed_inc("s", 1.0, 1),
            Ok(RateLimitDecision::Allowed)
        );
    }
    assert_eq!(
        s.inc("s", &rate, 1),
        RateLimitDecision::Suppressed {
            suppression_factor: 0.5,
            is_allowed: true
        }
    );
    assert!(matches!(
        m.suppressed_inc("s", 1.0, 1),
        Ok(RateLimitDecision::Suppressed {
            suppression_factor: 0.5,
            ..
        })
    ));
    // With the third observed too: R = 3/s, sf = 1 − 1/3.
    assert_eq!(s.get_suppression_factor("s"), 1.0 - 1.0 / 3.0);
    assert_eq!(m.suppression_factor("s"), 1.0 - 1.0 / 3.0);
    // At 2300 ms bucket 0 still counts (it ends at 500, and 500 + 2000 > 2300): O = 3 over
    // the 2300 ms from its start, 1.304/s; no bucket overlaps the last second. So
    // sf = 1 − 1 / (3 / 2.3) = 0.7 / 3 = 0.2333… (a nominal O / W = 1.5/s would give 1/3).
    clock.set(2300);
    m.now = 2300;
    let worked = 1.0 - 2.3 / 3.0;
    assert!((s.get_suppression_factor("s") - worked).abs() < 1e-12);
    assert!((m.suppression_factor("s") - worked).abs() < 1e-12);
    // At 2500 ms bucket 0 no longer counts: nothing observed, factor 0.
    clock.set(2500);
    m.now = 2500;
    assert_eq!(s.get_suppression_factor("s"), 0.0);
    assert_eq!(m.suppression_factor("s"), 0.0);
}
