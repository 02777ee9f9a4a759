//! One checked call, and the check every provider and the layer run before deciding: the
//! capacity a call may use, or why it is malformed. Shared by every provider and both
//! strategies, so they refuse the same inputs the same way.

use crate::Error;
use crate::config::{MAX_CAPACITY, capacity};

/// One checked call: what every strategy's `inc` decides on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub(crate) now_ms: u64,
    pub(crate) rate: f64,
    pub(crate) count: u64,
    /// `rate × window`, already checked to hold `count`.
    pub(crate) cap: f64,
}

/// The capacity a call may use, or why the call is malformed.
#[inline]
pub(crate) fn checked_capacity(rate: f64, window_seconds: u64, count: u64) -> Result<f64, Error> {
    let cap = capacity::of(rate, window_seconds);
    if count != 0 && capacity::fits(1, cap) && capacity::fits(count, cap) && cap <= MAX_CAPACITY {
        Ok(cap)
    } else {
        Err(malformed(rate, window_seconds, count, cap))
    }
}

/// Why a call that `checked_capacity` refused is malformed; off the hot path.
#[cold]
fn malformed(rate: f64, window_seconds: u64, count: u64, cap: f64) -> Error {
    if !capacity::fits(1, cap) {
        Error::CapacityBelowOne {
            rate_limit: rate,
            window_size_seconds: window_seconds,
            capacity: cap,
        }
    } else if cap > MAX_CAPACITY {
        Error::CapacityAboveMax {
            rate_limit: rate,
            window_size_seconds: window_seconds,
            capacity: cap,
        }
    } else if count == 0 {
        Error::ZeroCount
    } else {
        Error::CountAboveCapacity {
            count,
            capacity: cap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_calls_are_named() {
        assert!(matches!(
            checked_capacity(0.05, 10, 1),
            Err(Error::CapacityBelowOne { .. })
        ));
        assert!(matches!(
            checked_capacity(1.0, 10, 0),
            Err(Error::ZeroCount)
        ));
        assert!(matches!(
            checked_capacity(1.0, 10, 11),
            Err(Error::CountAboveCapacity { count: 11, .. })
        ));
        assert_eq!(checked_capacity(1.0, 10, 10).unwrap(), 10.0);
        // The extremes: the largest capacity is fine, one past it is refused for any count.
        let max = MAX_CAPACITY;
        assert_eq!(checked_capacity(max, 1, u64::MAX >> 12).unwrap(), max);
        for (rate, count) in [(1e300, u64::MAX), (1e300, 1), (max, 0), (f64::MAX, 1)] {
            assert!(
                matches!(
                    checked_capacity(rate, 2, count),
                    Err(Error::CapacityAboveMax { .. })
                ),
                "{rate} {count}"
            );
        }
        assert!(matches!(
            checked_capacity(max, 1, u64::MAX),
            Err(Error::CountAboveCapacity { .. })
        ));
    }
}
