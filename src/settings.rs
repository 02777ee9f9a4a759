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

/// A cap on the keys a limiter holds in memory, and what a new key gets once it is reached.
///
/// Set with [`RateLimiterBuilder::key_budget`](crate::RateLimiterBuilder::key_budget) (or
/// [`max_keys`](crate::RateLimiterBuilder::max_keys) for the default policy,
/// [`WhenFull::Refuse`]). The cap counts the keys of the local provider and of the hybrid
/// provider's in-memory state together; each strategy keeps its own keys, so a key used
/// with both strategies counts twice. [`RateLimiter::key_count`](crate::RateLimiter::key_count)
/// reads the count. Limit sets (`rl.local().policy(..)`) keep their own keys outside the
/// budget.
///
/// Whatever the policy, **spraying new keys never resets a limited key**: a full budget
/// refuses or redirects new keys, or evicts only keys that are idle or use at most half of
/// their capacity, never one that refuses calls or is near its limit.
///
/// # Memory
/// What a budget of `N` keys costs, to size it (64-bit targets):
///
/// | per key | absolute | suppressed |
/// |---|---:|---:|
/// | table slot (entry, aligned to a 64-byte line for absolute, and control byte) | 65 B | 89 B |
/// | at the tables' fullest (7/8) and emptiest (7/16) load | 74–149 B | 102–203 B |
/// | a window of `n` ≥ 2 buckets, all but the newest of one unit and within 112 groups of it (a key called at most once a group, on a window of up to 112 groups) | + 0 B | + 0 B |
/// | any other window of `n` ≥ 2 buckets: a ring of at least `n` slots (at most 8, or fewer than `4n`), per slot | + 16 B | + 24 B |
/// | a key longer than 24 bytes | + its length | + its length |
///
/// So `N` keys with one bucket each (a spray: one call per key) take at most about
/// `N × 149 B` (absolute) or `N × 203 B` (suppressed); 100k absolute keys measured 12.6–13.5
/// MB resident (84–91 % of the 14.9 MB that gives) after a spray of 5M new keys under
/// [`WhenFull::Evict`] (`cargo bench -p sluicegate-benches --bench spray`). A key that is called in every bucket of its window holds up to
/// `window / group + 1` buckets: budget its ring too (a ring that its buckets fill at most a
/// quarter of shrinks as its buckets expire). The
/// hybrid provider's keys cost more (a lease, the unsent and in-flight buckets). The
/// allocator's own overhead on the boxes comes on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBudget {
    max_keys: usize,
    when_full: WhenFull,
}

/// What a new key gets while the [`KeyBudget`] is full (existing keys are decided as ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// The new key's call is refused: `try_inc` returns [`Error::KeyBudgetFull`] (and the
    /// layer answers it by its `ProviderErrorPolicy`); the infallible local `inc` answers
    /// absolute `Rejected` with a retry after one window (by then cleanup may have freed
    /// keys) or suppressed `Suppressed { suppression_factor: 1.0, is_allowed: false }`.
    /// Nothing is recorded and no key is created.
    #[default]
    Refuse,
    /// Every new key shares one overflow key per strategy, decided with the call's own
    /// rate: a spray of new keys is limited as one client, and keys already held are
    /// untouched. The overflow key is one key beyond the budget. The hybrid provider
    /// refuses instead (as [`Refuse`](Self::Refuse)): its keys are Redis keys, and an
    /// overflow key would mix clients across instances.
    Overflow,
    /// A held key goes to make room: one whose window is empty if one is among the first
    /// 4 keys looked at, else the first whose usage is at most half of its capacity (its
    /// usage is forgotten: it starts again at zero) among the first 512, looked for from the
    /// new key's part of the table on (parts locked by other calls are passed over). A key
    /// that refuses calls or holds more than half of its capacity is never evicted; when no
    /// key may go, the new key is refused as with [`Refuse`](Self::Refuse). The hybrid
    /// provider evicts only keys cleanup would drop (nothing unsent, no live lease).
    Evict,
}

impl KeyBudget {
    /// At most `max_keys` keys (at least 1, checked by
    /// [`build`](crate::RateLimiterBuilder::build)); new keys past it are refused.
    pub const fn new(max_keys: usize) -> Self {
        KeyBudget {
            max_keys,
            when_full: WhenFull::Refuse,
        }
    }

    /// The policy for new keys once the budget is full.
    #[must_use]
    pub const fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// The most keys held.
    pub const fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// The policy once full.
    pub const fn policy(&self) -> WhenFull {
        self.when_full
    }

    /// Checks the cap.
    pub(crate) fn checked(self) -> Result<Self, Error> {
        if self.max_keys == 0 {
            return Err(Error::invalid(
                "KeyBudget::max_keys",
                0,
                "must be at least 1 key",
            ));
        }
        Ok(self)
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
