//! Limit sets on the local provider: all or nothing, exact under threads, and the one-limit
//! set deciding exactly as the seeds' single-limit API.

use std::sync::atomic::{AtomicU64, Ordering};

use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::policy::{Limit, LimitName, LimitSet, LocalPolicy, Outcome, Quota};
use sluicegate::{
    HardLimitFactor, ManualClock, RateGroupSizeMs, RateLimit, RateLimitDecision, RateLimiter,
    RateLimiterBuilder, SeededRandom,
};

fn limiter(clock: &ManualClock, window_s: u64, group_ms: u64) -> RateLimiter {
    RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: window_s.try_into().unwrap(),
        rate_group_size_ms: group_ms.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: 0.try_into().unwrap(),
    })
    .clock(clock.clone())
    .random(SeededRandom::new(7))
    .build()
    .unwrap()
}

fn policy(clock: &ManualClock, set: &str) -> LocalPolicy {
    limiter(clock, 1, 100).local().policy(set.parse().unwrap())
}

/// The demo's `/search`: burst 3 per second and 10 per minute, 100 ms groups.
fn search(clock: &ManualClock) -> LocalPolicy {
    let group = RateGroupSizeMs::try_from(100).unwrap();
    let set = LimitSet::new([
        Limit::new(
            LimitName::new("burst").unwrap(),
            Quota::per_second(3.0).unwrap(),
        )
        .group(group)
        .unwrap(),
        "minute = 10/m"
            .parse::<Limit>()
            .unwrap()
            .group(group)
            .unwrap(),
    ])
    .unwrap();
    limiter(clock, 1, 100).local().policy(set)
}

#[test]
fn a_request_refused_by_one_limit_counts_in_none() {
    let clock = ManualClock::new(0);
    let p = search(&clock);
    // 100 requests in the first 100 ms: the burst limit admits 3, the minute limit sees 3.
    let admitted = (0..100)
        .filter(|_| p.inc("k", 1).unwrap().is_allowed())
        .count();
    assert_eq!(admitted, 3);
    let d = p.check("k", 1).unwrap();
    assert_eq!(d.outcome(), Outcome::Rejected);
    assert_eq!(
        d.limits()[1].remaining,
        7,
        "refused requests spent no minute quota"
    );
    assert_eq!(d.limits()[0].remaining, 0);
    assert_eq!(
        d.refused().collect::<Vec<_>>(),
        vec![0],
        "only the burst limit refuses"
    );
}

#[test]
fn refusals_name_the_limits_and_the_wait_covers_them_all() {
    let clock = ManualClock::new(0);
    let p = search(&clock);
    // A bucket counts for its window plus its group: 3 every 1.1 s fit the burst limit.
    let mut admitted = 0;
    for at in [0, 1_100, 2_200] {
        clock.set(at);
        for _ in 0..3 {
            admitted += usize::from(p.inc("k", 1).unwrap().is_allowed());
        }
    }
    clock.set(3_300);
    admitted += usize::from(p.inc("k", 1).unwrap().is_allowed());
    assert_eq!(admitted, 10);
    clock.set(3_350);
    let d = p.inc("k", 3).unwrap();
    // Burst: 1 used, 3 more need it empty: bucket 33 (3.3-3.4 s) leaves at 4.4 s.
    // Minute: 10 used, 3 more need 3 gone: bucket 0 (0-0.1 s) leaves at 60.1 s.
    assert_eq!(d.outcome(), Outcome::Rejected);
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(
        d.limits()[0].reset_ms,
        1_000,
        "4.4 s - 3.35 s, capped at the window"
    );
    assert_eq!(d.retry_after_ms(), 60_100 - 3_350, "the later of the two");
    assert_eq!(d.limits()[1].reset_ms, 56_750);
    clock.set(60_099);
    assert!(!p.inc("k", 3).unwrap().is_allowed());
    clock.set(60_100);
    assert!(p.inc("k", 3).unwrap().is_allowed(), "the wait was exact");
}

#[test]
fn the_minute_limit_refuses_once_the_burst_limit_has_room() {
    let clock = ManualClock::new(0);
    let p = search(&clock);
    for i in 0..10 {
        clock.set(i * 400);
        assert!(p.inc("k", 1).unwrap().is_allowed(), "request {i}");
    }
    clock.set(10 * 400);
    let d = p.inc("k", 1).unwrap();
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        d.limits()[0].remaining,
        1,
        "the burst limit was not charged"
    );
    // Bucket 0 (0-0.1 s) leaves the minute at 60.1 s.
    assert_eq!(d.retry_after_ms(), 60_100 - 4_000);
}

#[test]
fn allowed_decisions_carry_what_is_left() {
    let clock = ManualClock::new(250);
    let p = search(&clock);
    let d = p.inc("k", 2).unwrap();
    assert_eq!(d.outcome(), Outcome::Allowed);
    assert_eq!(d.limits()[0].remaining, 1);
    assert_eq!(d.limits()[1].remaining, 8);
    // Bucket 2 (200-300 ms) leaves the burst window at 1.3 s and the minute at 60.3 s; a
    // status never says more than its window.
    assert_eq!(d.limits()[0].reset_ms, 1_000);
    assert_eq!(d.limits()[1].reset_ms, 60_000, "capped at the window");
    assert_eq!(d.retry_after_ms(), 0);
}

#[test]
fn one_key_per_limit() {
    let clock = ManualClock::new(0);
    let p = policy(&clock, "ip = 4/s; apikey = 3/s");
    // Two API keys behind one IP: the IP limit is shared, the key limits are not.
    assert!(p.inc_each(&["10.0.0.1", "alice"], 1).unwrap().is_allowed());
    assert!(p.inc_each(&["10.0.0.1", "alice"], 1).unwrap().is_allowed());
    assert!(p.inc_each(&["10.0.0.1", "alice"], 1).unwrap().is_allowed());
    let d = p.inc_each(&["10.0.0.1", "alice"], 1).unwrap();
    assert_eq!(
        d.refused().collect::<Vec<_>>(),
        vec![1],
        "alice's own limit"
    );
    assert!(p.inc_each(&["10.0.0.1", "bob"], 1).unwrap().is_allowed());
    let d = p.inc_each(&["10.0.0.1", "bob"], 1).unwrap();
    assert_eq!(
        d.refused().collect::<Vec<_>>(),
        vec![0],
        "the shared IP limit"
    );
    assert_eq!(
        p.check_each(&["10.0.0.2", "bob"], 1).unwrap().limits()[1].remaining,
        2
    );
    let err = p.inc_each(&["one"], 1).unwrap_err().to_string();
    assert!(err.contains("one key per limit"), "{err}");
    assert!(matches!(p.inc("k", 0), Err(sluicegate::Error::ZeroCount)));
}

#[test]
fn check_records_nothing_and_creates_no_key() {
    let clock = ManualClock::new(0);
    let p = policy(&clock, "a = 2/s; b = 5/m");
    for _ in 0..5 {
        assert!(p.check("k", 1).unwrap().is_allowed());
    }
    assert_eq!(p.key_count(), 0);
    assert!(!p.inc("k", 9).unwrap().is_allowed());
    assert_eq!(p.key_count(), 0, "a refused request creates no key");
    p.inc("k", 1).unwrap();
    assert_eq!(p.key_count(), 1, "one entry holds both limits' windows");
    assert_eq!(p.check("k", 1).unwrap().limits()[0].remaining, 1);
}

#[test]
fn a_cost_above_a_quota_is_never_admitted_and_counts_nowhere() {
    let clock = ManualClock::new(0);
    let p = policy(&clock, "a = 5/s; b = 100/m");
    let d = p.inc("k", 6).unwrap();
    assert_eq!(d.outcome(), Outcome::Rejected);
    assert_eq!(d.retry_after_ms(), u64::MAX);
    assert_eq!(p.check("k", 1).unwrap().limits()[1].remaining, 100);
}

#[test]
fn cleanup_drops_only_keys_whose_windows_emptied() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock, 1, 100);
    let p = rl.local().policy("a = 5/s; b = 5/m".parse().unwrap());
    p.inc("old", 1).unwrap();
    clock.set(1_500);
    p.inc("new", 1).unwrap();
    // Groups: 10 ms for the second, 600 ms for the minute. "old" left the second at 1.01 s
    // but is still inside the minute: its key stays.
    assert_eq!(p.cleanup(), 0);
    assert_eq!(p.key_count(), 2);
    // At 61.7 s "old" has left the minute (its bucket ended at 0.6 s), "new" (bucket
    // 1.2-1.8 s) has not.
    clock.set(61_700);
    assert_eq!(p.cleanup(), 1);
    assert_eq!(p.key_count(), 1);
    assert_eq!(p.check("new", 1).unwrap().limits()[1].remaining, 4);
    // The limiter's own cleanup (what its cleanup loop runs) sweeps the policies it made.
    clock.set(61_800);
    assert_eq!(rl.local().cleanup(), 1);
    assert_eq!(p.key_count(), 0);
    // A dropped policy is forgotten; a live one is still swept.
    let q = rl.local().policy("c = 5/s".parse().unwrap());
    drop(rl.local().policy("d = 5/s".parse().unwrap()));
    q.inc("x", 1).unwrap();
    p.inc("y", 1).unwrap();
    clock.set(130_000);
    assert_eq!(rl.local().cleanup(), 2);
    assert_eq!(q.key_count() + p.key_count(), 0);
}

/// Threads hammer a set whose limits have different keys; no limit admits more than its
/// quota, and the admitted requests are counted in every limit exactly once.
#[test]
fn threads_never_push_a_limit_over_its_quota() {
    let clock = ManualClock::new(0);
    let p = policy(&clock, "ip = 50/s; key = 20/s");
    let admitted_per_key: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
    let total = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (p, admitted_per_key, total) = (&p, &admitted_per_key, &total);
            s.spawn(move || {
                for i in 0..2_000u64 {
                    let k = ((t + i) % 4) as usize;
                    let key = format!("key{k}");
                    if p.inc_each(&["ip", &key], 1).unwrap().is_allowed() {
                        admitted_per_key[k].fetch_add(1, Ordering::Relaxed);
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let total = total.load(Ordering::Relaxed);
    assert_eq!(total, 50, "the shared limit is filled exactly");
    for (k, n) in admitted_per_key.iter().enumerate() {
        let n = n.load(Ordering::Relaxed);
        assert!(n <= 20, "key{k} admitted {n}");
        let left = p
            .check_each(&["ip", &format!("key{k}")], 1)
            .unwrap()
            .limits()[1]
            .remaining;
        assert_eq!(
            left,
            20 - n,
            "key{k}: counted once per admitted request, never for a refused one"
        );
    }
}

/// A one-limit set decides every call as the seeds' single-limit API does (same clock, same
/// sequence of calls, rates and costs).
#[test]
fn a_one_limit_set_is_the_single_limit_api() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock, 10, 100);
    let rate = RateLimit::try_from(2.0).unwrap();
    let p = rl.local().policy(LimitSet::from(
        Limit::unnamed(Quota::new(20.0, 10).unwrap())
            .group(RateGroupSizeMs::try_from(100).unwrap())
            .unwrap(),
    ));
    let mut rng = 12345u64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let (mut allowed, mut rejected) = (0, 0);
    for _ in 0..5_000 {
        clock.advance(next(400));
        let cost = 1 + next(3);
        let single = rl.local().absolute().inc("k", &rate, cost);
        let set = p.inc("k", cost).unwrap();
        match single {
            RateLimitDecision::Allowed => {
                allowed += 1;
                assert_eq!(set.outcome(), Outcome::Allowed);
            }
            RateLimitDecision::Rejected { retry_after_ms, .. } => {
                rejected += 1;
                assert_eq!(set.outcome(), Outcome::Rejected);
                assert_eq!(set.retry_after_ms(), retry_after_ms);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            set.limits()[0].remaining,
            20 - rl.local().absolute().usage("k")
        );
    }
    assert!(
        allowed > 1_000 && rejected > 1_000,
        "both branches: {allowed} {rejected}"
    );
}

/// A suppressed limit in a set: below its quota it admits, over its hard limit it sheds
/// everything and counts the shed requests as observed; a request an absolute limit refuses
/// counts in neither.
#[test]
fn a_suppressed_limit_sheds_and_counts_only_its_own_sheds() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock, 1, 100);
    let set = LimitSet::new([
        "cap = 4/s".parse::<Limit>().unwrap(),
        "shed = 2/s"
            .parse::<Limit>()
            .unwrap()
            .suppressed(HardLimitFactor::try_from(1.0).unwrap()),
    ])
    .unwrap();
    let p = rl.local().policy(set);
    assert!(p.inc("k", 1).unwrap().is_allowed());
    assert!(p.inc("k", 1).unwrap().is_allowed());
    // Hard factor 1: with 2 observed the suppressed limit is at its hard limit.
    let d = p.inc("k", 1).unwrap();
    assert_eq!(d.outcome(), Outcome::Shed);
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![1]);
    assert_eq!(d.limits()[1].suppression_factor, 1.0);
    assert_eq!(
        d.limits()[0].remaining,
        2,
        "a shed request spends no absolute quota"
    );
    // Bucket 0 (0-10 ms: a 1 s window's default group) holds everything: under the hard
    // limit again at 1.01 s.
    assert_eq!(d.retry_after_ms(), 1_010);
    clock.set(1_009);
    assert!(!p.inc("k", 1).unwrap().is_allowed());
    clock.set(1_010);
    assert!(p.inc("k", 1).unwrap().is_allowed());
}

/// Per-call quotas, as a rate resolver per limit gives them (plans by API key: `pro_` keys 50
/// per 10 s, others 5), beside a fixed per-IP limit: each key is held to its own plan, the
/// window stays the limit's, and a refused request counts in neither limit.
#[test]
fn per_call_quotas_hold_each_key_to_its_plan() {
    let clock = ManualClock::new(0);
    let p = limiter(&clock, 1, 100)
        .local()
        .policy("ip = 100/10s; plan = 5/10s".parse().unwrap());
    let plan = |key: &str| if key.starts_with("pro_") { 50.0 } else { 5.0 };
    let call = |key: &str| {
        p.inc_with(&["10.0.0.1", key], &[100.0, plan(key)], 1)
            .unwrap()
    };
    let admitted = |key: &str| (0..80).filter(|_| call(key).is_allowed()).count();
    assert_eq!(admitted("pro_alice"), 50);
    assert_eq!(admitted("bob"), 5);
    let d = call("bob");
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![1]);
    assert_eq!(d.limits()[1].remaining, 0);
    assert_eq!(
        d.limits()[0].remaining,
        45,
        "the IP limit counted the 55 admitted requests and none of the 106 refused"
    );
    // A check under the other plan: bob's 5 are the same usage under a count of 50.
    let d = p
        .check_with(&["10.0.0.1", "bob"], &[100.0, 50.0], 1)
        .unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.limits()[1].remaining, 45);
    // The window is the limit's (10 s; 100 ms groups by default): at 10.1 s the first
    // bucket has left it and bob has a fresh quota of 5.
    clock.set(10_099);
    assert!(!call("bob").is_allowed());
    clock.set(10_100);
    assert_eq!(admitted("bob"), 5);
}

/// `inc_with` given the set's own counts decides every call exactly as `inc`, and a count
/// that is not a quota is a clear error that records nothing.
#[test]
fn per_call_quotas_are_checked_and_the_sets_counts_are_inc() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock, 1, 100);
    let set: LimitSet = "burst = 3/s; minute = 150/m".parse().unwrap();
    let (a, b) = (rl.local().policy(set.clone()), rl.local().policy(set));
    let mut rng = 4242u64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut outcomes = [0usize; 3];
    for _ in 0..3_000 {
        clock.advance(next(1_000));
        let cost = 1 + next(3);
        let want = a.inc("k", cost).unwrap();
        assert_eq!(b.inc_with(&["k", "k"], &[3.0, 150.0], cost).unwrap(), want);
        outcomes[want.outcome() as usize] += 1;
    }
    assert!(outcomes[0] > 500 && outcomes[1] > 500, "{outcomes:?}");

    let err = b.inc_with(&["k", "k"], &[3.0, 0.5], 1).unwrap_err();
    assert!(
        matches!(
            err,
            sluicegate::Error::CapacityBelowOne {
                window_size_seconds: 60,
                capacity: 0.5,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        b.inc_with(&["k", "k"], &[3.0, 1e16], 1),
        Err(sluicegate::Error::CapacityAboveMax { .. })
    ));
    for bad in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
        assert!(b.inc_with(&["k", "k"], &[bad, 150.0], 1).is_err(), "{bad}");
        assert!(
            b.check_with(&["k", "k"], &[bad, 150.0], 1).is_err(),
            "{bad}"
        );
    }
    let err = b.inc_with(&["k", "k"], &[3.0], 1).unwrap_err().to_string();
    assert!(err.contains("one quota count per limit"), "{err}");
    let err = b
        .inc_with(&["k"], &[3.0, 150.0], 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one key per limit"), "{err}");
    assert!(matches!(
        b.inc_with(&["k", "k"], &[3.0, 150.0], 0),
        Err(sluicegate::Error::ZeroCount)
    ));
    // None of the errors recorded anything: a check still sees what `inc` left.
    assert_eq!(
        b.check("k", 1).unwrap(),
        a.check("k", 1).unwrap(),
        "the failed calls spent nothing"
    );
    // A cost above the call's count is refused for good by that limit, as under `inc`.
    let d = b.inc_with(&["fresh", "fresh"], &[3.0, 2.0], 3).unwrap();
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![1]);
    assert_eq!(d.retry_after_ms(), u64::MAX);
}

/// A suppressed limit under a per-call count: its hard limit is the call's count times its
/// factor.
#[test]
fn a_per_call_count_moves_a_suppressed_limits_hard_limit() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock, 1, 100);
    let set = LimitSet::from(
        "shed = 2/s"
            .parse::<Limit>()
            .unwrap()
            .suppressed(HardLimitFactor::try_from(1.0).unwrap()),
    );
    let p = rl.local().policy(set);
    for _ in 0..4 {
        assert!(p.inc_with(&["k"], &[4.0], 1).unwrap().is_allowed());
    }
    let d = p.inc_with(&["k"], &[4.0], 1).unwrap();
    assert_eq!(d.outcome(), Outcome::Shed);
    assert_eq!(d.limits()[0].suppression_factor, 1.0, "at 4 × 1.0 observed");
    assert!(
        p.inc_with(&["k"], &[8.0], 1).unwrap().is_allowed(),
        "under a count of 8, 5 observed is below capacity"
    );
}

/// Threads hammer one key under three limits with different windows, mixing `inc`,
/// `inc_each` with the key repeated, and `inc_with` with the set's counts (all the same
/// limits on the same key): the tightest limit admits exactly its quota, and every limit
/// counted exactly the admitted requests.
#[test]
fn threads_on_one_key_fill_the_tightest_limit_exactly() {
    let clock = ManualClock::new(0);
    let p = policy(&clock, "second = 40/s; minute = 25/m; hour = 100/h");
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (p, admitted) = (&p, &admitted);
            s.spawn(move || {
                for i in 0..3_000u64 {
                    let d = match (t + i) % 3 {
                        0 => p.inc("k", 1),
                        1 => p.inc_each(&["k", "k", "k"], 1),
                        _ => p.inc_with(&["k", "k", "k"], &[40.0, 25.0, 100.0], 1),
                    };
                    if d.unwrap().is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 25);
    let d = p.check("k", 1).unwrap();
    let remaining: Vec<u64> = d.limits().iter().map(|l| l.remaining).collect();
    assert_eq!(
        remaining,
        [15, 0, 75],
        "11975 refused requests counted nowhere"
    );
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![1]);
}

/// Sets past three limits keep their statuses out of line (Kong's second, minute, hour and
/// day at once, and the largest set): every status is there, in the set's order, through
/// the common admission, a refusal and a check.
#[test]
fn sets_of_more_than_three_limits_answer_every_limit() {
    let clock = ManualClock::new(0);
    let kong = policy(&clock, "s = 4/s; m = 6/m; h = 100/h; d = 1000/d");
    for i in 0..4u64 {
        let d = kong.inc("k", 1).unwrap();
        assert!(d.is_allowed(), "call {i}");
        let remaining: Vec<u64> = d.limits().iter().map(|l| l.remaining).collect();
        assert_eq!(remaining, [3 - i, 5 - i, 99 - i, 999 - i], "call {i}");
    }
    let d = kong.inc("k", 1).unwrap();
    assert_eq!(d.outcome(), Outcome::Rejected);
    assert_eq!(d.refused().collect::<Vec<_>>(), [0]);
    assert_eq!(d.limits().len(), 4);
    assert_eq!(
        d.limits()[3].remaining,
        996,
        "the refused call counted nowhere"
    );
    clock.advance(1100);
    // The second limit has room again; the minute limit refuses the third call from here.
    assert!(kong.inc("k", 2).unwrap().is_allowed());
    let d = kong.check("k", 1).unwrap();
    assert_eq!(d.refused().collect::<Vec<_>>(), [1]);
    assert_eq!(d.limits()[2].remaining, 94);

    let names: Vec<String> = (0..8).map(|i| format!("l{i} = {}/m", 10 + i)).collect();
    let eight = policy(&clock, &names.join("; "));
    let d = eight.inc("k", 3).unwrap();
    let remaining: Vec<u64> = d.limits().iter().map(|l| l.remaining).collect();
    assert_eq!(remaining, (7..15).collect::<Vec<_>>());
    let d = eight.inc("k", 8).unwrap();
    assert_eq!(d.refused().collect::<Vec<_>>(), [0], "11 of l0's 10");
    assert_eq!(d.limits()[7].remaining, 14);
}
