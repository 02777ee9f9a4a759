//! The hybrid provider's settings: decisions from local state, flushed to Redis in batches.
//!
//! For now this module holds only [`SyncIntervalMs`], the knob
//! [`RedisRateLimiterOptions`](crate::redis::RedisRateLimiterOptions) carries for it.

use crate::Error;

/// How often the hybrid provider flushes local increments to Redis, in milliseconds: at
/// least 1. Default 10. A good rule of thumb is at most the rate group size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncIntervalMs(u64);

impl SyncIntervalMs {
    /// The validated value.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl Default for SyncIntervalMs {
    fn default() -> Self {
        SyncIntervalMs(10)
    }
}

impl TryFrom<u64> for SyncIntervalMs {
    type Error = Error;

    fn try_from(value: u64) -> Result<Self, Error> {
        if value >= 1 {
            Ok(SyncIntervalMs(value))
        } else {
            Err(Error::invalid(
                "SyncIntervalMs",
                value,
                "must be at least 1 ms",
            ))
        }
    }
}

impl From<SyncIntervalMs> for u64 {
    fn from(value: SyncIntervalMs) -> u64 {
        value.0
    }
}

impl std::fmt::Display for SyncIntervalMs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_interval_is_at_least_one_and_defaults_to_ten() {
        let err = SyncIntervalMs::try_from(0).unwrap_err().to_string();
        assert!(
            err.contains("SyncIntervalMs") && err.contains(": 0"),
            "{err}"
        );
        assert_eq!(SyncIntervalMs::try_from(1).unwrap().get(), 1);
        assert_eq!(SyncIntervalMs::default().get(), 10);
    }
}
