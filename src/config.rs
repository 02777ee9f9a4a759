//! The validated configuration newtypes. Each one checks its value once, at construction,
//! and says which field was wrong and why.

use crate::Error;

/// Declares a validated newtype: the struct, its accessor, `TryFrom` with the given check,
/// and the conversion back to the primitive.
macro_rules! validated {
    ($(#[$meta:meta])* $name:ident($ty:ty), $expected:literal, |$v:ident| $valid:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
        pub struct $name($ty);

        impl $name {
            /// The validated value.
            #[inline]
            pub const fn get(self) -> $ty {
                self.0
            }
        }

        impl TryFrom<$ty> for $name {
            type Error = Error;

            fn try_from($v: $ty) -> Result<Self, Error> {
                if $valid {
                    Ok($name($v))
                } else {
                    Err(Error::invalid(stringify!($name), $v, $expected))
                }
            }
        }

        impl From<$name> for $ty {
            fn from(value: $name) -> $ty {
                value.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

/// The largest window: keeps every millisecond sum far from overflow.
const MAX_WINDOW_SECONDS: u64 = u32::MAX as u64;

validated!(
    /// Allowed requests per second for a key: finite and above zero. Fractions are fine
    /// (0.5/s over a 10 s window is 5 requests).
    RateLimit(f64),
    "must be a finite number of requests per second above 0",
    |v| v.is_finite() && v > 0.0
);

validated!(
    /// How long usage counts, in whole seconds: at least 1.
    WindowSizeSeconds(u64),
    "must be at least 1 second and at most 2^32 - 1",
    |v| (1..=MAX_WINDOW_SECONDS).contains(&v)
);

validated!(
    /// Width of a usage bucket in milliseconds: increments within one group share a bucket.
    /// At least 1, and at most the window (checked when the limiter is built).
    RateGroupSizeMs(u64),
    "must be at least 1 ms",
    |v| v >= 1
);

validated!(
    /// Headroom of the suppressed strategy: full suppression starts at `capacity × factor`.
    /// Finite and at least 1; 1 (the default) is a hard cutoff.
    HardLimitFactor(f64),
    "must be a finite number at least 1.0",
    |v| v.is_finite() && v >= 1.0
);

validated!(
    /// How long a key's suppression factor may be reused before it is computed again, in
    /// milliseconds; 0 computes it on every suppressed call. Default 100.
    SuppressionFactorCacheMs(u64),
    "must be at most one hour (3600000 ms)",
    |v| v <= 3_600_000
);

impl RateLimit {
    /// A rate of `per_second` requests per second.
    pub fn per_second(per_second: f64) -> Result<Self, Error> {
        Self::try_from(per_second)
    }

    /// A rate of `per_minute` requests per minute.
    pub fn per_minute(per_minute: f64) -> Result<Self, Error> {
        Self::try_from(per_minute / 60.0).map_err(|_| {
            Error::invalid(
                "RateLimit",
                per_minute,
                "must be a finite number of requests per minute above 0",
            )
        })
    }
}

impl Default for HardLimitFactor {
    fn default() -> Self {
        HardLimitFactor(1.0)
    }
}

impl Default for SuppressionFactorCacheMs {
    fn default() -> Self {
        SuppressionFactorCacheMs(100)
    }
}

/// The largest capacity (`rate × window`, in units) a call may have: 2^52. Every sum a
/// provider keeps then stays exact in an `f64` (and so in Redis's Lua numbers) and far
/// from `i64`/`u64` overflow. A call above it is refused with [`Error::CapacityAboveMax`]
/// by every provider alike.
pub const MAX_CAPACITY: f64 = (1u64 << 52) as f64;

/// Capacity arithmetic shared by every provider (the Lua scripts mirror it).
pub(crate) mod capacity {
    /// The most observed units (admitted and shed) the suppressed strategy records for a key
    /// in one window: 2^53, exact in an `f64`. A call that would take a key past it is
    /// declined as over the hard limit and recorded nowhere, on every provider.
    pub(crate) const MAX_OBSERVED: u64 = 1 << 53;

    /// Whether `count` more observed units on top of `observed` may be recorded.
    #[inline]
    pub(crate) fn fits_observed(observed: u64, count: u64) -> bool {
        observed
            .checked_add(count)
            .is_some_and(|total| total <= MAX_OBSERVED)
    }

    /// Relative slack that absorbs f64 rounding in `rate × window` (0.3 × 10 is 3.0000000000000004).
    const SLACK: f64 = 1e-9;

    /// `rate × window`, as a real number: no truncation.
    #[inline]
    pub(crate) fn of(rate: f64, window_seconds: u64) -> f64 {
        rate * window_seconds as f64
    }

    /// Whether `used` units fit in `capacity`.
    #[inline]
    pub(crate) fn fits(used: u64, capacity: f64) -> bool {
        used as f64 <= capacity * (1.0 + SLACK)
    }

    /// The most units that [`fits`] in `capacity`, when it is below 2^53 (where every
    /// count converts to f64 exactly, so `fits(used, capacity)` iff `used <= most`);
    /// `u64::MAX` otherwise (ask `fits`). Lets a hot path that knows its capacity ahead
    /// compare integers instead of converting each count.
    pub(crate) fn most_fitting(capacity: f64) -> u64 {
        let limit = capacity * (1.0 + SLACK);
        if (0.0..9_007_199_254_740_992.0).contains(&limit) {
            limit as u64
        } else {
            u64::MAX
        }
    }

    /// Whether `more` units on top of `used` fit in `capacity`; a sum past `u64::MAX` does
    /// not (capacities above it exist: `rate` is any finite f64).
    #[inline]
    pub(crate) fn fits_more(used: u64, more: u64, capacity: f64) -> bool {
        used.checked_add(more)
            .is_some_and(|total| fits(total, capacity))
    }

    /// Whether `used` units reach `limit` (the suppressed strategy's hard-limit test).
    #[inline]
    pub(crate) fn reaches(used: u64, limit: f64) -> bool {
        used as f64 >= limit * (1.0 - SLACK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_rejects_non_finite_zero_and_negative() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, -1.0] {
            let err = RateLimit::try_from(bad).unwrap_err();
            match err {
                Error::InvalidValue { field, .. } => assert_eq!(field, "RateLimit"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(RateLimit::try_from(0.7).unwrap().get(), 0.7);
    }

    #[test]
    fn error_names_field_and_value() {
        let msg = HardLimitFactor::try_from(0.5).unwrap_err().to_string();
        assert!(
            msg.contains("HardLimitFactor") && msg.contains("0.5"),
            "{msg}"
        );
        let msg = WindowSizeSeconds::try_from(0).unwrap_err().to_string();
        assert!(
            msg.contains("WindowSizeSeconds") && msg.contains(": 0"),
            "{msg}"
        );
    }

    #[test]
    fn integer_newtypes_check_ranges() {
        assert!(WindowSizeSeconds::try_from(1).is_ok());
        assert!(WindowSizeSeconds::try_from(u64::MAX).is_err());
        assert!(RateGroupSizeMs::try_from(0).is_err());
        assert!(RateGroupSizeMs::try_from(1).is_ok());
        assert!(SuppressionFactorCacheMs::try_from(0).is_ok());
        assert!(SuppressionFactorCacheMs::try_from(3_600_001).is_err());
        assert_eq!(SuppressionFactorCacheMs::default().get(), 100);
        assert_eq!(HardLimitFactor::default().get(), 1.0);
    }

    #[test]
    fn hard_limit_factor_rejects_below_one_and_non_finite() {
        for bad in [f64::NAN, f64::INFINITY, 0.99, 0.0, -2.0] {
            assert!(HardLimitFactor::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capacity_is_real_and_rounding_tolerant() {
        assert_eq!(capacity::of(0.7, 15), 10.5);
        assert!(capacity::fits(3, capacity::of(0.3, 10)));
        assert!(capacity::fits(7, capacity::of(0.7, 10)));
        assert!(!capacity::fits(8, capacity::of(0.7, 10)));
        assert!(!capacity::fits(11, capacity::of(0.7, 15)));
        assert!(capacity::fits_more(6, 1, 7.0));
        assert!(
            !capacity::fits_more(u64::MAX, 1, 1e20),
            "a wrapped sum never fits"
        );
        assert!(RateLimit::per_minute(f64::NAN).is_err());
        assert!((RateLimit::per_minute(30.0).unwrap().get() - 0.5).abs() < 1e-12);
    }
}
