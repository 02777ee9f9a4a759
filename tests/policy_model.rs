//! Local limit sets against a plain reference model.
//!
//! The model keeps, for every (limit, key), each counted call as a timestamped event
//! `(t_ms, accepted, observed)` and recomputes every answer from those lists, straight from
//! SPEC §7 and the strategies' rules (§2–§4): written to be obviously right, not fast.
//! Random sequences over sets of two and three limits with different windows and groups
//! (absolute and suppressed, quotas from the set or per call) drive both on a
//! `ManualClock`: `inc`, `inc_each` (per-IP beside per-user keys), `inc_with`, the checks,
//! clock advances and cleanup. Every answer must be identical: outcome, `retry_after_ms`,
//! and each limit's remaining, reset, factor and refusal; and key counts. Both sides draw
//! from their own `SeededRandom` with the same seed, one draw per request that a drawing
//! limit decides, so the draws line up exactly.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::policy::{Limit, LimitName, LimitSet, LimitStatus, Outcome, Quota, SetDecision};
use sluicegate::{
    Error, HardLimitFactor, ManualClock, RandomSource, RateGroupSizeMs, RateLimiterBuilder,
    SeededRandom,
};

/// The relative slack against f64 rounding.
const SLACK: f64 = 1e-9;

fn fits(used: u64, capacity: f64) -> bool {
    used as f64 <= capacity * (1.0 + SLACK)
}

fn reaches(used: u64, limit: f64) -> bool {
    used as f64 >= limit * (1.0 - SLACK)
}

const KEYS: [&str; 3] = ["alice", "bob", ""];
const IPS: [&str; 2] = ["10.0.0.1", "10.0.0.2"];

// ---------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------

/// One limit of a set, as the model reads it.
#[derive(Debug, Clone, Copy)]
struct LimitSpec {
    window_s: u64,
    group_ms: u64,
    count: f64,
    /// `None`: absolute; `Some(hard factor)`: suppressed.
    suppressed: Option<f64>,
}

impl LimitSpec {
    fn window_ms(&self) -> u64 {
        self.window_s * 1000
    }

    /// The first instant at which an event made at `t` no longer counts.
    fn expiry(&self, t: u64) -> u64 {
        (t / self.group_ms + 1) * self.group_ms + self.window_ms()
    }

    fn limit(&self, i: usize) -> Limit {
        let name = LimitName::new(format!("l{i}")).unwrap();
        let limit = Limit::new(name, Quota::new(self.count, self.window_s).unwrap())
            .group(RateGroupSizeMs::try_from(self.group_ms).unwrap())
            .unwrap();
        match self.suppressed {
            None => limit,
            Some(h) => limit.suppressed(HardLimitFactor::try_from(h).unwrap()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Event {
    t: u64,
    accepted: u64,
    observed: u64,
}

/// What one limit says before the set decides.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Says {
    Admit,
    Draw(f64),
    Refuse(u64),
    Hard(u64),
}

struct Model {
    limits: Vec<LimitSpec>,
    now: u64,
    draws: SeededRandom,
    /// `(limit, key)` → its counted events.
    events: BTreeMap<(usize, String), Vec<Event>>,
    /// The keys the provider holds: any call that counted for them, until a cleanup finds
    /// nothing of theirs counting in any limit.
    held: BTreeSet<String>,
}

impl Model {
    fn events(&self, i: usize, key: &str) -> &[Event] {
        self.events
            .get(&(i, key.to_string()))
            .map_or(&[], |v| v.as_slice())
    }

    /// `(accepted, observed)` counting for limit `i` on `key` at `at`.
    fn usage_at(&self, i: usize, key: &str, at: u64) -> (u64, u64) {
        let l = &self.limits[i];
        self.events(i, key)
            .iter()
            .filter(|e| l.expiry(e.t) > at)
            .fold((0, 0), |(a, o), e| (a + e.accepted, o + e.observed))
    }

    /// The first instant from now on at which `done(usage then)` holds, as a wait; `None`
    /// if it never does while events expire.
    fn wait_until(&self, i: usize, key: &str, done: impl Fn((u64, u64)) -> bool) -> Option<u64> {
        let l = &self.limits[i];
        let mut instants: Vec<u64> = self
            .events(i, key)
            .iter()
            .map(|e| l.expiry(e.t))
            .filter(|at| *at > self.now)
            .collect();
        instants.sort_unstable();
        instants
            .into_iter()
            .find(|at| done(self.usage_at(i, key, *at)))
            .map(|at| at - self.now)
    }

    /// The suppression factor (SPEC §4): `clamp(1 − r/R, 0, 1)`, `R` the larger of the
    /// window's and the last second's observed rate, each over the time its bucket
    /// positions cover (at least a second).
    fn factor(&self, i: usize, key: &str, rate: f64) -> f64 {
        let l = &self.limits[i];
        let (g, now) = (l.group_ms, self.now);
        let first = |start: u64, still: &dyn Fn(u64) -> bool| {
            let mut b = start;
            while !still(b) {
                b += 1;
            }
            b
        };
        let oldest = first(now.saturating_sub(l.window_ms() + g) / g, &|b| {
            l.expiry(b * g) > now
        });
        let oldest_recent = first(now.saturating_sub(1000 + g) / g, &|b| {
            (b + 1) * g > now.saturating_sub(1000)
        });
        let over = |observed: u64, from: u64| {
            let span = (now - from * g).max(1000);
            observed as f64 * 1000.0 / span as f64
        };
        let (_, observed) = self.usage_at(i, key, now);
        let recent: u64 = self
            .events(i, key)
            .iter()
            .filter(|e| l.expiry(e.t) > now && (e.t / g + 1) * g > now.saturating_sub(1000))
            .map(|e| e.observed)
            .sum();
        let perceived = over(observed, oldest).max(over(recent, oldest_recent));
        if perceived <= rate {
            0.0
        } else {
            1.0 - rate / perceived
        }
    }

    fn says(&self, i: usize, key: &str, cap: f64, cost: u64) -> Says {
        let l = self.limits[i];
        let (accepted, observed) = self.usage_at(i, key, self.now);
        match l.suppressed {
            None => {
                if fits(accepted + cost, cap) {
                    Says::Admit
                } else if !fits(cost, cap) {
                    Says::Refuse(u64::MAX)
                } else {
                    let wait = self.wait_until(i, key, |(a, _)| fits(a + cost, cap));
                    Says::Refuse(wait.expect("a cost that fits the quota fits an empty window"))
                }
            }
            Some(h) => {
                let hard = cap * h;
                if !fits(cost, cap) {
                    Says::Hard(u64::MAX)
                } else if reaches(observed, hard) {
                    let wait = self.wait_until(i, key, |(_, o)| !reaches(o, hard));
                    Says::Hard(wait.unwrap_or(u64::MAX))
                } else if fits(accepted + cost, cap) {
                    Says::Admit
                } else {
                    Says::Draw(self.factor(i, key, cap / l.window_s as f64))
                }
            }
        }
    }

    /// One call: a key and a quota count per limit.
    fn decide(&mut self, keys: &[&str], counts: &[f64], cost: u64, record: bool) -> Answer {
        let n = self.limits.len();
        let says: Vec<Says> = (0..n)
            .map(|i| self.says(i, keys[i], counts[i], cost))
            .collect();
        let rejected = says.iter().any(|s| matches!(s, Says::Refuse(_)));
        let hard = says.iter().any(|s| matches!(s, Says::Hard(_)));
        let drawing = says.iter().any(|s| matches!(s, Says::Draw(_)));
        let draw = (record && drawing && !rejected && !hard).then(|| self.draws.next_f64());
        let shed: Vec<bool> = says
            .iter()
            .map(|s| match s {
                Says::Hard(_) => true,
                Says::Draw(f) if !rejected && !hard => draw.is_none_or(|d| d < *f),
                _ => false,
            })
            .collect();
        let outcome = if rejected {
            Outcome::Rejected
        } else if shed.iter().any(|s| *s) {
            Outcome::Shed
        } else {
            Outcome::Allowed
        };
        let mut statuses = Vec::new();
        let mut retry = 0;
        for i in 0..n {
            let l = self.limits[i];
            let counted = match (outcome, record) {
                (Outcome::Allowed, true) => Some((cost, cost)),
                (Outcome::Shed, true) if shed[i] && fits(cost, counts[i]) => Some((0, cost)),
                _ => None,
            };
            if let Some((accepted, observed)) = counted {
                self.events
                    .entry((i, keys[i].to_string()))
                    .or_default()
                    .push(Event {
                        t: self.now,
                        accepted,
                        observed,
                    });
                self.held.insert(keys[i].to_string());
            }
            let refused = match says[i] {
                Says::Refuse(_) | Says::Hard(_) => true,
                Says::Draw(_) => shed[i],
                Says::Admit => false,
            };
            let wait = match says[i] {
                Says::Refuse(w) | Says::Hard(w) => w,
                Says::Draw(_) if refused => 1000.min(l.window_ms()),
                _ => 0,
            };
            if refused {
                retry = retry.max(wait);
            }
            let (accepted, _) = self.usage_at(i, keys[i], self.now);
            let oldest_expiry = self
                .events(i, keys[i])
                .iter()
                .map(|e| l.expiry(e.t))
                .filter(|at| *at > self.now)
                .min();
            statuses.push(LimitStatus {
                remaining: (counts[i] - accepted as f64).max(0.0).floor() as u64,
                reset_ms: if refused {
                    wait.min(l.window_ms())
                } else {
                    oldest_expiry.map_or(0, |at| (at - self.now).min(l.window_ms()))
                },
                suppression_factor: match says[i] {
                    Says::Hard(_) => 1.0,
                    Says::Draw(f) => f,
                    _ => 0.0,
                },
                refused,
            });
        }
        Answer {
            outcome,
            retry,
            statuses,
        }
    }

    fn cleanup(&mut self) -> usize {
        let now = self.now;
        let limits = self.limits.clone();
        for ((i, _), events) in self.events.iter_mut() {
            events.retain(|e| limits[*i].expiry(e.t) > now);
        }
        let live: BTreeSet<String> = self
            .events
            .iter()
            .filter(|(_, e)| !e.is_empty())
            .map(|((_, k), _)| k.clone())
            .collect();
        let before = self.held.len();
        self.held.retain(|k| live.contains(k));
        before - self.held.len()
    }
}

/// A decision as the model computes it, compared field by field with the provider's.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    outcome: Outcome,
    retry: u64,
    statuses: Vec<LimitStatus>,
}

impl From<&SetDecision> for Answer {
    fn from(d: &SetDecision) -> Self {
        Answer {
            outcome: d.outcome(),
            retry: d.retry_after_ms(),
            statuses: d.limits().to_vec(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Random sets and calls
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Inc {
        key: usize,
        cost: u64,
    },
    Check {
        key: usize,
        cost: u64,
    },
    /// Limit 0 on an IP, the others on the user key.
    IncEach {
        ip: usize,
        key: usize,
        cost: u64,
    },
    CheckEach {
        ip: usize,
        key: usize,
        cost: u64,
    },
    /// `inc_with`: the user's plan scales every count (at least 1).
    IncWith {
        ip: usize,
        key: usize,
        scale: f64,
        cost: u64,
    },
    Advance(u64),
    Cleanup,
}

#[derive(Debug, Clone)]
struct Case {
    limits: Vec<LimitSpec>,
    seed: u64,
    ops: Vec<Op>,
}

fn limit_spec() -> impl Strategy<Value = LimitSpec> {
    // (window s, group ms): fine and coarse groups, groups that do not divide the window.
    let geometry = prop::sample::select(vec![
        (1, 10),
        (1, 100),
        (1, 1000),
        (2, 250),
        (3, 7),
        (5, 50),
        (10, 1000),
        (60, 600),
        (60, 7_000),
    ]);
    let count = prop::sample::select(vec![1.0, 2.0, 2.5, 3.0, 5.0, 8.0, 12.0]);
    let strategy = prop_oneof![
        3 => Just(None),
        1 => prop::sample::select(vec![1.0, 1.5, 2.0]).prop_map(Some),
    ];
    (geometry, count, strategy).prop_map(|((window_s, group_ms), count, suppressed)| LimitSpec {
        window_s,
        group_ms,
        count,
        suppressed,
    })
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let ip = 0..IPS.len();
    let cost = prop_oneof![8 => Just(1u64), 3 => 2..=4u64, 1 => 5..=13u64];
    let scale = prop::sample::select(vec![0.5, 1.0, 1.0, 2.0, 3.0]);
    prop_oneof![
        8 => (key.clone(), cost.clone()).prop_map(|(key, cost)| Op::Inc { key, cost }),
        1 => (key.clone(), cost.clone()).prop_map(|(key, cost)| Op::Check { key, cost }),
        4 => (ip.clone(), key.clone(), cost.clone())
            .prop_map(|(ip, key, cost)| Op::IncEach { ip, key, cost }),
        1 => (ip.clone(), key.clone(), cost.clone())
            .prop_map(|(ip, key, cost)| Op::CheckEach { ip, key, cost }),
        3 => (ip, key, scale, cost)
            .prop_map(|(ip, key, scale, cost)| Op::IncWith { ip, key, scale, cost }),
        6 => prop_oneof![
            3 => Just(0u64),
            6 => 1..=60u64,
            3 => 61..=1500u64,
            1 => 1501..=70_000u64,
        ]
        .prop_map(Op::Advance),
        1 => Just(Op::Cleanup),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(limit_spec(), 2..=3),
        any::<u64>(),
        prop::collection::vec(op(), 1..250),
    )
        .prop_map(|(limits, seed, ops)| Case { limits, seed, ops })
}

/// How often the interesting branches were taken.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    allowed: u64,
    rejected: u64,
    shed: u64,
    /// Refused by one limit while another had room: the all-or-nothing rule at work.
    partial: u64,
    cleaned: u64,
}

fn run(case: &Case) -> Result<Coverage, TestCaseError> {
    let clock = ManualClock::new(0);
    let rl = RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: 1.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: 0.try_into().unwrap(),
    })
    .clock(clock.clone())
    .random(SeededRandom::new(case.seed))
    .build()
    .unwrap();
    let set = LimitSet::new(case.limits.iter().enumerate().map(|(i, l)| l.limit(i))).unwrap();
    let policy = rl.local().policy(set);
    let n = case.limits.len();
    let mut model = Model {
        limits: case.limits.clone(),
        now: 0,
        draws: SeededRandom::new(case.seed),
        events: BTreeMap::new(),
        held: BTreeSet::new(),
    };
    let set_counts: Vec<f64> = case.limits.iter().map(|l| l.count).collect();
    let mut seen = Coverage::default();
    for (step, op) in case.ops.iter().enumerate() {
        let each = |ip: usize, key: usize| -> Vec<&str> {
            (0..n)
                .map(|i| if i == 0 { IPS[ip] } else { KEYS[key] })
                .collect()
        };
        let (got, want) = match *op {
            Op::Advance(ms) => {
                clock.advance(ms);
                model.now += ms;
                continue;
            }
            Op::Cleanup => {
                let want = model.cleanup();
                seen.cleaned += want as u64;
                prop_assert_eq!(policy.cleanup(), want, "step {}", step);
                prop_assert_eq!(policy.key_count(), model.held.len(), "step {}", step);
                continue;
            }
            Op::Inc { key, cost } => (
                policy.inc(KEYS[key], cost),
                model.decide(&vec![KEYS[key]; n], &set_counts, cost, true),
            ),
            Op::Check { key, cost } => (
                policy.check(KEYS[key], cost),
                model.decide(&vec![KEYS[key]; n], &set_counts, cost, false),
            ),
            Op::IncEach { ip, key, cost } => {
                let keys = each(ip, key);
                (
                    policy.inc_each(&keys, cost),
                    model.decide(&keys, &set_counts, cost, true),
                )
            }
            Op::CheckEach { ip, key, cost } => {
                let keys = each(ip, key);
                (
                    policy.check_each(&keys, cost),
                    model.decide(&keys, &set_counts, cost, false),
                )
            }
            Op::IncWith {
                ip,
                key,
                scale,
                cost,
            } => {
                let keys = each(ip, key);
                let counts: Vec<f64> = set_counts.iter().map(|c| (c * scale).max(1.0)).collect();
                (
                    policy.inc_with(&keys, &counts, cost),
                    model.decide(&keys, &counts, cost, true),
                )
            }
        };
        let got = got.map_err(|e: Error| TestCaseError::fail(format!("step {step}: {e}")))?;
        prop_assert_eq!(
            Answer::from(&got),
            want,
            "step {} at {} ms: {:?}",
            step,
            model.now,
            op
        );
        match got.outcome() {
            Outcome::Allowed => seen.allowed += 1,
            Outcome::Rejected => seen.rejected += 1,
            Outcome::Shed => seen.shed += 1,
        }
        if !got.is_allowed() && got.limits().iter().any(|l| !l.refused && l.remaining > 0) {
            seen.partial += 1;
        }
        prop_assert_eq!(
            policy.key_count(),
            model.held.len(),
            "keys after step {}",
            step
        );
    }
    Ok(seen)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn local_sets_match_the_reference_model(case in case()) {
        run(&case)?;
    }
}

/// The random sequences reach every branch, so the test above is not vacuous.
#[test]
fn the_model_runs_reach_every_branch() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut total = Coverage::default();
    for _ in 0..200 {
        let case = case().new_tree(&mut runner).unwrap().current();
        let seen = run(&case).unwrap();
        total.allowed += seen.allowed;
        total.rejected += seen.rejected;
        total.shed += seen.shed;
        total.partial += seen.partial;
        total.cleaned += seen.cleaned;
    }
    assert!(
        total.allowed > 1000
            && total.rejected > 1000
            && total.shed > 100
            && total.partial > 500
            && total.cleaned > 50,
        "{total:?}"
    );
}
