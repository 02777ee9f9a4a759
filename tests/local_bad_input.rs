//! Bad input gets the documented answer, never a panic: invalid configuration values are
//! typed errors that name the field and the value; malformed calls follow the table in the
//! `local` module docs and create no key; odd keys (empty, 1 MiB) are keys like any other.

use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::{
    Error, HardLimitFactor, ManualClock, RateGroupSizeMs, RateLimit, RateLimitDecision,
    RateLimiter, RateLimiterBuilder, SeededRandom, SuppressionFactorCacheMs, WindowSizeSeconds,
};

const WINDOW_S: u64 = 10;

fn limiter() -> (RateLimiter, ManualClock) {
    let clock = ManualClock::new(0);
    let rl = RateLimiterBuilder::new(LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(WINDOW_S).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(100).unwrap(),
        hard_limit_factor: HardLimitFactor::try_from(1.5).unwrap(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::default(),
    })
    .clock(clock.clone())
    .random(SeededRandom::new(3))
    .build()
    .unwrap();
    (rl, clock)
}

fn rate(per_second: f64) -> RateLimit {
    RateLimit::try_from(per_second).unwrap()
}

/// The error is `InvalidValue` for `field`, and its message names the field and the value.
fn assert_names(err: Error, field: &str, value: &str) {
    let message = err.to_string();
    match err {
        Error::InvalidValue {
            field: f,
            value: v,
            expected,
        } => {
            assert_eq!(f, field);
            assert_eq!(v, value);
            assert!(!expected.is_empty());
        }
        other => panic!("{field} = {value}: expected InvalidValue, got {other:?}"),
    }
    assert!(
        message.contains(field) && message.contains(value),
        "message does not name {field} and {value}: {message}"
    );
}

const REJECTED_FOREVER: RateLimitDecision = RateLimitDecision::Rejected {
    window_size_seconds: WINDOW_S,
    retry_after_ms: u64::MAX,
    remaining_after_waiting: 0,
};

const DECLINED: RateLimitDecision = RateLimitDecision::Suppressed {
    suppression_factor: 1.0,
    is_allowed: false,
};

// ---------------------------------------------------------------------------------------
// Configuration values
// ---------------------------------------------------------------------------------------

#[test]
fn rate_limit_refuses_nan_infinities_zero_and_negatives() {
    for (bad, shown) in [
        (f64::NAN, "NaN"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
        (0.0, "0"),
        (-0.0, "-0"),
        (-1.0, "-1"),
        (-1e-9, "-0.000000001"),
    ] {
        assert_names(RateLimit::try_from(bad).unwrap_err(), "RateLimit", shown);
    }
    for bad in [f64::NAN, f64::INFINITY, 0.0, -60.0] {
        assert!(RateLimit::per_minute(bad).is_err(), "{bad}/min");
        assert!(RateLimit::per_second(bad).is_err(), "{bad}/s");
    }
    // The smallest positive rate is a valid rate; whether it fits a window is the call's
    // business (see `capacity_below_one_...`).
    assert!(RateLimit::try_from(f64::MIN_POSITIVE).is_ok());
    assert!(RateLimit::try_from(f64::MAX).is_ok());
}

#[test]
fn hard_limit_factor_refuses_nan_infinities_zero_negatives_and_below_one() {
    for (bad, shown) in [
        (f64::NAN, "NaN"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
        (0.0, "0"),
        (-1.5, "-1.5"),
        (0.999, "0.999"),
    ] {
        assert_names(
            HardLimitFactor::try_from(bad).unwrap_err(),
            "HardLimitFactor",
            shown,
        );
    }
    assert_eq!(HardLimitFactor::try_from(1.0).unwrap().get(), 1.0);
}

#[test]
fn integer_newtypes_refuse_zero_and_out_of_range() {
    // Negative values cannot be expressed: these newtypes convert from u64.
    assert_names(
        WindowSizeSeconds::try_from(0).unwrap_err(),
        "WindowSizeSeconds",
        "0",
    );
    assert_names(
        WindowSizeSeconds::try_from(u64::MAX).unwrap_err(),
        "WindowSizeSeconds",
        &u64::MAX.to_string(),
    );
    assert_names(
        RateGroupSizeMs::try_from(0).unwrap_err(),
        "RateGroupSizeMs",
        "0",
    );
    assert_names(
        SuppressionFactorCacheMs::try_from(3_600_001).unwrap_err(),
        "SuppressionFactorCacheMs",
        "3600001",
    );
    // Zero means "no cache", a valid choice.
    assert_eq!(SuppressionFactorCacheMs::try_from(0).unwrap().get(), 0);
}

#[test]
fn every_conversion_error_is_the_crate_error_through_question_mark() {
    fn build(
        window_s: u64,
        group_ms: u64,
        rate: f64,
        hard: f64,
    ) -> Result<(LocalRateLimiterOptions, RateLimit), Error> {
        let options = LocalRateLimiterOptions {
            window_size_seconds: window_s.try_into()?,
            rate_group_size_ms: group_ms.try_into()?,
            hard_limit_factor: hard.try_into()?,
            suppression_factor_cache_ms: 0.try_into()?,
        };
        let rate = rate.try_into()?;
        Ok((options, rate))
    }
    assert!(build(10, 100, 1.0, 1.0).is_ok());
    assert_names(
        build(0, 100, 1.0, 1.0).unwrap_err(),
        "WindowSizeSeconds",
        "0",
    );
    assert_names(build(10, 0, 1.0, 1.0).unwrap_err(), "RateGroupSizeMs", "0");
    assert_names(
        build(10, 100, 1.0, f64::NAN).unwrap_err(),
        "HardLimitFactor",
        "NaN",
    );
    assert_names(build(10, 100, -2.0, 1.0).unwrap_err(), "RateLimit", "-2");
}

#[test]
fn a_group_wider_than_the_window_is_refused_at_build() {
    let options = LocalRateLimiterOptions {
        window_size_seconds: WindowSizeSeconds::try_from(1).unwrap(),
        rate_group_size_ms: RateGroupSizeMs::try_from(1001).unwrap(),
        hard_limit_factor: HardLimitFactor::default(),
        suppression_factor_cache_ms: SuppressionFactorCacheMs::default(),
    };
    assert_names(
        RateLimiterBuilder::new(options).build().unwrap_err(),
        "RateGroupSizeMs",
        "1001",
    );
    // A group exactly the window is fine.
    let options = LocalRateLimiterOptions {
        rate_group_size_ms: RateGroupSizeMs::try_from(1000).unwrap(),
        ..options
    };
    assert!(RateLimiterBuilder::new(options).build().is_ok());
}

// ---------------------------------------------------------------------------------------
// Malformed calls
// ---------------------------------------------------------------------------------------

#[test]
fn capacity_below_one_is_an_error_and_creates_no_key() {
    let (rl, _clock) = limiter();
    let (absolute, suppressed) = (rl.local().absolute(), rl.local().suppressed());
    let slow = rate(0.05); // 0.5 requests per 10 s window
    for result in [
        absolute.try_inc("k", &slow, 1),
        suppressed.try_inc("k", &slow, 1),
    ] {
        match result {
            Err(Error::CapacityBelowOne {
                rate_limit,
                window_size_seconds,
                capacity,
            }) => {
                assert_eq!(rate_limit, 0.05);
                assert_eq!(window_size_seconds, WINDOW_S);
                assert!((capacity - 0.5).abs() < 1e-12, "{capacity}");
            }
            other => panic!("expected CapacityBelowOne, got {other:?}"),
        }
    }
    let message = absolute.try_inc("k", &slow, 1).unwrap_err().to_string();
    assert!(
        message.contains("0.05") && message.contains("10 s"),
        "{message}"
    );
    // The infallible calls give the documented answers, whatever the count.
    for count in [0, 1, 5] {
        assert_eq!(absolute.inc("k", &slow, count), REJECTED_FOREVER);
        assert_eq!(suppressed.inc("k", &slow, count), DECLINED);
    }
    assert_eq!(absolute.key_count(), 0);
    assert_eq!(suppressed.key_count(), 0);
    // The smallest positive rate is the same case, with no arithmetic trouble.
    let tiny = rate(f64::MIN_POSITIVE);
    assert!(matches!(
        absolute.try_inc("k", &tiny, 1),
        Err(Error::CapacityBelowOne { .. })
    ));
    assert_eq!(suppressed.inc("k", &tiny, 1), DECLINED);
    // Exactly one request a window is enough.
    assert_eq!(absolute.inc("k", &rate(0.1), 1), RateLimitDecision::Allowed);
    assert_eq!(absolute.key_count(), 1);
}

#[test]
fn zero_count_is_an_error_or_a_free_probe_and_records_nothing() {
    let (rl, _clock) = limiter();
    let (absolute, suppressed) = (rl.local().absolute(), rl.local().suppressed());
    let r = rate(1.0); // capacity 10
    assert!(matches!(
        absolute.try_inc("k", &r, 0),
        Err(Error::ZeroCount)
    ));
    assert!(matches!(
        suppressed.try_inc("k", &r, 0),
        Err(Error::ZeroCount)
    ));
    assert_eq!(absolute.inc("k", &r, 0), RateLimitDecision::Allowed);
    assert_eq!(suppressed.inc("k", &r, 0), RateLimitDecision::Allowed);
    assert_eq!((absolute.key_count(), suppressed.key_count()), (0, 0));

    // On a full key too: a zero count is answered `Allowed` and changes nothing.
    assert_eq!(absolute.inc("k", &r, 10), RateLimitDecision::Allowed);
    assert_eq!(absolute.inc("k", &r, 0), RateLimitDecision::Allowed);
    assert_eq!(absolute.usage("k"), 10);
    assert!(!absolute.inc("k", &r, 1).is_allowed());
    for _ in 0..20 {
        suppressed.inc("k", &r, 1);
    }
    let before = suppressed.usage("k");
    assert_eq!(suppressed.inc("k", &r, 0), RateLimitDecision::Allowed);
    assert_eq!(suppressed.usage("k"), before);
}

#[test]
fn count_above_capacity_is_never_admitted_and_records_nothing() {
    let (rl, _clock) = limiter();
    let (absolute, suppressed) = (rl.local().absolute(), rl.local().suppressed());
    let r = rate(0.7); // capacity 7
    for count in [8, 1_000, u64::MAX] {
        for result in [
            absolute.try_inc("k", &r, count),
            suppressed.try_inc("k", &r, count),
        ] {
            match result {
                Err(Error::CountAboveCapacity { count: c, capacity }) => {
                    assert_eq!(c, count);
                    assert!((capacity - 7.0).abs() < 1e-9);
                }
                other => panic!("count {count}: expected CountAboveCapacity, got {other:?}"),
            }
        }
        assert_eq!(absolute.inc("k", &r, count), REJECTED_FOREVER);
        assert_eq!(suppressed.inc("k", &r, count), DECLINED);
    }
    assert_eq!((absolute.key_count(), suppressed.key_count()), (0, 0));
    // Exactly the capacity fits, even when `rate × window` rounds above it (0.3 × 10).
    assert_eq!(absolute.inc("k", &r, 7), RateLimitDecision::Allowed);
    assert_eq!(absolute.inc("j", &rate(0.3), 3), RateLimitDecision::Allowed);
    assert_eq!(suppressed.inc("k", &r, 7), RateLimitDecision::Allowed);
    // ...and a key already holding usage is left as it was by an oversized call.
    assert_eq!(absolute.inc("k", &r, 8), REJECTED_FOREVER);
    assert_eq!(absolute.usage("k"), 7);
    assert_eq!(suppressed.inc("k", &r, 8), DECLINED);
    assert_eq!(suppressed.usage("k"), (7, 7));
}

#[test]
fn huge_rates_and_counts_are_refused_and_the_largest_capacity_is_exact() {
    let (rl, clock) = limiter();
    let (absolute, suppressed) = (rl.local().absolute(), rl.local().suppressed());
    // Capacity 1e20 is above MAX_CAPACITY (2^52): refused, recording nothing.
    for (r, count) in [(1e19, u64::MAX / 2 + 1), (1e300, u64::MAX), (f64::MAX, 1)] {
        let huge = rate(r);
        assert!(matches!(
            absolute.try_inc("k", &huge, count),
            Err(Error::CapacityAboveMax { .. })
        ));
        assert_eq!(absolute.inc("k", &huge, count), REJECTED_FOREVER);
        assert_eq!(suppressed.inc("k", &huge, count), DECLINED);
        let message = suppressed
            .try_inc("k", &huge, count)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("2^52") && message.contains("lower the rate"),
            "{message}"
        );
    }
    assert_eq!(absolute.usage("k"), 0);
    assert_eq!(suppressed.usage("k"), (0, 0));
    // The largest capacity: 2^52 units at once, exactly, then nothing more.
    let max = rate(sluicegate::MAX_CAPACITY / WINDOW_S as f64);
    let units = 1u64 << 52;
    assert_eq!(absolute.inc("m", &max, units), RateLimitDecision::Allowed);
    // 2^30: past the capacity's relative rounding slack (2^52 × 1e-9, about 4.5M units).
    assert!(!absolute.inc("m", &max, 1 << 30).is_allowed());
    assert_eq!(absolute.usage("m"), units);
    clock.advance(WINDOW_S * 1000 + 100);
    assert_eq!(absolute.usage("m"), 0);
}

// ---------------------------------------------------------------------------------------
// Odd keys and reads of unknown keys
// ---------------------------------------------------------------------------------------

#[test]
fn empty_and_one_mebibyte_keys_are_limited_like_any_key() {
    let (rl, clock) = limiter();
    let (absolute, suppressed) = (rl.local().absolute(), rl.local().suppressed());
    let r = rate(0.5); // capacity 5
    let big = "k".repeat(1 << 20);
    let mut big_twin = big.clone();
    big_twin.pop();
    big_twin.push('K'); // same length, differs in the last byte
    for key in ["", big.as_str(), big_twin.as_str()] {
        for _ in 0..5 {
            assert_eq!(absolute.inc(key, &r, 1), RateLimitDecision::Allowed);
            assert_eq!(suppressed.inc(key, &r, 1), RateLimitDecision::Allowed);
        }
        assert!(matches!(
            absolute.inc(key, &r, 1),
            RateLimitDecision::Rejected {
                retry_after_ms: 10_100,
                remaining_after_waiting: 0,
                ..
            }
        ));
        assert!(!absolute.is_allowed(key).is_allowed());
        assert!(matches!(
            suppressed.inc(key, &r, 1),
            RateLimitDecision::Suppressed { .. }
        ));
        assert!(suppressed.get_suppression_factor(key) > 0.0);
        assert_eq!(absolute.usage(key), 5);
    }
    assert_eq!(absolute.key_count(), 3);
    assert_eq!(suppressed.key_count(), 3);
    assert_eq!(absolute.usage(&big[1..]), 0, "a prefix is another key");
    clock.advance(WINDOW_S * 1000 + 100);
    assert!(absolute.is_allowed("").is_allowed());
    assert!(absolute.is_allowed(&big).is_allowed());
    assert_eq!(rl.cleanup(), 6);
    assert_eq!(absolute.inc(&big, &r, 5), RateLimitDecision::Allowed);
}

#[test]
fn reads_of_unknown_keys_answer_and_create_nothing() {
    let (rl, _clock) = limiter();
    let (absolute, suppressed) = (rl.local().absolute(), rl.local().suppressed());
    let big = "x".repeat(1 << 20);
    for key in ["never-seen", "", big.as_str()] {
        assert_eq!(absolute.is_allowed(key), RateLimitDecision::Allowed);
        assert_eq!(absolute.usage(key), 0);
        assert_eq!(suppressed.get_suppression_factor(key), 0.0);
        assert_eq!(suppressed.usage(key), (0, 0));
    }
    assert_eq!(absolute.key_count(), 0);
    assert_eq!(suppressed.key_count(), 0);
    assert_eq!(rl.cleanup(), 0);
    // A key in one strategy is not a key in the other.
    absolute.inc("a", &rate(1.0), 1);
    assert_eq!(suppressed.get_suppression_factor("a"), 0.0);
    assert_eq!((absolute.key_count(), suppressed.key_count()), (1, 0));
}
