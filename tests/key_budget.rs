//! The key budget: a cap on the keys a limiter holds, what a new key gets once it is full
//! (refused, the overflow key, or an evicted key's place), and the promise that holds under
//! every policy: spraying new keys never resets a key at its limit. Time is a `ManualClock`.

#[cfg(feature = "redis-tokio")]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    Error, KeyBudget, ManualClock, RandomSource, RateLimit, RateLimitDecision, RateLimiter,
    RateLimiterBuilder, WhenFull,
};

const POLICIES: [WhenFull; 3] = [WhenFull::Refuse, WhenFull::Overflow, WhenFull::Evict];

/// Declines every shed call whose factor is above 0.
#[derive(Debug)]
struct AlwaysDecline;

impl RandomSource for AlwaysDecline {
    fn next_f64(&self) -> f64 {
        0.0
    }
}

fn options() -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: 0.try_into().unwrap(),
    }
}

fn limiter(budget: KeyBudget, clock: &ManualClock) -> RateLimiter {
    RateLimiterBuilder::new(options())
        .key_budget(budget)
        .clock(clock.clone())
        .random(AlwaysDecline)
        .build()
        .unwrap()
}

fn rate(per_second: f64) -> RateLimit {
    RateLimit::try_from(per_second).unwrap()
}

/// Brings "victim" to its limit in both strategies (capacity 10: absolute refuses the 11th
/// call, suppressed is over its hard limit of 15 observed).
fn limit_the_victim(rl: &RateLimiter) {
    let r = rate(1.0);
    for _ in 0..10 {
        assert!(rl.local().absolute().inc("victim", &r, 1).is_allowed());
    }
    assert!(!rl.local().absolute().inc("victim", &r, 1).is_allowed());
    for _ in 0..15 {
        rl.local().suppressed().inc("victim", &r, 1);
    }
    assert_eq!(
        rl.local().suppressed().inc("victim", &r, 1),
        RateLimitDecision::Suppressed {
            suppression_factor: 1.0,
            is_allowed: false
        }
    );
}

fn victim_is_still_limited(rl: &RateLimiter, policy: WhenFull) {
    let r = rate(1.0);
    assert!(
        !rl.local().absolute().inc("victim", &r, 1).is_allowed(),
        "{policy:?}: the spray reset the absolute victim"
    );
    assert_eq!(rl.local().absolute().usage("victim"), 10, "{policy:?}");
    assert_eq!(
        rl.local().suppressed().inc("victim", &r, 1),
        RateLimitDecision::Suppressed {
            suppression_factor: 1.0,
            is_allowed: false
        },
        "{policy:?}: the spray reset the suppressed victim"
    );
}

#[test]
fn a_limited_key_is_still_refused_after_a_spray_far_over_the_budget() {
    const BUDGET: usize = 100;
    for policy in POLICIES {
        let clock = ManualClock::new(0);
        let rl = limiter(KeyBudget::new(BUDGET).when_full(policy), &clock);
        limit_the_victim(&rl);
        // 100 times the budget in new keys, at a rate that leaves every sprayed key light
        // (1 of 100), spread over a second so some buckets differ.
        let r = rate(10.0);
        for i in 0..100 * BUDGET {
            clock.set(i as u64 / 10);
            let key = format!("spray-{i}");
            let _ = rl.local().absolute().inc(&key, &r, 1);
            let _ = rl.local().suppressed().inc(&key, &r, 1);
            assert!(rl.key_count() <= BUDGET, "{policy:?}: {}", rl.key_count());
        }
        victim_is_still_limited(&rl, policy);
        assert_eq!(rl.key_count(), BUDGET, "{policy:?}");
        assert_eq!(
            rl.local().absolute().key_count() + rl.local().suppressed().key_count(),
            BUDGET,
            "{policy:?}: the count is the stores' keys"
        );
        assert_eq!(rl.max_keys(), Some(BUDGET));
    }
}

#[test]
fn a_refused_new_key_is_a_clear_error_and_creates_nothing() {
    let clock = ManualClock::new(0);
    let rl = limiter(KeyBudget::new(2), &clock);
    let r = rate(1.0);
    assert!(
        rl.local()
            .absolute()
            .try_inc("a", &r, 1)
            .unwrap()
            .is_allowed()
    );
    assert!(
        rl.local()
            .suppressed()
            .try_inc("a", &r, 1)
            .unwrap()
            .is_allowed()
    );
    let err = rl.local().absolute().try_inc("b", &r, 1).unwrap_err();
    assert!(
        matches!(err, Error::KeyBudgetFull { max_keys: 2 }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("key budget full")
            && message.contains("2 keys")
            && message.contains("key_budget"),
        "{message}"
    );
    assert!(matches!(
        rl.local().suppressed().try_inc("b", &r, 1),
        Err(Error::KeyBudgetFull { max_keys: 2 })
    ));
    // The infallible calls answer a refusal: a retry after one window, or factor 1.
    assert_eq!(
        rl.local().absolute().inc("b", &r, 1),
        RateLimitDecision::Rejected {
            window_size_seconds: 10,
            retry_after_ms: 10_000,
            remaining_after_waiting: 0
        }
    );
    assert_eq!(
        rl.local().suppressed().inc("b", &r, 1),
        RateLimitDecision::Suppressed {
            suppression_factor: 1.0,
            is_allowed: false
        }
    );
    assert_eq!(rl.local().absolute().usage("b"), 0);
    assert_eq!(rl.key_count(), 2);
    // Held keys are decided as ever; a malformed call is still its own error.
    assert!(
        rl.local()
            .absolute()
            .try_inc("a", &r, 1)
            .unwrap()
            .is_allowed()
    );
    assert!(matches!(
        rl.local().absolute().try_inc("b", &r, 0),
        Err(Error::ZeroCount)
    ));
    // Once cleanup drops the stale keys, new keys have room again.
    clock.set(10_100);
    assert_eq!(rl.cleanup(), 2);
    assert_eq!(rl.key_count(), 0);
    assert!(
        rl.local()
            .absolute()
            .try_inc("b", &r, 1)
            .unwrap()
            .is_allowed()
    );
    assert_eq!(rl.key_count(), 1);
}

#[test]
fn overflowing_keys_share_one_limit_and_leave_held_keys_alone() {
    let clock = ManualClock::new(0);
    let rl = limiter(KeyBudget::new(1).when_full(WhenFull::Overflow), &clock);
    let r = rate(0.5); // capacity 5
    assert!(rl.local().absolute().inc("held", &r, 2).is_allowed());
    // Five units fit the one overflow key, whichever new keys ask.
    for i in 0..5 {
        assert!(
            rl.local()
                .absolute()
                .inc(&format!("new-{i}"), &r, 1)
                .is_allowed(),
            "call {i}"
        );
    }
    assert!(!rl.local().absolute().inc("new-99", &r, 1).is_allowed());
    assert!(
        !rl.local()
            .absolute()
            .try_inc("other", &r, 1)
            .unwrap()
            .is_allowed()
    );
    // The held key is its own: 3 more fit it.
    assert_eq!(rl.local().absolute().usage("held"), 2);
    assert!(rl.local().absolute().inc("held", &r, 3).is_allowed());
    assert!(!rl.local().absolute().inc("held", &r, 1).is_allowed());
    assert_eq!(rl.key_count(), 1, "the overflow key is not counted");
    // The overflow key expires like any key and goes with cleanup.
    clock.set(10_100);
    assert_eq!(rl.cleanup(), 1);
    assert!(rl.local().absolute().inc("new-0", &r, 1).is_allowed());
    assert_eq!(
        rl.local().absolute().usage("new-0"),
        1,
        "a key of its own now"
    );
}

#[test]
fn eviction_takes_an_idle_key_first_then_a_light_one_and_never_a_loaded_one() {
    let clock = ManualClock::new(0);
    let rl = limiter(KeyBudget::new(3).when_full(WhenFull::Evict), &clock);
    let abs = rl.local().absolute();
    let r = rate(1.0); // capacity 10
    abs.inc("idle", &r, 1);
    clock.set(5_000);
    abs.inc("light", &r, 5); // half its capacity: may go
    abs.inc("loaded", &r, 6); // over half: stays
    clock.set(10_100); // "idle"'s bucket has expired, the others' have not
    assert!(abs.inc("new-1", &r, 6).is_allowed()); // loaded too
    assert_eq!(rl.key_count(), 3);
    assert_eq!(
        (abs.usage("light"), abs.usage("loaded")),
        (5, 6),
        "the idle key went"
    );
    assert!(abs.inc("new-2", &r, 1).is_allowed());
    assert_eq!(abs.usage("light"), 0, "then the light key went");
    assert_eq!((abs.usage("loaded"), abs.usage("new-1")), (6, 6));
    // Each new key (1 of 10) is light: it goes for the next one, the loaded ones never.
    for i in 3..50 {
        assert!(abs.inc(&format!("new-{i}"), &r, 1).is_allowed());
        assert_eq!((abs.usage("loaded"), abs.usage("new-1")), (6, 6), "new-{i}");
        assert_eq!(abs.usage(&format!("new-{}", i - 1)), 0, "new-{i}");
        assert_eq!(rl.key_count(), 3);
    }
    // With only loaded keys left, a new key is refused.
    let clock = ManualClock::new(0);
    let rl = limiter(KeyBudget::new(2).when_full(WhenFull::Evict), &clock);
    let abs = rl.local().absolute();
    abs.inc("a", &r, 6);
    abs.inc("b", &r, 10);
    assert!(matches!(
        abs.try_inc("c", &r, 1),
        Err(Error::KeyBudgetFull { max_keys: 2 })
    ));
    assert_eq!((abs.usage("a"), abs.usage("b")), (6, 10));
}

#[test]
fn threads_spraying_at_once_never_pass_the_budget() {
    const BUDGET: usize = 1_000;
    for policy in POLICIES {
        let clock = ManualClock::new(0);
        let rl = Arc::new(limiter(KeyBudget::new(BUDGET).when_full(policy), &clock));
        limit_the_victim(&rl);
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (rl, done) = (rl.clone(), done.clone());
            std::thread::spawn(move || {
                let mut highest = 0;
                while !done.load(Ordering::Relaxed) {
                    highest = highest.max(rl.key_count());
                    std::thread::yield_now();
                }
                highest
            })
        };
        let sprayers: Vec<_> = (0..3)
            .map(|t| {
                let rl = rl.clone();
                std::thread::spawn(move || {
                    let r = rate(10.0);
                    for i in 0..5 * BUDGET {
                        let key = format!("t{t}-{i}");
                        let _ = rl.local().absolute().inc(&key, &r, 1);
                        let _ = rl.local().suppressed().inc(&key, &r, 1);
                    }
                })
            })
            .collect();
        for s in sprayers {
            s.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        let highest = watcher.join().unwrap();
        assert!(highest <= BUDGET, "{policy:?}: {highest} keys held");
        assert_eq!(rl.key_count(), BUDGET, "{policy:?}");
        assert_eq!(
            rl.local().absolute().key_count() + rl.local().suppressed().key_count(),
            BUDGET,
            "{policy:?}"
        );
        victim_is_still_limited(&rl, policy);
    }
}

#[test]
fn a_budget_of_no_keys_is_an_error_at_build() {
    let err = RateLimiterBuilder::new(options())
        .max_keys(0)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("KeyBudget::max_keys") && err.contains("at least 1"),
        "{err}"
    );
    let rl = RateLimiterBuilder::new(options()).build().unwrap();
    assert_eq!(rl.max_keys(), None);
    rl.local().absolute().inc("k", &rate(1.0), 1);
    assert_eq!(rl.key_count(), 1, "counted without a budget too");
}

/// The hybrid provider under a budget: a new key is refused (`Overflow` too), held keys go
/// on, and a key at its limit stays limited after a spray.
#[cfg(feature = "redis-tokio")]
mod hybrid {
    use super::*;
    use sluicegate::hybrid::SyncIntervalMs;
    use sluicegate::redis::RedisKey;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_limited_hybrid_key_stays_limited_and_new_keys_are_refused() {
        let redis = support::TestRedis::get();
        for policy in POLICIES {
            let prefix = support::unique_prefix("budget");
            let local = options();
            let rl = RateLimiterBuilder::new(local)
                .redis_connection(
                    redis.manager().await,
                    support::redis_settings(&local, &prefix, SyncIntervalMs::try_from(5).unwrap()),
                )
                .key_budget(KeyBudget::new(10).when_full(policy))
                .build()
                .unwrap();
            let r = rate(1.0); // capacity 10
            let victim = RedisKey::try_from("victim").unwrap();
            // Spend the whole capacity (flushing whenever the local share runs out).
            let mut admitted = 0;
            for _ in 0..200 {
                if admitted == 10 {
                    break;
                }
                if rl
                    .hybrid()
                    .absolute()
                    .inc_sync(&victim, &r, 1)
                    .unwrap()
                    .is_allowed()
                {
                    admitted += 1;
                } else {
                    rl.hybrid().flush().await.unwrap();
                }
            }
            assert_eq!(admitted, 10, "{policy:?}");
            rl.hybrid().flush().await.unwrap();
            assert!(
                !rl.hybrid()
                    .absolute()
                    .inc_sync(&victim, &r, 1)
                    .unwrap()
                    .is_allowed()
            );
            let mut refused = 0;
            for i in 0..200 {
                let key = RedisKey::try_from(format!("spray-{i}")).unwrap();
                match rl.hybrid().absolute().inc_sync(&key, &r, 1) {
                    Ok(_) => {}
                    Err(Error::KeyBudgetFull { max_keys: 10 }) => refused += 1,
                    Err(other) => panic!("{policy:?}: {other:?}"),
                }
                assert!(rl.key_count() <= 10, "{policy:?}");
            }
            // Nine places were free; every other sprayed key was refused (none is idle: each
            // has a lease or unsent units).
            assert_eq!(refused, 191, "{policy:?}");
            rl.hybrid().flush().await.unwrap();
            assert!(
                !rl.hybrid()
                    .absolute()
                    .inc_sync(&victim, &r, 1)
                    .unwrap()
                    .is_allowed(),
                "{policy:?}: the spray reset the hybrid victim"
            );
        }
    }
}
