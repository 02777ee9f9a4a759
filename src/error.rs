//! The crate's one error type.

/// Everything that can go wrong in sluicegate, with a message that says what to change.
///
/// Every validated newtype's `TryFrom` returns this type, so `?` works across the crate's
/// constructors. It is `#[non_exhaustive]`: new providers may add variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of its range.
    #[error("invalid {field}: {value} ({expected})")]
    InvalidValue {
        /// The field or newtype that was given the value, e.g. `RateLimit`.
        field: &'static str,
        /// The rejected value, as given.
        value: String,
        /// What the value must be.
        expected: &'static str,
    },

    /// The rate times the window is below one request: no request could ever be admitted.
    #[error(
        "capacity below one request: rate_limit {rate_limit}/s over a {window_size_seconds} s window \
         allows {capacity} requests; raise the rate or widen the window"
    )]
    CapacityBelowOne {
        /// The rate given to the call.
        rate_limit: f64,
        /// The limiter's window.
        window_size_seconds: u64,
        /// `rate_limit × window_size_seconds`.
        capacity: f64,
    },

    /// The rate times the window is above [`MAX_CAPACITY`](crate::MAX_CAPACITY) (2^52)
    /// units: no provider could count such a window exactly.
    #[error(
        "capacity above the maximum: rate_limit {rate_limit}/s over a {window_size_seconds} s \
         window allows {capacity} units, more than 2^52 (4503599627370496); lower the rate, or \
         count in larger units"
    )]
    CapacityAboveMax {
        /// The rate given to the call.
        rate_limit: f64,
        /// The limiter's window.
        window_size_seconds: u64,
        /// `rate_limit × window_size_seconds`.
        capacity: f64,
    },

    /// A call asked for zero units; count at least one.
    #[error("count must be at least 1, got 0")]
    ZeroCount,

    /// A call asked for more units than the window can ever hold.
    #[error(
        "count {count} exceeds the window's capacity {capacity}: such a call can never be \
         admitted; split it or raise the rate"
    )]
    CountAboveCapacity {
        /// The count given to the call.
        count: u64,
        /// `rate_limit × window_size_seconds`.
        capacity: f64,
    },

    /// The limiter holds as many keys as its [`KeyBudget`](crate::KeyBudget) allows and a
    /// call named a new one: nothing was recorded and no key was created.
    #[error(
        "key budget full: the limiter holds its maximum of {max_keys} keys and refuses new \
         ones (existing keys are decided as usual); raise RateLimiterBuilder::key_budget or \
         choose another WhenFull policy"
    )]
    KeyBudgetFull {
        /// The budget's cap.
        max_keys: usize,
    },

    /// A Redis key is empty, too long, or contains the separator.
    #[error("invalid Redis key {key:?}: {reason}")]
    InvalidKey {
        /// The key, cut to its first 64 characters.
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The Redis options give a window setting other than the local options': a limiter has
    /// one window, whichever provider decides.
    #[cfg(feature = "redis-tokio")]
    #[error(
        "the local and Redis options disagree on {field}: local {local}, Redis {redis}; give \
         RedisSettings (or RedisRateLimiterOptions) the local options' value, a limiter has one window"
    )]
    SettingsMismatch {
        /// The setting that differs, e.g. `window_size_seconds`.
        field: &'static str,
        /// Its value in the local options.
        local: String,
        /// Its value in the Redis options.
        redis: String,
    },

    /// Redis answered with an error, or could not be reached in time.
    #[cfg(feature = "redis-tokio")]
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),

    /// A Redis call did not complete within the limiter's deadline.
    #[cfg(feature = "redis-tokio")]
    #[error(
        "redis did not answer within {timeout_ms} ms: check that the server is up (the \
         connection reconnects by itself) or raise `RateLimiterBuilder::redis_timeout`"
    )]
    RedisTimeout {
        /// The deadline that passed.
        timeout_ms: u64,
    },

    /// Redis refused the limiter's connection for want of (the right) credentials:
    /// `NOAUTH` (the server needs a password it was not given) or `WRONGPASS`.
    #[cfg(feature = "redis-tokio")]
    #[error(
        "redis authentication failed ({detail}): the server needs a password (and maybe an \
         ACL user) the limiter's connection does not give; put them in the URL, \
         redis://user:password@host:port/, or in the client's connection info"
    )]
    RedisAuthentication {
        /// What the server said.
        detail: String,
    },

    /// `rl.redis()` was used on a limiter built without a Redis connection.
    #[cfg(feature = "redis-tokio")]
    #[error(
        "the Redis provider has no connection: build the limiter with \
         `RateLimiterOptions {{ redis: RedisRateLimiterOptions {{ .. }}, .. }}`, \
         `RateLimiterBuilder::redis(..)` or `RateLimiterBuilder::redis_connection(..)`"
    )]
    RedisNotConfigured,

    /// Redis answered with something the limiter's script never returns.
    #[cfg(feature = "redis-tokio")]
    #[error("unexpected reply from redis: {0}")]
    UnexpectedReply(String),
}

impl Error {
    /// Whether a Redis call failed at once because Redis is known to be down (the circuit
    /// breaker is open; see [`RedisUnavailable`](crate::redis::RedisUnavailable)), rather
    /// than after trying it. Such an error is an [`Error::Redis`] whose source is a
    /// `NotConnected` I/O error holding a `RedisUnavailable`.
    #[cfg(feature = "redis-tokio")]
    pub fn is_redis_unavailable(&self) -> bool {
        self.redis_unavailable().is_some()
    }

    /// The [`RedisUnavailable`](crate::redis::RedisUnavailable) inside a call failed at once.
    #[cfg(feature = "redis-tokio")]
    pub fn redis_unavailable(&self) -> Option<&crate::redis::RedisUnavailable> {
        let Error::Redis(err) = self else {
            return None;
        };
        let source = std::error::Error::source(err)?;
        // redis-rs keeps the I/O error as an `Arc<dyn Error>` and hands that out as the source.
        let io = match source.downcast_ref::<std::io::Error>() {
            Some(io) => io,
            None => source
                .downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()?
                .downcast_ref::<std::io::Error>()?,
        };
        io.get_ref()?.downcast_ref()
    }

    pub(crate) fn invalid(
        field: &'static str,
        value: impl ToString,
        expected: &'static str,
    ) -> Self {
        Error::InvalidValue {
            field,
            value: value.to_string(),
            expected,
        }
    }
}
