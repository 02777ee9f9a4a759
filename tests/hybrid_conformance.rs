//! The shared conformance table, run through the hybrid provider.
//!
//! The table holds every provider to the same decisions for the same calls. The hybrid
//! provider decides from the view of its last refresh, so here one instance flushes and
//! refreshes before every step (what the committer does every sync interval) and the
//! scripts read the test's `ManualClock` (test-only `redis_time_from_clock_for_tests_only`).
//! Under that condition every scenario applies: waits, rate changes, the factor cache,
//! the hard limit and malformed calls answer as the Redis and local providers do.
#![cfg(feature = "redis-tokio")]

mod support;

use sluicegate::redis::RedisKey;
use sluicegate::{Error, ManualClock, RateLimit, RateLimitDecision, RateLimiterBuilder};
use support::TestRedis;
use support::conformance::{Expect, Scenario, ScriptedDraw, Step, table};

const T0: u64 = 1_000_000_000_000;

fn expect_of(result: Result<RateLimitDecision, Error>) -> Result<Expect, String> {
    match result {
        Ok(RateLimitDecision::Allowed) => Ok(Expect::Allowed),
        Ok(RateLimitDecision::Rejected {
            retry_after_ms,
            remaining_after_waiting,
            ..
        }) => Ok(Expect::Rejected(retry_after_ms, remaining_after_waiting)),
        Ok(RateLimitDecision::Suppressed {
            suppression_factor,
            is_allowed,
        }) => Ok(Expect::Suppressed(suppression_factor, is_allowed)),
        Err(Error::ZeroCount) => Ok(Expect::ZeroCount),
        Err(Error::CapacityBelowOne { .. }) => Ok(Expect::CapacityBelowOne),
        Err(Error::CountAboveCapacity { .. }) => Ok(Expect::CountAboveCapacity),
        Err(Error::CapacityAboveMax { .. }) => Ok(Expect::CapacityAboveMax),
        Err(other) => Err(format!("unexpected error: {other}")),
    }
}

fn same(got: Expect, want: Expect) -> bool {
    match (got, want) {
        (Expect::Suppressed(a, x), Expect::Suppressed(b, y)) => x == y && (a - b).abs() <= 1e-12,
        _ => got == want,
    }
}

async fn run(
    s: &Scenario,
    index: usize,
    redis: &TestRedis,
    prefix: &RedisKey,
) -> Result<(), String> {
    let clock = ManualClock::new(T0);
    let draw = ScriptedDraw::default();
    let rl = RateLimiterBuilder::new(s.local_options())
        .clock(clock.clone())
        .random(draw.clone())
        .redis_connection(
            redis.manager().await,
            // Long: the committer stays out of the way of the explicit flushes.
            s.redis_settings(prefix, 3_600_000.try_into().unwrap()),
        )
        .redis_time_from_clock_for_tests_only(clock.clone())
        .build()
        .unwrap();
    let key = RedisKey::try_from(format!("hscenario{index}")).unwrap();
    let hybrid = rl.hybrid();
    for (i, step) in s.steps.iter().enumerate() {
        let fail =
            |what: String| format!("scenario {index} \"{}\", step {i} {step:?}: {what}", s.name);
        if !matches!(step, Step::At(_)) {
            hybrid.flush().await.unwrap();
        }
        let (got, want) = match *step {
            Step::At(ms) => {
                clock.set(T0 + ms);
                continue;
            }
            Step::Abs(rate, count, want) => {
                let rate = RateLimit::try_from(rate).unwrap();
                (
                    expect_of(hybrid.absolute().inc(&key, &rate, count).await).map_err(fail)?,
                    want,
                )
            }
            Step::AbsCheck(want) => (
                expect_of(hybrid.absolute().is_allowed(&key).await).map_err(fail)?,
                want,
            ),
            Step::Sup(rate, count, d, want) => {
                draw.set(d);
                let rate = RateLimit::try_from(rate).unwrap();
                (
                    expect_of(hybrid.suppressed().inc(&key, &rate, count).await).map_err(fail)?,
                    want,
                )
            }
            Step::Factor(want) => {
                let got = hybrid
                    .suppressed()
                    .get_suppression_factor(&key)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                (
                    Expect::Suppressed(got, true),
                    Expect::Suppressed(want, true),
                )
            }
        };
        if !same(got, want) {
            return Err(fail(format!("got {got:?}, expected {want:?}")));
        }
    }
    assert_eq!(hybrid.stats().flush_errors, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_table_with_a_refresh_before_each_call() {
    let redis = TestRedis::get();
    let prefix = support::unique_prefix("hybrid_conf");
    let table = table();
    let mut failures = Vec::new();
    for (index, s) in table.iter().enumerate() {
        if let Err(failure) = run(s, index, &redis, &prefix).await {
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

/// The hybrid's admitted decisions carry the key's usage from the state they were decided
/// on: Redis's count at the last refresh plus what this instance admitted since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_hybrid_decisions_carry_the_usage_of_their_view() {
    let redis = TestRedis::get();
    let clock = ManualClock::new(T0);
    let draw = ScriptedDraw::default();
    let conn = Some(redis.manager().await.into());
    let rl = support::conformance::clocked_limiter(
        support::conformance::options_10s(1000),
        conn,
        &clock,
        &draw,
        "husage",
    );
    let hybrid = rl.hybrid();
    let rate = RateLimit::try_from(1.0).unwrap(); // capacity 10
    for strategy in ["absolute", "suppressed"] {
        let key = RedisKey::try_from(format!("hu_{strategy}")).unwrap();
        let inc = |count: u64| {
            let got = match strategy {
                "absolute" => hybrid.absolute().inc_sync_with_usage(&key, &rate, count),
                _ => hybrid.suppressed().inc_sync_with_usage(&key, &rate, count),
            };
            let (decision, usage) = got.unwrap();
            (decision, usage.map(|u| (u.used, u.remaining, u.reset_ms)))
        };
        clock.set(T0);
        hybrid.flush().await.unwrap();
        let (d, u) = inc(3);
        assert!(d.is_allowed(), "{strategy}");
        assert_eq!(u, Some((3, 7, 10_000)), "{strategy}");
        clock.set(T0 + 2500);
        hybrid.flush().await.unwrap();
        let (_, u) = inc(2);
        // Redis's 3 at the refresh plus 2; only the new bucket is known: the window.
        assert_eq!(u, Some((5, 5, 10_000)), "{strategy}");
        clock.set(T0 + 2600);
        hybrid.flush().await.unwrap();
        // Past half the capacity the refresh sends an absolute key's oldest buckets: the
        // first leaves at +11 s. A suppressed key's refresh sends sums only: its reset is
        // the window (an upper bound).
        hybrid.flush().await.unwrap();
        let (_, u) = inc(1);
        assert_eq!(u.map(|u| u.0), Some(6), "{strategy}");
        hybrid.flush().await.unwrap();
        let (_, u) = inc(1);
        let reset = if strategy == "absolute" {
            8_400
        } else {
            10_000
        };
        assert_eq!(u, Some((7, 3, reset)), "{strategy}");
    }
    assert_eq!(hybrid.stats().flush_errors, 0);
}

/// The multi-limit table, one hybrid instance refreshed before every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_set_table_with_a_refresh_before_each_call() {
    let redis = TestRedis::get();
    let conn = redis.manager().await;
    support::conformance::run_set_table(&support::conformance::SetProvider::Hybrid(conn.into()))
        .await;
}
