//! One table of scenarios (calls, counts, rates, times, draws and the expected decisions)
//! that every provider must pass unchanged: only the clock source differs. The local
//! provider reads a `ManualClock`; the Redis provider's scripts are handed the same clock's
//! time through the hidden, test-only `redis_time_from_clock_for_tests_only` (production
//! calls always use the server's `TIME`; `redis_basics.rs` checks that path with real
//! waits). Each scenario uses a fresh key and a fresh limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisConnection, RedisKey, RedisSettings};
use sluicegate::{
    Error, ManualClock, RandomSource, RateLimit, RateLimitDecision, RateLimiter, RateLimiterBuilder,
};

/// The Redis deadline of the table's limiters: the table checks decisions, not latency, and
/// on a loaded machine (a cluster's six servers beside the test) the default 1 s deadline
/// turned a slow decision into a `RedisTimeout` row. Latency is the fault tests' business.
const CONFORMANCE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Scenario time 0, on the grid of every group size used below.
const T0: u64 = 1_000_000_000_000;

/// A draw the test sets before each suppressed call.
#[derive(Debug, Clone, Default)]
pub struct ScriptedDraw(Arc<AtomicU64>);

impl ScriptedDraw {
    pub fn set(&self, draw: f64) {
        self.0.store(draw.to_bits(), Ordering::SeqCst);
    }
}

impl RandomSource for ScriptedDraw {
    fn next_f64(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::SeqCst))
    }
}

/// What a call must answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect {
    Allowed,
    /// `retry_after_ms`, `remaining_after_waiting`.
    Rejected(u64, u64),
    /// `suppression_factor`, `is_allowed`.
    Suppressed(f64, bool),
    ZeroCount,
    CapacityBelowOne,
    CountAboveCapacity,
    CapacityAboveMax,
}

#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// Set the clock to `T0 + ms`.
    At(u64),
    /// `absolute().inc(key, rate, count)`.
    Abs(f64, u64, Expect),
    /// `absolute().is_allowed(key)`.
    AbsCheck(Expect),
    /// `suppressed().inc(key, rate, count)` with the given draw.
    Sup(f64, u64, f64, Expect),
    /// `suppressed().get_suppression_factor(key)`.
    Factor(f64),
}

use Expect::*;
use Step::*;

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub window_s: u64,
    pub group_ms: u64,
    pub hard_limit_factor: f64,
    pub cache_ms: u64,
    pub steps: Vec<Step>,
}

impl Scenario {
    /// The scenario's window, grouping and suppression settings.
    pub fn local_options(&self) -> LocalRateLimiterOptions {
        LocalRateLimiterOptions {
            window_size_seconds: self.window_s.try_into().unwrap(),
            rate_group_size_ms: self.group_ms.try_into().unwrap(),
            hard_limit_factor: self.hard_limit_factor.try_into().unwrap(),
            suppression_factor_cache_ms: self.cache_ms.try_into().unwrap(),
        }
    }

    /// The same settings for a networked provider, under `prefix`.
    pub fn redis_settings(
        &self,
        prefix: &RedisKey,
        sync_interval_ms: SyncIntervalMs,
    ) -> RedisSettings {
        super::redis_settings(&self.local_options(), prefix, sync_interval_ms)
    }
}

fn scenario(
    name: &'static str,
    (window_s, group_ms, hard_limit_factor, cache_ms): (u64, u64, f64, u64),
    steps: Vec<Step>,
) -> Scenario {
    Scenario {
        name,
        window_s,
        group_ms,
        hard_limit_factor,
        cache_ms,
        steps,
    }
}

fn times(n: usize, step: Step) -> Vec<Step> {
    vec![step; n]
}

fn cat(parts: Vec<Vec<Step>>) -> Vec<Step> {
    parts.into_iter().flatten().collect()
}

/// The table.
pub fn table() -> Vec<Scenario> {
    vec![
        scenario(
            "absolute admits the capacity, then rejects with the exact wait",
            (10, 1000, 1.0, 100),
            cat(vec![
                times(5, Abs(0.5, 1, Allowed)),
                vec![
                    Abs(0.5, 1, Rejected(11_000, 0)),
                    At(10_999),
                    Abs(0.5, 1, Rejected(1, 0)),
                    At(11_000),
                    Abs(0.5, 1, Allowed),
                ],
            ]),
        ),
        scenario(
            "the wait walks the oldest buckets until the call fits",
            (10, 1000, 1.0, 100),
            vec![
                Abs(1.0, 3, Allowed),
                At(2500),
                Abs(1.0, 5, Allowed),
                At(4000),
                Abs(1.0, 2, Allowed),
                Abs(1.0, 4, Rejected(9000, 2)),
                Abs(1.0, 1, Rejected(7000, 7)),
                AbsCheck(Rejected(7000, 7)),
                At(11_000),
                AbsCheck(Allowed),
                Abs(1.0, 1, Allowed),
                Abs(1.0, 2, Allowed),
                Abs(1.0, 1, Rejected(2000, 5)),
            ],
        ),
        scenario(
            "malformed calls are errors and record nothing",
            (10, 1000, 1.5, 100),
            vec![
                Abs(1.0, 11, CountAboveCapacity),
                Abs(1.0, 0, ZeroCount),
                Abs(0.05, 1, CapacityBelowOne),
                Sup(1.0, 11, 0.5, CountAboveCapacity),
                Sup(1.0, 0, 0.5, ZeroCount),
                Sup(0.05, 1, 0.5, CapacityBelowOne),
                AbsCheck(Allowed),
                Factor(0.0),
                Abs(1.0, 10, Allowed),
                Abs(1.0, 1, Rejected(11_000, 0)),
            ],
        ),
        scenario(
            "capacity is real and tolerant of rounding",
            (15, 1000, 1.0, 100),
            cat(vec![
                times(10, Abs(0.7, 1, Allowed)),
                vec![Abs(0.7, 1, Rejected(16_000, 0)), At(20_000)],
                // 8.2 × 15 = 122.99999999999999: the slack lets 123 fit, not 124.
                times(123, Abs(8.2, 1, Allowed)),
                vec![Abs(8.2, 1, Rejected(16_000, 0))],
            ]),
        ),
        scenario(
            "the rate given to a call is the rate for that call",
            (10, 1000, 1.0, 100),
            cat(vec![
                times(10, Abs(1.0, 1, Allowed)),
                vec![Abs(1.0, 1, Rejected(11_000, 0)), At(500)],
                times(10, Abs(2.0, 1, Allowed)),
                vec![
                    Abs(2.0, 1, Rejected(10_500, 0)),
                    AbsCheck(Rejected(10_500, 0)),
                    Abs(1.0, 1, Rejected(10_500, 0)),
                    AbsCheck(Rejected(10_500, 0)),
                ],
            ]),
        ),
        scenario(
            "an unknown key is allowed and has factor 0",
            (10, 100, 1.5, 100),
            vec![AbsCheck(Allowed), Factor(0.0), AbsCheck(Allowed)],
        ),
        scenario(
            "a bucket counts for the window and at most one group more",
            (2, 100, 1.0, 100),
            vec![
                At(199),
                Abs(1.0, 2, Allowed),
                Abs(1.0, 1, Rejected(2001, 0)),
                At(2199),
                Abs(1.0, 1, Rejected(1, 0)),
                At(2200),
                Abs(1.0, 1, Allowed),
                AbsCheck(Allowed),
                Abs(1.0, 1, Allowed),
                AbsCheck(Rejected(2100, 0)),
            ],
        ),
        scenario(
            "a window that empties entirely starts afresh",
            (2, 100, 1.0, 100),
            vec![
                Abs(1.0, 2, Allowed),
                At(5000),
                Abs(1.0, 2, Allowed),
                AbsCheck(Rejected(2100, 0)),
                Sup(1.0, 2, 0.5, Allowed),
                At(9000),
                Factor(0.0),
                Sup(1.0, 2, 0.5, Allowed),
            ],
        ),
        scenario(
            "a clock that steps back counts in the newest bucket",
            (10, 1000, 1.0, 100),
            vec![
                At(5000),
                Abs(1.0, 1, Allowed),
                At(3000),
                Abs(1.0, 9, Allowed),
                Abs(1.0, 1, Rejected(13_000, 0)),
            ],
        ),
        scenario(
            "suppressed: below capacity, then probabilistic, then over the hard limit",
            (10, 100, 1.5, 0),
            cat(vec![
                (0..10)
                    .flat_map(|i| vec![At(i * 100), Sup(1.0, 1, 0.0, Allowed)])
                    .collect(),
                vec![
                    At(1000),
                    // 10 observed in the last second: R = 10/s, sf = 1 - 1/10.
                    Sup(1.0, 1, 0.95, Suppressed(1.0 - 1.0 / 10.0, true)),
                    Sup(1.0, 1, 0.0, Suppressed(1.0 - 1.0 / 11.0, false)),
                    Sup(1.0, 1, 0.0, Suppressed(1.0 - 1.0 / 12.0, false)),
                    Sup(1.0, 1, 0.0, Suppressed(1.0 - 1.0 / 13.0, false)),
                    Sup(1.0, 1, 0.0, Suppressed(1.0 - 1.0 / 14.0, false)),
                    // 15 observed: the hard limit, whatever the draw.
                    Sup(1.0, 1, 0.999, Suppressed(1.0, false)),
                    Factor(1.0),
                ],
            ]),
        ),
        scenario(
            "a cached factor is reused, but never decides steps one and two",
            (10, 100, 1.5, 60_000),
            cat(vec![
                times(10, Sup(1.0, 1, 0.5, Allowed)),
                vec![
                    Sup(1.0, 1, 0.95, Suppressed(1.0 - 1.0 / 10.0, true)),
                    // Cached: still 0.9 although 11 are observed now.
                    Sup(1.0, 1, 0.95, Suppressed(1.0 - 1.0 / 10.0, true)),
                    Factor(1.0 - 1.0 / 12.0),
                    // A new rate drops the cache.
                    Sup(1.1, 1, 0.0, Suppressed(1.0 - 1.1 / 12.0, false)),
                    At(20_000),
                    Sup(1.0, 1, 0.0, Allowed),
                ],
            ]),
        ),
        scenario(
            "hard limit factor 1 is a hard cutoff",
            (10, 100, 1.0, 100),
            cat(vec![
                times(10, Sup(1.0, 1, 0.5, Allowed)),
                vec![Sup(1.0, 1, 0.999, Suppressed(1.0, false)), Factor(1.0)],
            ]),
        ),
        scenario(
            "a bucket expiring in the middle of the current one",
            // 800 ms groups do not divide the 2 s window: bucket 0 stops counting at 2800,
            // inside bucket 3, so the call there both drops a bucket and adds to the newest.
            (2, 800, 1.5, 0),
            vec![
                Sup(0.5, 1, 0.0, Allowed),
                At(2500),
                // Over capacity 1: the average is 1 over the 2.5 s bucket 0 on covers.
                Sup(0.5, 1, 0.0, Suppressed(0.0, true)),
                At(2800),
                // Bucket 0 is gone: 1 observed over the window, 1 in the last second, which
                // bucket 2 on covers (1.2 s).
                Sup(
                    0.5,
                    1,
                    0.0,
                    Suppressed(1.0 - 0.5 / (1000.0 / 1200.0), false),
                ),
                Factor(1.0),
                Sup(0.5, 1, 0.999, Suppressed(1.0, false)),
                AbsCheck(Allowed),
                Abs(0.5, 1, Allowed),
                Abs(0.5, 1, Rejected(3200 + 2000 - 2800, 0)),
            ],
        ),
        scenario(
            "the perceived rate is the larger of the average and the last second",
            (10, 1000, 2.0, 0),
            vec![
                Sup(1.0, 5, 0.5, Allowed),
                At(5000),
                Sup(1.0, 5, 0.5, Allowed),
                At(6000),
                // Last second holds 5: R = 5/s beats the average 1/s.
                Sup(1.0, 1, 0.8, Suppressed(1.0 - 1.0 / 5.0, true)),
                At(8000),
                // Nothing in the last second: R is the average, 11 over the 10 s the live
                // bucket positions cover.
                Sup(1.0, 1, 0.5, Suppressed(1.0 - 1.0 / (11.0 / 10.0), true)),
                Factor(1.0 - 1.0 / (12.0 / 10.0)),
                Sup(1.0, 3, 0.5, Suppressed(1.0 - 1.0 / (12.0 / 10.0), true)),
                At(9500),
                // The last second (8.5 s, 9.5 s] overlaps bucket 8, which holds the 4 units
                // of t=8000: they came over the 1.5 s that bucket's position covers, not a
                // nominal second (4/s would give 0.75). The average, 15 over 10.5 s, is lower.
                Factor(1.0 - 1.0 / (4.0 / 1.5)),
            ],
        ),
    ]
    .into_iter()
    .chain(extremes())
    .collect()
}

/// 2^52, [`sluicegate::MAX_CAPACITY`]: the largest capacity a call may have.
const MAX_CAP: f64 = 4_503_599_627_370_496.0;
const MAX_CAP_UNITS: u64 = 1 << 52;

/// The arithmetic extremes (issue 13): rates and counts no provider can count exactly are
/// refused alike, the largest capacity works, and the suppressed strategy records no
/// observed usage past 2^53. Kept apart from the rows above so tables merge easily.
fn extremes() -> Vec<Scenario> {
    vec![
        scenario(
            "rates past the largest capacity and huge counts are refused alike",
            (10, 100, 1.5, 100),
            vec![
                Abs(1e300, u64::MAX, CapacityAboveMax),
                Abs(1e300, 1, CapacityAboveMax),
                Abs(f64::MAX, 1, CapacityAboveMax),
                Sup(1e300, u64::MAX, 0.5, CapacityAboveMax),
                Sup(1e300, 1, 0.5, CapacityAboveMax),
                // Just past 2^52 over the 10 s window.
                Abs(MAX_CAP / 10.0 * 1.000_001, 1, CapacityAboveMax),
                // Within the largest capacity, u64::MAX is simply above capacity.
                Abs(MAX_CAP / 10.0, u64::MAX, CountAboveCapacity),
                Sup(MAX_CAP / 10.0, u64::MAX, 0.5, CountAboveCapacity),
                Abs(1.0, u64::MAX, CountAboveCapacity),
                Abs(1e300, 0, CapacityAboveMax),
                // None of the above counted: the key is empty.
                AbsCheck(Allowed),
                Abs(1.0, 10, Allowed),
                Abs(1.0, 1, Rejected(10_100, 0)),
            ],
        ),
        scenario(
            "the largest capacity admits 2^52 units at once and frees them on time",
            (1, 100, 1.0, 100),
            // 2^30 units, far above the capacity's rounding slack (2^52 × 1e-9 ≈ 4.5M).
            vec![
                Abs(MAX_CAP, MAX_CAP_UNITS, Allowed),
                Abs(MAX_CAP, 1 << 30, Rejected(1_100, 0)),
                At(1_099),
                Abs(MAX_CAP, 1 << 30, Rejected(1, 0)),
                At(1_100),
                Abs(MAX_CAP, MAX_CAP_UNITS - (1 << 30), Allowed),
                Abs(MAX_CAP, 1 << 30, Allowed),
                Abs(MAX_CAP, 1 << 30, Rejected(1_100, 0)),
            ],
        ),
        scenario(
            "the suppressed strategy records no observed usage past 2^53",
            (1, 100, 4.0, 0),
            vec![
                Sup(MAX_CAP, MAX_CAP_UNITS, 0.0, Allowed),
                // Over capacity, under the hard limit (2^54): the factor's perceived rate is
                // 2^52 over the 1.1 s the bucket covers, below the rate: factor 0, admitted.
                Sup(MAX_CAP, MAX_CAP_UNITS, 0.0, Suppressed(0.0, true)),
                // 2^53 observed: one more unit is declined as over the hard limit, unrecorded.
                Sup(MAX_CAP, 1, 0.0, Suppressed(1.0, false)),
                Sup(MAX_CAP, MAX_CAP_UNITS, 0.999, Suppressed(1.0, false)),
                At(1_100),
                // The window emptied: admitted again.
                Sup(MAX_CAP, MAX_CAP_UNITS, 0.0, Allowed),
            ],
        ),
    ]
}

/// Which provider a run drives.
#[derive(Debug, Clone)]
pub enum Provider {
    Local,
    Redis(RedisConnection),
}

fn limiter(
    s: &Scenario,
    provider: &Provider,
    clock: &ManualClock,
    draw: &ScriptedDraw,
    prefix: &RedisKey,
) -> RateLimiter {
    let builder = RateLimiterBuilder::new(s.local_options())
        .clock(clock.clone())
        .random(draw.clone());
    let builder = match provider {
        Provider::Local => builder,
        Provider::Redis(conn) => builder
            .redis_connection(conn.clone(), s.redis_settings(prefix, Default::default()))
            .redis_timeout(CONFORMANCE_DEADLINE)
            .redis_time_from_clock_for_tests_only(clock.clone()),
    };
    builder.build().unwrap()
}

fn expect_of(result: Result<RateLimitDecision, Error>) -> Result<Expect, String> {
    match result {
        Ok(RateLimitDecision::Allowed) => Ok(Allowed),
        Ok(RateLimitDecision::Rejected {
            retry_after_ms,
            remaining_after_waiting,
            ..
        }) => Ok(Rejected(retry_after_ms, remaining_after_waiting)),
        Ok(RateLimitDecision::Suppressed {
            suppression_factor,
            is_allowed,
        }) => Ok(Suppressed(suppression_factor, is_allowed)),
        Err(Error::ZeroCount) => Ok(ZeroCount),
        Err(Error::CapacityBelowOne { .. }) => Ok(CapacityBelowOne),
        Err(Error::CountAboveCapacity { .. }) => Ok(CountAboveCapacity),
        Err(Error::CapacityAboveMax { .. }) => Ok(CapacityAboveMax),
        Err(other) => Err(format!("unexpected error: {other}")),
    }
}

fn same(got: Expect, want: Expect) -> bool {
    match (got, want) {
        (Suppressed(a, x), Suppressed(b, y)) => x == y && (a - b).abs() <= 1e-12,
        _ => got == want,
    }
}

/// Runs one scenario; the error names the step that disagreed.
pub async fn run_scenario(
    s: &Scenario,
    index: usize,
    provider: &Provider,
    prefix: &RedisKey,
) -> Result<(), String> {
    let clock = ManualClock::new(T0);
    let draw = ScriptedDraw::default();
    let rl = limiter(s, provider, &clock, &draw, prefix);
    let key = RedisKey::try_from(format!("scenario{index}")).unwrap();
    for (i, step) in s.steps.iter().enumerate() {
        let fail = |what: String| {
            format!(
                "{:?} scenario {index} \"{}\", step {i} {step:?}: {what}",
                provider_name(provider),
                s.name
            )
        };
        let (got, want) = match *step {
            At(ms) => {
                clock.set(T0 + ms);
                continue;
            }
            Abs(rate, count, want) => {
                let rate = RateLimit::try_from(rate).unwrap();
                let got = match provider {
                    Provider::Local => rl.local().absolute().try_inc(key.as_str(), &rate, count),
                    Provider::Redis(_) => rl.redis().absolute().inc(&key, &rate, count).await,
                };
                (expect_of(got).map_err(fail)?, want)
            }
            AbsCheck(want) => {
                let got = match provider {
                    Provider::Local => Ok(rl.local().absolute().is_allowed(key.as_str())),
                    Provider::Redis(_) => rl.redis().absolute().is_allowed(&key).await,
                };
                (expect_of(got).map_err(fail)?, want)
            }
            Sup(rate, count, d, want) => {
                draw.set(d);
                let rate = RateLimit::try_from(rate).unwrap();
                let got = match provider {
                    Provider::Local => rl.local().suppressed().try_inc(key.as_str(), &rate, count),
                    Provider::Redis(_) => rl.redis().suppressed().inc(&key, &rate, count).await,
                };
                (expect_of(got).map_err(fail)?, want)
            }
            Factor(want) => {
                let got = match provider {
                    Provider::Local => {
                        Ok(rl.local().suppressed().get_suppression_factor(key.as_str()))
                    }
                    Provider::Redis(_) => {
                        rl.redis().suppressed().get_suppression_factor(&key).await
                    }
                };
                let got = got.map_err(|e| fail(e.to_string()))?;
                (Suppressed(got, true), Suppressed(want, true))
            }
        };
        if !same(got, want) {
            return Err(fail(format!("got {got:?}, expected {want:?}")));
        }
    }
    Ok(())
}

fn provider_name(provider: &Provider) -> &'static str {
    match provider {
        Provider::Local => "local",
        Provider::Redis(_) => "redis",
    }
}

/// Runs the whole table and fails with every disagreement.
pub async fn run_table(provider: &Provider) {
    let prefix = super::unique_prefix("conformance");
    let mut failures = Vec::new();
    let table = table();
    for (index, s) in table.iter().enumerate() {
        if let Err(failure) = run_scenario(s, index, provider, &prefix).await {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Limit sets: the same table of multi-limit scenarios for every provider.
// ---------------------------------------------------------------------------------------

use sluicegate::HardLimitFactor;
use sluicegate::policy::{Limit, LimitSet, Outcome, SetDecision};

/// What one set decision must answer: the outcome, the wait (`retry_after_ms`), which
/// limits refused, each limit's remaining quota, and the factors of the set's suppressed
/// limits (`(position, factor)`).
#[derive(Debug, Clone, PartialEq)]
pub struct SetExpect {
    pub outcome: Outcome,
    pub retry_after_ms: u64,
    pub refused: Vec<usize>,
    pub remaining: Vec<u64>,
    pub factors: Vec<(usize, f64)>,
    /// The hybrid's wait where it differs by design: a suppressed limit over its hard limit
    /// is given 1 s (a refresh returns sums, not the buckets the exact wait needs).
    pub hybrid_retry_after_ms: Option<u64>,
}

/// Admitted, with each limit's remaining quota.
pub fn admitted(remaining: &[u64]) -> SetExpect {
    SetExpect {
        outcome: Outcome::Allowed,
        retry_after_ms: 0,
        refused: Vec::new(),
        remaining: remaining.to_vec(),
        factors: Vec::new(),
        hybrid_retry_after_ms: None,
    }
}

/// Refused by an absolute limit (`Rejected`) or shed (`Shed`): the wait, the limits that
/// refused, the remaining quotas.
pub fn refused(outcome: Outcome, retry: u64, by: &[usize], remaining: &[u64]) -> SetExpect {
    SetExpect {
        outcome,
        retry_after_ms: retry,
        refused: by.to_vec(),
        ..admitted(remaining)
    }
}

impl SetExpect {
    /// With a suppressed limit's factor.
    pub fn factor(mut self, limit: usize, factor: f64) -> Self {
        self.factors.push((limit, factor));
        self
    }

    /// With the hybrid's wait (see the field).
    pub fn hybrid_retry(mut self, retry: u64) -> Self {
        self.hybrid_retry_after_ms = Some(retry);
        self
    }
}

#[derive(Debug, Clone)]
pub enum SetStep {
    /// Set the clock to `T0 + ms`.
    At(u64),
    /// `inc(key, cost)` (or `inc_each` with the step's keys, one per limit), with a draw.
    Inc(u64, f64, Option<Vec<&'static str>>, SetExpect),
    /// `check(key, cost)` (or `check_each`).
    Check(u64, Option<Vec<&'static str>>, SetExpect),
}

#[derive(Debug, Clone)]
pub struct SetScenario {
    pub name: &'static str,
    pub limits: Vec<Limit>,
    pub steps: Vec<SetStep>,
}

/// An absolute limit `name = notation`, grouped in `group_ms`.
fn limit(text: &str, group_ms: u64) -> Limit {
    text.parse::<Limit>()
        .unwrap()
        .group(group_ms.try_into().unwrap())
        .unwrap()
}

fn inc(expect: SetExpect) -> SetStep {
    SetStep::Inc(1, 0.5, None, expect)
}

fn inc_draw(draw: f64, expect: SetExpect) -> SetStep {
    SetStep::Inc(1, draw, None, expect)
}

fn inc_each(keys: &[&'static str], expect: SetExpect) -> SetStep {
    SetStep::Inc(1, 0.5, Some(keys.to_vec()), expect)
}

/// The multi-limit scenarios. Every wait is worked by hand from the limits' groups: a
/// bucket `b` of group `g` stops counting at `(b + 1) g + window`.
pub fn set_table() -> Vec<SetScenario> {
    use Outcome::{Rejected, Shed};
    use SetStep::{At, Check};
    vec![
        SetScenario {
            name: "two limits, one key: the burst refuses and the minute spends nothing",
            limits: vec![limit("burst = 3/s", 100), limit("minute = 5/m", 1000)],
            steps: vec![
                inc(admitted(&[2, 4])),
                inc(admitted(&[1, 3])),
                inc(admitted(&[0, 2])),
                // The burst's bucket 0 leaves at 100 + 1000 ms.
                inc(refused(Rejected, 1100, &[0], &[0, 2])),
                At(1100),
                inc(admitted(&[2, 1])),
                inc(admitted(&[1, 0])),
                // The minute's bucket 0 (3 units) leaves at 1000 + 60 000 ms.
                inc(refused(Rejected, 59_900, &[1], &[1, 0])),
                At(61_000),
                inc(admitted(&[2, 2])),
            ],
        },
        SetScenario {
            name: "three limits, three windows: the wait covers every limit that refused",
            limits: vec![
                limit("a = 2/s", 100),
                limit("b = 4/10s", 1000),
                limit("c = 6/m", 1000),
            ],
            steps: vec![
                inc(admitted(&[1, 3, 5])),
                inc(admitted(&[0, 2, 4])),
                inc(refused(Rejected, 1100, &[0], &[0, 2, 4])),
                At(1100),
                inc(admitted(&[1, 1, 3])),
                inc(admitted(&[0, 0, 2])),
                // a: its bucket of 1100 ms leaves at 2200; b: its bucket 0 at 11 000.
                inc(refused(Rejected, 9900, &[0, 1], &[0, 0, 2])),
                At(2200),
                // a would admit; b refuses; a counts nothing.
                inc(refused(Rejected, 8800, &[1], &[2, 0, 2])),
                At(11_000),
                inc(admitted(&[1, 1, 1])),
                inc(admitted(&[0, 0, 0])),
                // a: 12 100 - 11 000; b: its bucket 1 leaves at 12 000; c: its bucket 0 at
                // 61 000, the longest.
                inc(refused(Rejected, 50_000, &[0, 1, 2], &[0, 0, 0])),
            ],
        },
        SetScenario {
            name: "a key per limit: per IP and per API key, a refusal charges neither",
            limits: vec![limit("ip = 4/10s", 1000), limit("api = 2/10s", 1000)],
            steps: vec![
                inc_each(&["ipA", "k1"], admitted(&[3, 1])),
                inc_each(&["ipA", "k1"], admitted(&[2, 0])),
                inc_each(&["ipA", "k1"], refused(Rejected, 11_000, &[1], &[2, 0])),
                inc_each(&["ipA", "k2"], admitted(&[1, 1])),
                inc_each(&["ipA", "k2"], admitted(&[0, 0])),
                inc_each(&["ipA", "k3"], refused(Rejected, 11_000, &[0], &[0, 2])),
                Check(1, Some(vec!["ipB", "k3"]), admitted(&[4, 2])),
                Check(
                    1,
                    Some(vec!["ipA", "k2"]),
                    refused(Rejected, 11_000, &[0, 1], &[0, 0]),
                ),
            ],
        },
        SetScenario {
            name: "a suppressed limit beside an absolute one: a shed counts only where it shed",
            limits: vec![
                limit("abs = 3/10s", 1000),
                limit("sup = 2/10s", 1000).suppressed(HardLimitFactor::try_from(2.0).unwrap()),
            ],
            steps: vec![
                inc(admitted(&[2, 1])),
                inc(admitted(&[1, 0])),
                // 2 observed in the last second: R = 2/s against 0.2/s, sf = 0.9.
                inc_draw(0.0, refused(Shed, 1000, &[1], &[1, 0]).factor(1, 0.9)),
                inc_draw(0.95, admitted(&[0, 0]).factor(1, 1.0 - 0.2 / 3.0)),
                // abs refuses (its bucket 0 leaves at 11 000) and sup is at its hard limit
                // (4 observed): rejected, counted nowhere.
                inc_draw(
                    0.99,
                    refused(Rejected, 11_000, &[0, 1], &[0, 0]).factor(1, 1.0),
                ),
                At(11_000),
                inc(admitted(&[2, 1])),
                inc(admitted(&[1, 0])),
                inc_draw(0.0, refused(Shed, 1000, &[1], &[1, 0]).factor(1, 0.9)),
                inc_draw(
                    0.0,
                    refused(Shed, 1000, &[1], &[1, 0]).factor(1, 1.0 - 0.2 / 3.0),
                ),
                // Over the hard limit until the bucket of 11 000 leaves at 22 000.
                inc_draw(
                    0.99,
                    refused(Shed, 11_000, &[1], &[1, 0])
                        .factor(1, 1.0)
                        .hybrid_retry(1000),
                ),
                Check(
                    1,
                    None,
                    refused(Shed, 11_000, &[1], &[1, 0]).hybrid_retry(1000),
                ),
            ],
        },
    ]
}

/// Which provider a set run drives.
#[derive(Debug, Clone)]
pub enum SetProvider {
    Local,
    /// A single server or a cluster.
    Redis(RedisConnection),
    /// One hybrid instance, refreshed before every step.
    Hybrid(RedisConnection),
}

impl SetProvider {
    fn name(&self) -> &'static str {
        match self {
            SetProvider::Local => "local",
            SetProvider::Redis(_) => "redis",
            SetProvider::Hybrid(_) => "hybrid",
        }
    }
}

/// A 10 s window of `group_ms` groups, hard limit factor 1.5, no factor cache.
pub fn options_10s(group_ms: u64) -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: group_ms.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: 0.try_into().unwrap(),
    }
}

/// A limiter on `clock` and `draw`; with a connection, its scripts read `clock` too, and the
/// hybrid's committer syncs every hour (out of the way of a test's explicit flushes).
pub fn clocked_limiter(
    options: LocalRateLimiterOptions,
    conn: Option<RedisConnection>,
    clock: &ManualClock,
    draw: &ScriptedDraw,
    tag: &str,
) -> RateLimiter {
    let builder = RateLimiterBuilder::new(options)
        .clock(clock.clone())
        .random(draw.clone());
    let prefix = super::unique_prefix(tag);
    match conn {
        None => builder,
        Some(conn) => builder
            .redis_connection(
                conn,
                super::redis_settings(&options, &prefix, 3_600_000.try_into().unwrap()),
            )
            .redis_timeout(CONFORMANCE_DEADLINE)
            .redis_time_from_clock_for_tests_only(clock.clone()),
    }
    .build()
    .unwrap()
}

fn set_limiter(provider: &SetProvider, clock: &ManualClock, draw: &ScriptedDraw) -> RateLimiter {
    let conn = match provider {
        SetProvider::Local => None,
        SetProvider::Redis(conn) | SetProvider::Hybrid(conn) => Some(conn.clone()),
    };
    clocked_limiter(options_10s(100), conn, clock, draw, "setconf")
}

/// The decision's answer in the table's terms.
fn set_expect_of(d: &SetDecision, want: &SetExpect) -> SetExpect {
    SetExpect {
        outcome: d.outcome(),
        retry_after_ms: d.retry_after_ms(),
        refused: d.refused().collect(),
        remaining: d.limits().iter().map(|l| l.remaining).collect(),
        factors: want
            .factors
            .iter()
            .map(|(i, _)| (*i, d.limits()[*i].suppression_factor))
            .collect(),
        hybrid_retry_after_ms: want.hybrid_retry_after_ms,
    }
}

fn set_same(got: &SetExpect, want: &SetExpect) -> bool {
    let factors = got.factors.len() == want.factors.len()
        && got
            .factors
            .iter()
            .zip(&want.factors)
            .all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() <= 1e-12);
    factors
        && SetExpect {
            factors: Vec::new(),
            ..got.clone()
        } == SetExpect {
            factors: Vec::new(),
            ..want.clone()
        }
}

/// Runs one set scenario; the error names the step that disagreed.
pub async fn run_set_scenario(
    s: &SetScenario,
    index: usize,
    provider: &SetProvider,
) -> Result<(), String> {
    let clock = ManualClock::new(T0);
    let draw = ScriptedDraw::default();
    let rl = set_limiter(provider, &clock, &draw);
    let set = LimitSet::new(s.limits.clone()).unwrap();
    let local = rl.local().policy(set.clone());
    let redis =
        matches!(provider, SetProvider::Redis(_)).then(|| rl.redis().policy(set.clone()).unwrap());
    let hybrid = matches!(provider, SetProvider::Hybrid(_))
        .then(|| rl.hybrid().policy(set.clone()).unwrap());
    let own = |k: &str| format!("s{index}_{k}");
    let key = own("key");
    for (i, step) in s.steps.iter().enumerate() {
        let fail = |what: String| {
            format!(
                "{} set scenario {index} \"{}\", step {i} {step:?}: {what}",
                provider.name(),
                s.name
            )
        };
        let (cost, d, keys, want, record) = match step {
            SetStep::At(ms) => {
                clock.set(T0 + ms);
                continue;
            }
            SetStep::Inc(cost, d, keys, want) => (*cost, *d, keys, want, true),
            SetStep::Check(cost, keys, want) => (*cost, 0.5, keys, want, false),
        };
        draw.set(d);
        let names: Vec<String> = match keys {
            Some(keys) => keys.iter().map(|k| own(k)).collect(),
            None => vec![key.clone(); s.limits.len()],
        };
        let redis_keys: Vec<RedisKey> = names
            .iter()
            .map(|k| RedisKey::try_from(k.as_str()).unwrap())
            .collect();
        let refs: Vec<&RedisKey> = redis_keys.iter().collect();
        let strs: Vec<&str> = names.iter().map(String::as_str).collect();
        let got = match provider {
            SetProvider::Local => match (record, keys.is_some()) {
                (true, false) => local.inc(strs[0], cost),
                (true, true) => local.inc_each(&strs, cost),
                (false, false) => local.check(strs[0], cost),
                (false, true) => local.check_each(&strs, cost),
            },
            SetProvider::Redis(_) => {
                let p = redis.as_ref().unwrap();
                match (record, keys.is_some()) {
                    (true, false) => p.inc(refs[0], cost).await,
                    (true, true) => p.inc_each(&refs, cost).await,
                    (false, false) => p.check(refs[0], cost).await,
                    (false, true) => p.check_each(&refs, cost).await,
                }
            }
            SetProvider::Hybrid(_) => {
                rl.hybrid().flush().await.unwrap();
                let p = hybrid.as_ref().unwrap();
                match (record, keys.is_some()) {
                    (true, false) => p.inc(refs[0], cost),
                    (true, true) => p.inc_each(&refs, cost),
                    (false, false) => p.check(refs[0], cost),
                    (false, true) => p.check_each(&refs, cost),
                }
            }
        };
        let got = got.map_err(|e| fail(e.to_string()))?;
        let mut want = want.clone();
        if let (SetProvider::Hybrid(_), Some(retry)) = (provider, want.hybrid_retry_after_ms) {
            want.retry_after_ms = retry;
        }
        let got = set_expect_of(&got, &want);
        if !set_same(&got, &want) {
            return Err(fail(format!("got {got:?}, expected {want:?}")));
        }
    }
    if let SetProvider::Hybrid(_) = provider {
        assert_eq!(rl.hybrid().stats().flush_errors, 0);
    }
    Ok(())
}

/// Runs the whole set table and fails with every disagreement.
pub async fn run_set_table(provider: &SetProvider) {
    let mut failures = Vec::new();
    let table = set_table();
    for (index, s) in table.iter().enumerate() {
        if let Err(failure) = run_set_scenario(s, index, provider).await {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} set scenarios failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}
