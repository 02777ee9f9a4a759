//! [`RateLimiterBuilder`]: a limiter from the seeds' options, with an injected clock or
//! random source, the Redis connection and its deadline; every option checked once in
//! [`build`](RateLimiterBuilder::build).

use std::sync::Arc;
#[cfg(feature = "redis-tokio")]
use std::time::Duration;

use crate::local::store::KeyCount;
use crate::local::{LocalRateLimiter, LocalRateLimiterOptions};
use crate::{
    Clock, Error, KeyBudget, MonotonicClock, RandomSource, RateLimiter, ThreadRandom, clock,
    settings,
};

/// Builds a [`RateLimiter`]: from local options alone, with an injected [`Clock`] or
/// [`RandomSource`].
pub struct RateLimiterBuilder {
    local: LocalRateLimiterOptions,
    key_budget: Option<KeyBudget>,
    clock: clock::Time,
    random: Arc<dyn RandomSource>,
    #[cfg(feature = "redis-tokio")]
    redis: RedisBuilderParts,
}

/// The Redis part of a [`RateLimiterBuilder`].
#[cfg(feature = "redis-tokio")]
struct RedisBuilderParts {
    connection: Option<(RedisSource, crate::redis::RedisSettings)>,
    timeout: Duration,
    test_clock: Option<Arc<dyn Clock>>,
    hybrid_max_pending_buckets: usize,
}

/// Where the Redis connection of a [`RateLimiterBuilder`] comes from.
#[cfg(feature = "redis-tokio")]
enum RedisSource {
    /// Built by the caller.
    Connection(crate::redis::RedisConnection),
    /// A client: the builder makes the `ConnectionManager`, configured for the deadline.
    /// Boxed: with `redis-tls` a client carries its TLS settings (240+ bytes).
    Client(Box<::redis::Client>),
}

impl RateLimiterBuilder {
    /// A builder with the local provider's options, the monotonic clock and thread-local
    /// randomness.
    pub fn new(local: LocalRateLimiterOptions) -> Self {
        RateLimiterBuilder {
            local,
            key_budget: None,
            clock: clock::Time::Monotonic(MonotonicClock::new()),
            random: Arc::new(ThreadRandom),
            #[cfg(feature = "redis-tokio")]
            redis: RedisBuilderParts {
                connection: None,
                timeout: crate::redis::DEFAULT_REDIS_TIMEOUT,
                test_clock: None,
                hybrid_max_pending_buckets: crate::hybrid::DEFAULT_MAX_PENDING_BUCKETS,
            },
        }
    }

    /// The clock the local provider reads (default: [`MonotonicClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = clock::Time::Injected(Arc::new(clock));
        self
    }

    /// A cap on the keys held in memory by the local provider and the hybrid provider's
    /// state together, and what a new key gets once it is full (see [`KeyBudget`] and
    /// [`WhenFull`](crate::WhenFull), with what a key costs). Default: no cap.
    ///
    /// ```
    /// use sluicegate::{KeyBudget, RateLimit, RateLimiterBuilder, WhenFull};
    /// # fn main() -> Result<(), sluicegate::Error> {
    /// # let options = sluicegate::local::LocalRateLimiterOptions {
    /// #     window_size_seconds: 10.try_into()?, rate_group_size_ms: 100.try_into()?,
    /// #     hard_limit_factor: Default::default(), suppression_factor_cache_ms: Default::default(),
    /// # };
    /// let rl = RateLimiterBuilder::new(options)
    ///     .key_budget(KeyBudget::new(2).when_full(WhenFull::Refuse))
    ///     .build()?;
    /// let rate = RateLimit::try_from(1.0)?;
    /// rl.local().absolute().try_inc("a", &rate, 1)?;
    /// rl.local().absolute().try_inc("b", &rate, 1)?;
    /// let refused = rl.local().absolute().try_inc("c", &rate, 1).unwrap_err();
    /// assert!(matches!(refused, sluicegate::Error::KeyBudgetFull { max_keys: 2 }));
    /// assert!(rl.local().absolute().try_inc("a", &rate, 1)?.is_allowed()); // held keys go on
    /// assert_eq!(rl.key_count(), 2);
    /// # Ok(()) }
    /// ```
    pub fn key_budget(mut self, budget: KeyBudget) -> Self {
        self.key_budget = Some(budget);
        self
    }

    /// [`key_budget`](Self::key_budget) of `max_keys` keys, refusing new keys once full
    /// ([`WhenFull::Refuse`](crate::WhenFull::Refuse)).
    pub fn max_keys(self, max_keys: usize) -> Self {
        self.key_budget(KeyBudget::new(max_keys))
    }

    /// The suppressed strategy's draws (default: [`ThreadRandom`]).
    pub fn random(mut self, random: impl RandomSource) -> Self {
        self.random = Arc::new(random);
        self
    }

    /// The Redis provider on a single server, as `RateLimiterOptions { redis, .. }` gives it.
    #[cfg(feature = "redis-tokio")]
    pub fn redis(self, options: crate::redis::RedisRateLimiterOptions) -> Self {
        let (manager, settings) = options.into_parts();
        self.redis_connection(manager, settings)
    }

    /// The Redis provider on any [`RedisConnection`](crate::redis::RedisConnection): a
    /// `ConnectionManager`, or for Redis Cluster
    /// [`RedisConnection::cluster_nodes`](crate::redis::RedisConnection::cluster_nodes) (the
    /// limiter's own routing, which keeps healthy shards answering through a failover) or a
    /// `redis::cluster_async::ClusterConnection`.
    #[cfg(feature = "redis-tokio")]
    pub fn redis_connection(
        mut self,
        connection: impl Into<crate::redis::RedisConnection>,
        settings: crate::redis::RedisSettings,
    ) -> Self {
        self.redis.connection = Some((RedisSource::Connection(connection.into()), settings));
        self
    }

    /// The Redis provider on a single server, through a `ConnectionManager` the builder
    /// makes from `client` with
    /// [`connection_manager_config`](crate::redis::connection_manager_config) for the
    /// [`redis_timeout`](Self::redis_timeout): the deadline alone bounds each call, a
    /// restarted server is noticed within about 100 ms, and [`build`](Self::build) does not
    /// wait for Redis (the manager connects on first use; call
    /// [`RateLimiter::check_redis`] at start-up to find out whether it can). `build` must
    /// then run inside a tokio runtime.
    #[cfg(feature = "redis-tokio")]
    pub fn redis_client(
        mut self,
        client: ::redis::Client,
        settings: crate::redis::RedisSettings,
    ) -> Self {
        self.redis.connection = Some((RedisSource::Client(Box::new(client)), settings));
        self
    }

    /// The deadline around each Redis call (default
    /// [`DEFAULT_REDIS_TIMEOUT`](crate::redis::DEFAULT_REDIS_TIMEOUT), 1 s): past it a call
    /// returns [`Error::RedisTimeout`].
    ///
    /// A connection can end a call sooner by itself: a `ConnectionManager` built with
    /// redis-rs's defaults times every call out at 500 ms (an [`Error::Redis`] whose
    /// `is_timeout()` is true), so a deadline above 500 ms would never be reached. With
    /// [`redis_client`](Self::redis_client) the builder configures the manager for the
    /// deadline; a manager you build yourself should be built with
    /// `client.get_connection_manager_with_config(sluicegate::redis::connection_manager_config(deadline))`
    /// (or any response timeout of at least the deadline). The limiter warns once (tracing)
    /// when the connection cuts a call short of its deadline.
    #[cfg(feature = "redis-tokio")]
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis.timeout = timeout;
        self
    }

    /// The hybrid provider's memory bound: how many buckets of increments not yet in Redis
    /// (during an outage) it holds before dropping the oldest (default
    /// [`DEFAULT_MAX_PENDING_BUCKETS`](crate::hybrid::DEFAULT_MAX_PENDING_BUCKETS)). At
    /// least 1.
    #[cfg(feature = "redis-tokio")]
    pub fn hybrid_max_pending_buckets(mut self, buckets: usize) -> Self {
        self.redis.hybrid_max_pending_buckets = buckets.max(1);
        self
    }

    /// Tests only: the Redis scripts take "now" from `clock` instead of the server's `TIME`,
    /// so a test can drive Redis and the local provider from one [`ManualClock`]. Never use
    /// it in production: instances with different clocks would disagree.
    #[cfg(feature = "redis-tokio")]
    #[doc(hidden)]
    pub fn redis_time_from_clock_for_tests_only(mut self, clock: impl Clock) -> Self {
        self.redis.test_clock = Some(Arc::new(clock));
        self
    }

    /// Checks the options together and builds the limiter.
    ///
    /// # Errors
    /// An option out of range together with the others (a rate group wider than the
    /// window), or, with Redis options, [`Error::SettingsMismatch`] when they give a window
    /// setting other than the local options'.
    pub fn build(self) -> Result<RateLimiter, Error> {
        let local_options = settings::WindowOptions::from(&self.local);
        let settings = settings::Settings::new(&local_options)?;
        let key_budget = self.key_budget.map(KeyBudget::checked).transpose()?;
        let keys = Arc::new(KeyCount::new(key_budget));
        #[cfg(feature = "redis-tokio")]
        let (redis, hybrid) = {
            let parts = self.redis;
            let time = match parts.test_clock {
                Some(clock) => crate::redis::TimeSource::TestClock(clock),
                None => crate::redis::TimeSource::Server,
            };
            let core = match parts.connection {
                Some((source, redis_settings)) => {
                    local_options.check_agrees(&redis_settings.window_options())?;
                    let connection = match source {
                        RedisSource::Connection(connection) => connection,
                        RedisSource::Client(client) => {
                            if tokio::runtime::Handle::try_current().is_err() {
                                return Err(Error::invalid(
                                    "RateLimiterBuilder::redis_client",
                                    "build() called outside a tokio runtime",
                                    "the ConnectionManager it makes runs on tokio: build inside a runtime",
                                ));
                            }
                            let config = crate::redis::connection_manager_config(parts.timeout);
                            ::redis::aio::ConnectionManager::new_lazy_with_config(*client, config)?
                                .into()
                        }
                    };
                    Some(crate::redis::Core::new(
                        connection,
                        &redis_settings,
                        settings,
                        parts.timeout,
                        self.random.clone(),
                        time,
                    ))
                }
                None => None,
            };
            let redis = crate::redis::RedisRateLimiter::new(core);
            let hybrid = crate::hybrid::HybridRateLimiter::new(
                redis.core(),
                self.clock.clone(),
                parts.hybrid_max_pending_buckets,
                &keys,
            );
            (redis, hybrid)
        };
        let local = LocalRateLimiter::new(settings, self.clock, self.random, &keys);
        Ok(RateLimiter {
            local,
            keys,
            #[cfg(feature = "redis-tokio")]
            redis,
            #[cfg(feature = "redis-tokio")]
            hybrid,
            settings,
            cleanup: Default::default(),
        })
    }
}
