//! A limiter's settings, converted once: the window every provider counts over, the
//! suppressed strategy's knobs, and the hybrid provider's sync interval.
//!
//! The seeds' `RateLimiterOptions { local, redis }` gives the window twice (the local
//! options and the Redis ones); the builder turns both into one [`Settings`], and a Redis
//! value that disagrees with the local one is an [`Error::SettingsMismatch`] at build time.

use crate::Error;
use crate::config::{
    HardLimitFactor, RateGroupSizeMs, SuppressionFactorCacheMs, WindowSizeSeconds,
};
use crate::window::WindowGrid;

/// How often the hybrid provider flushes local increments to Redis, in milliseconds: at
/// least 1. Default 10. A good rule of thumb is at most the rate group size.
#[cfg(feature = "redis-tokio")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncIntervalMs(u64);

#[cfg(feature = "redis-tokio")]
impl SyncIntervalMs {
    /// The validated value.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0
    }
}

#[cfg(feature = "redis-tokio")]
impl Default for SyncIntervalMs {
    fn default() -> Self {
        SyncIntervalMs(10)
    }
}

#[cfg(feature = "redis-tokio")]
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

#[cfg(feature = "redis-tokio")]
impl From<SyncIntervalMs> for u64 {
    fn from(value: SyncIntervalMs) -> u64 {
        value.0
    }
}

#[cfg(feature = "redis-tokio")]
impl std::fmt::Display for SyncIntervalMs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The four window settings as the options spell them (local and Redis options alike).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WindowOptions {
    pub(crate) window_size_seconds: WindowSizeSeconds,
    pub(crate) rate_group_size_ms: RateGroupSizeMs,
    pub(crate) hard_limit_factor: HardLimitFactor,
    pub(crate) suppression_factor_cache_ms: SuppressionFactorCacheMs,
}

#[cfg(feature = "redis-tokio")]
impl WindowOptions {
    /// Checks that `redis` says what `self` (the local options) says, naming the first
    /// field that differs with both values.
    pub(crate) fn check_agrees(&self, redis: &WindowOptions) -> Result<(), Error> {
        let mismatch = |field: &'static str, local: String, redis: String| {
            Err(Error::SettingsMismatch {
                field,
                local,
                redis,
            })
        };
        if self.window_size_seconds != redis.window_size_seconds {
            return mismatch(
                "window_size_seconds",
                self.window_size_seconds.to_string(),
                redis.window_size_seconds.to_string(),
            );
        }
        if self.rate_group_size_ms != redis.rate_group_size_ms {
            return mismatch(
                "rate_group_size_ms",
                self.rate_group_size_ms.to_string(),
                redis.rate_group_size_ms.to_string(),
            );
        }
        if self.hard_limit_factor != redis.hard_limit_factor {
            return mismatch(
                "hard_limit_factor",
                self.hard_limit_factor.to_string(),
                redis.hard_limit_factor.to_string(),
            );
        }
        if self.suppression_factor_cache_ms != redis.suppression_factor_cache_ms {
            return mismatch(
                "suppression_factor_cache_ms",
                self.suppression_factor_cache_ms.to_string(),
                redis.suppression_factor_cache_ms.to_string(),
            );
        }
        Ok(())
    }
}

/// The suppressed strategy's knobs beyond the window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SuppressionParams {
    pub(crate) hard_limit_factor: f64,
    pub(crate) cache_ms: u64,
}

/// One limiter's window and strategy settings, checked: what every provider decides with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) grid: WindowGrid,
    pub(crate) suppression: SuppressionParams,
}

impl Settings {
    /// Checks the options together (a group no wider than the window).
    pub(crate) fn new(options: &WindowOptions) -> Result<Self, Error> {
        Ok(Settings {
            grid: WindowGrid::new(options.window_size_seconds, options.rate_group_size_ms)?,
            suppression: SuppressionParams {
                hard_limit_factor: options.hard_limit_factor.get(),
                cache_ms: options.suppression_factor_cache_ms.get(),
            },
        })
    }
}

#[cfg(all(test, feature = "redis-tokio"))]
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

    fn options(window_s: u64, group_ms: u64, hard: f64, cache_ms: u64) -> WindowOptions {
        WindowOptions {
            window_size_seconds: window_s.try_into().unwrap(),
            rate_group_size_ms: group_ms.try_into().unwrap(),
            hard_limit_factor: hard.try_into().unwrap(),
            suppression_factor_cache_ms: cache_ms.try_into().unwrap(),
        }
    }

    #[test]
    fn a_disagreement_names_the_field_and_both_values() {
        let local = options(60, 100, 1.5, 100);
        assert!(local.check_agrees(&local).is_ok());
        let cases = [
            (
                options(30, 100, 1.5, 100),
                "window_size_seconds",
                "60",
                "30",
            ),
            (options(60, 10, 1.5, 100), "rate_group_size_ms", "100", "10"),
            (options(60, 100, 2.0, 100), "hard_limit_factor", "1.5", "2"),
            (
                options(60, 100, 1.5, 0),
                "suppression_factor_cache_ms",
                "100",
                "0",
            ),
        ];
        for (redis, name, l, r) in cases {
            match local.check_agrees(&redis).unwrap_err() {
                Error::SettingsMismatch {
                    field,
                    local,
                    redis,
                } => {
                    assert_eq!((field, local.as_str(), redis.as_str()), (name, l, r));
                }
                other => panic!("{other:?}"),
            }
        }
        let message = local
            .check_agrees(&options(30, 100, 1.5, 100))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("window_size_seconds")
                && message.contains("60")
                && message.contains("30"),
            "{message}"
        );
    }
}
