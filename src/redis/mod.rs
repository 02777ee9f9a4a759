//! The Redis provider: one atomic script round trip per decision, shared by every instance.
//!
//! ```no_run
//! use sluicegate::{RateLimit, RateLimitDecision, RateLimiter, RateLimiterOptions};
//! use sluicegate::hybrid::SyncIntervalMs;
//! use sluicegate::local::LocalRateLimiterOptions;
//! use sluicegate::redis::{RedisKey, RedisRateLimiterOptions};
//!
//! # async fn run() -> Result<(), sluicegate::Error> {
//! let client = redis::Client::open("redis://127.0.0.1:6379/")?;
//! let connection_manager = client.get_connection_manager().await?;
//! let local = LocalRateLimiterOptions {
//!     window_size_seconds: 60.try_into()?,
//!     rate_group_size_ms: 10.try_into()?,
//!     hard_limit_factor: 1.5.try_into()?,
//!     suppression_factor_cache_ms: Default::default(),
//! };
//! let rl = RateLimiter::new(RateLimiterOptions {
//!     local,
//!     redis: RedisRateLimiterOptions {
//!         connection_manager,
//!         prefix: None,
//!         window_size_seconds: local.window_size_seconds,
//!         rate_group_size_ms: local.rate_group_size_ms,
//!         hard_limit_factor: local.hard_limit_factor,
//!         suppression_factor_cache_ms: local.suppression_factor_cache_ms,
//!         sync_interval_ms: SyncIntervalMs::default(),
//!     },
//! });
//! let key = RedisKey::try_from("user_123")?;
//! let rate = RateLimit::try_from(10.0)?;
//! match rl.redis().absolute().inc(&key, &rate, 1).await? {
//!     RateLimitDecision::Allowed => { /* serve */ }
//!     RateLimitDecision::Rejected { retry_after_ms, .. } => println!("retry in {retry_after_ms} ms"),
//!     RateLimitDecision::Suppressed { .. } => unreachable!("absolute never suppresses"),
//! }
//! # Ok(()) }
//! ```
//!
//! # How it works
//! Each decision is one `EVALSHA` of a Lua script (loaded again on `NOSCRIPT`) that mirrors
//! the local provider's sliding window: grid-aligned buckets `floor(t / g)`, a bucket counts
//! while any part of it is inside the last `W` ms, the same capacity tolerance. Time is the
//! server's `TIME`, read inside the script, so application clocks never matter.
//!
//! A limiter key `k` is stored in two Redis keys per strategy: `prefix:{k}:a:h`, a small hash
//! (the open bucket's id and counts, the running totals, the oldest bucket's id, the key's
//! latest rate) and `prefix:{k}:a:b`, the list of its closed buckets, oldest first, each
//! entry `id:count`; `s` instead of `a` for the suppressed strategy, which counts observed
//! and declined units (accepted = observed − declined; entries `id:observed:declined`). Both
//! share the hash tag `{k}`, so one key lives on one Redis Cluster slot, and both carry a
//! TTL equal to the time until their newest bucket stops counting (at most window + group),
//! so nothing outlives its window even if every process dies.
//!
//! The hash stays a handful of fields however many buckets a key has, so reading and
//! writing it costs the same for every key. A call reads it with one `HMGET`; an admitted
//! call in the open bucket then writes one `HSET` (with `TIME`, three commands, and the
//! script defines no function on that path); a call that opens a new bucket also pushes the
//! closed one onto the list and renews the two TTLs. Only the buckets that expired since
//! the previous call are popped: each bucket is pushed once and popped once, a key whose
//! newest bucket has expired is dropped whole, and no call unpacks a list.
//! A rejection walks the oldest buckets until the call would fit (one for a single unit,
//! usually); the suppressed factor reads the buckets of the last second, at most once per
//! `suppression_factor_cache_ms`. Run the server with `maxmemory-policy noeviction`: every
//! sluicegate key carries a TTL, so a `volatile-*` policy evicts them as readily as an
//! `allkeys-*` one, and an evicted key starts a fresh window (or, with one of its two Redis
//! keys gone, leaves its usage stale until the survivor's TTL ends).
//! [`RateLimiter::check_redis`](crate::RateLimiter::check_redis) warns about any other policy.
//!
//! # Errors and time bounds
//! Malformed calls get the same errors as the local provider's `try_inc`
//! ([`Error::ZeroCount`], [`Error::CapacityBelowOne`], [`Error::CountAboveCapacity`],
//! [`Error::CapacityAboveMax`] past [`MAX_CAPACITY`](crate::MAX_CAPACITY), 2^52 units)
//! before anything is sent, so every total the scripts keep stays an exact Lua number; the
//! suppressed strategy records no observed usage past 2^53 (a call that would go past it
//! is declined as over the hard limit), as the local provider does. Every call is bounded by a deadline ([`DEFAULT_REDIS_TIMEOUT`], 1 s,
//! unless [`RateLimiterBuilder::redis_timeout`](crate::RateLimiterBuilder::redis_timeout)
//! says otherwise): with Redis down a call returns [`Error::Redis`] or
//! [`Error::RedisTimeout`] within it, never hangs, and the same limiter works again once
//! Redis is back (the connection reconnects by itself).
//!
//! # When Redis is down: the circuit breaker
//! On a single-server connection, once Redis is known to be down calls stop waiting for it:
//! they fail at once with an [`Error::Redis`] for which [`Error::is_redis_unavailable`] is
//! true (its message names the failure and what to check), and the layer applies its
//! `ProviderErrorPolicy` to it like to any provider error. Redis is known down after a call
//! fails to reach it (connection refused, reset or closed), or after calls have done nothing
//! but time out for [`STALL_OPENS_AFTER`] (2 s; a shorter pause is waited out at the
//! deadline). Meanwhile one background task, never more than one, sends `PING` through the
//! same connection every [`PROBE_INTERVAL`] (100 ms), bounded by the deadline; its first
//! answer sends calls to Redis again. How soon the connection itself reconnects is the
//! `ConnectionManager`'s business: redis-rs's default backs off exponentially (up to
//! seconds); `ConnectionManagerConfig::set_max_delay(100 ms)` makes a restart noticed within
//! a few hundred milliseconds. The hybrid provider's committer goes through the same breaker:
//! while it is open a flush fails at once, is counted in `flush_errors`, keeps its
//! increments and is tried again the next sync interval, as after any failed flush. On a
//! Redis Cluster connection there is no breaker (one node down must not fail the keys of
//! the others): calls wait out the deadline as before.
//!
//! # Failover: Redis Cluster and Sentinel
//! Build a cluster connection with [`RedisConnection::cluster_nodes`]: the limiter routes
//! each call to its slot's master itself ([`ClusterNodes`]), so a dead master fails only its
//! own slots' calls, the healthy shards are not held up, and failing calls ask for the slot
//! map again every [`CLUSTER_REFRESH_GAP`] until a live node reports the promoted replica.
//! [`RedisConnection::cluster`] (from a `ClusterClient`, redis-rs's own routing) and a
//! Sentinel-managed connection ([`RedisConnection::sentinel`]) are made again once calls
//! have had no answer for [`CLUSTER_REBUILD_AFTER`] (1 s), from the client or to the master
//! the sentinels name now, so decisions resume about a second after a failover's
//! promotion. On a cluster a script missing on a node (a promoted replica) is loaded on that
//! node alone, never on every node (one of which may be dead).
//! Run a cluster with `cluster-require-full-coverage no` so that the healthy shards keep
//! answering while one has no master.

//! # Lost data
//! Redis is the only record the Redis provider has: when a key's data is lost (`FLUSHALL`,
//! a failover that lost the writes not yet copied to the promoted replica, an evicted key
//! under a `maxmemory-policy` other than `noeviction`), the next call finds an empty
//! window, and the key gets a second full window from then on (tested in
//! `tests/redis_lost_data.rs`). Nothing else is affected: the scripts never fail on a
//! missing key. The hybrid provider keeps its own record of what it admitted in the
//! window and decides on the larger of that and what Redis reports, so one instance never
//! admits again what it admitted before the loss (it logs a warning when it finds Redis
//! short); other instances know only their own records, so across several instances the
//! loss can still admit up to what the others had admitted.
//!
//! # Differences from the local provider
//! Decisions are the same for the same sequence of calls, with two documented exceptions:
//! the suppressed strategy draws one random number per `inc` (the local one draws only when
//! the decision is probabilistic), and a key whose window empties entirely loses its state
//! (its cached factor included) in Redis, as its TTL demands.

mod absolute;
mod breaker;
mod check;
mod cluster;
mod connection;
mod key;
mod policy;
mod refund;
mod scripts;
mod suppressed;
mod usage;
pub(crate) mod wire;

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::ConnectionManager;

pub use absolute::AbsoluteRedisRateLimiter;
pub use breaker::{PROBE_INTERVAL, RedisUnavailable, STALL_OPENS_AFTER};
pub use check::RedisCheck;
pub use cluster::{CLUSTER_NODE_RETRY_GAP, CLUSTER_REFRESH_GAP, ClusterNodes};
pub use connection::{
    CLUSTER_REBUILD_AFTER, ClusterReconnecting, DEFAULT_REDIS_TIMEOUT, RedisConnection,
    connection_manager_config,
};
pub use key::RedisKey;
pub use suppressed::SuppressedRedisRateLimiter;
pub use usage::KeyUsage;

use crate::clock::Clock;
use crate::random::RandomSource;
use crate::settings::SyncIntervalMs;
use crate::settings::{Settings, WindowOptions};
use crate::{Error, HardLimitFactor, RateGroupSizeMs, SuppressionFactorCacheMs, WindowSizeSeconds};
pub(crate) use connection::Connection;
pub(crate) use key::{KeyNames, KeySpace, StrategyTag};
pub use policy::RedisPolicy;
pub(crate) use policy::{Span as SetRefundSpan, refund_limit};

/// The Redis (and hybrid) providers' settings on a single-server connection, as in
/// `RateLimiterOptions { redis: RedisRateLimiterOptions { .. }, .. }`.
///
/// For a Redis Cluster, pass a cluster connection and [`RedisSettings`] to
/// [`RateLimiterBuilder::redis_connection`](crate::RateLimiterBuilder::redis_connection).
#[derive(Debug, Clone)]
pub struct RedisRateLimiterOptions {
    /// The connection every call goes through (multiplexed, reconnects by itself).
    pub connection_manager: ConnectionManager,
    /// Namespace of every Redis key written, to separate applications sharing a server;
    /// `None` means `sluicegate`.
    pub prefix: Option<RedisKey>,
    /// How long usage counts.
    pub window_size_seconds: WindowSizeSeconds,
    /// Width of a usage bucket; at most the window.
    pub rate_group_size_ms: RateGroupSizeMs,
    /// The suppressed strategy's headroom before full suppression.
    pub hard_limit_factor: HardLimitFactor,
    /// How long the suppressed strategy may reuse a key's factor (shared through Redis).
    pub suppression_factor_cache_ms: SuppressionFactorCacheMs,
    /// How often the hybrid provider flushes to Redis; the Redis provider does not use it.
    pub sync_interval_ms: SyncIntervalMs,
}

impl RedisRateLimiterOptions {
    /// The connection and the settings, apart.
    pub fn into_parts(self) -> (ConnectionManager, RedisSettings) {
        let RedisRateLimiterOptions {
            connection_manager,
            prefix,
            window_size_seconds,
            rate_group_size_ms,
            hard_limit_factor,
            suppression_factor_cache_ms,
            sync_interval_ms,
        } = self;
        let settings = RedisSettings {
            prefix,
            window_size_seconds,
            rate_group_size_ms,
            hard_limit_factor,
            suppression_factor_cache_ms,
            sync_interval_ms,
        };
        (connection_manager, settings)
    }
}

/// [`RedisRateLimiterOptions`] without the connection: what
/// [`RateLimiterBuilder::redis_connection`](crate::RateLimiterBuilder::redis_connection)
/// takes beside any [`RedisConnection`], a cluster one included.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Namespace of every Redis key written; `None` means `sluicegate`.
    pub prefix: Option<RedisKey>,
    /// How long usage counts.
    pub window_size_seconds: WindowSizeSeconds,
    /// Width of a usage bucket; at most the window.
    pub rate_group_size_ms: RateGroupSizeMs,
    /// The suppressed strategy's headroom before full suppression.
    pub hard_limit_factor: HardLimitFactor,
    /// How long the suppressed strategy may reuse a key's factor.
    pub suppression_factor_cache_ms: SuppressionFactorCacheMs,
    /// How often the hybrid provider flushes to Redis.
    pub sync_interval_ms: SyncIntervalMs,
}

impl RedisSettings {
    /// The window settings, to check against the local options'.
    pub(crate) fn window_options(&self) -> WindowOptions {
        WindowOptions {
            window_size_seconds: self.window_size_seconds,
            rate_group_size_ms: self.rate_group_size_ms,
            hard_limit_factor: self.hard_limit_factor,
            suppression_factor_cache_ms: self.suppression_factor_cache_ms,
        }
    }
}

/// Where a script's "now" comes from.
#[derive(Debug, Clone)]
pub(crate) enum TimeSource {
    /// The server's `TIME`, read inside the script: every production call.
    Server,
    /// A clock of the caller's, for tests that must control time.
    TestClock(Arc<dyn Clock>),
}

/// What every Redis strategy shares: the connection, key names, geometry and knobs.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) conn: Connection,
    pub(crate) keys: KeySpace,
    /// The limiter's one window and strategy settings.
    pub(crate) settings: Settings,
    /// Read by the hybrid provider's committer.
    pub(crate) sync_interval_ms: SyncIntervalMs,
    pub(crate) random: Arc<dyn RandomSource>,
    pub(crate) time: TimeSource,
}

impl Core {
    pub(crate) fn new(
        conn: RedisConnection,
        redis: &RedisSettings,
        settings: Settings,
        timeout: Duration,
        random: Arc<dyn RandomSource>,
        time: TimeSource,
    ) -> Self {
        Core {
            conn: Connection::new(conn, timeout),
            keys: KeySpace::new(redis.prefix.as_ref()),
            settings,
            sync_interval_ms: redis.sync_interval_ms,
            random,
            time,
        }
    }

    /// "Now" as a script's ARGV[1] carries it: `None` for the server's `TIME`, a test
    /// clock's ms otherwise.
    pub(crate) fn script_now(&self) -> Option<u64> {
        match &self.time {
            TimeSource::Server => None,
            TimeSource::TestClock(clock) => Some(clock.now_ms()),
        }
    }

    /// KEYS[1..2] and ARGV[1..4] of a Redis provider call: what `head.lua` reads.
    pub(crate) fn head(&self, args: &mut impl wire::ScriptArgs, names: &KeyNames, mode: &str) {
        let now = self.script_now();
        wire::head(
            args,
            &[&names.buckets, &names.hash],
            now,
            &self.settings.grid,
            mode,
        );
    }
}

fn core_of(core: &Option<Arc<Core>>) -> Result<&Core, Error> {
    core.as_deref().ok_or(Error::RedisNotConfigured)
}

/// `rl.redis()`: both strategies, each with its own Redis keys.
///
/// On a limiter built without Redis options every call returns
/// [`Error::RedisNotConfigured`].
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    core: Option<Arc<Core>>,
    absolute: AbsoluteRedisRateLimiter,
    suppressed: SuppressedRedisRateLimiter,
}

impl RedisRateLimiter {
    pub(crate) fn new(core: Option<Core>) -> Self {
        let core = core.map(Arc::new);
        RedisRateLimiter {
            absolute: AbsoluteRedisRateLimiter { core: core.clone() },
            suppressed: SuppressedRedisRateLimiter { core: core.clone() },
            core,
        }
    }

    /// The absolute strategy: admit up to capacity, reject the rest with a retry time.
    pub fn absolute(&self) -> &AbsoluteRedisRateLimiter {
        &self.absolute
    }

    /// The suppressed strategy: shed load probabilistically between capacity and the hard
    /// limit.
    pub fn suppressed(&self) -> &SuppressedRedisRateLimiter {
        &self.suppressed
    }

    /// A [`LimitSet`](crate::policy::LimitSet) decided on Redis: one script round trip per
    /// request, every limit admitting it or none counting it.
    pub fn policy(&self, set: crate::policy::LimitSet) -> Result<RedisPolicy, Error> {
        Ok(RedisPolicy::new(
            self.core.clone().ok_or(Error::RedisNotConfigured)?,
            set,
        ))
    }

    /// Whether this limiter was built with a Redis connection.
    pub fn is_configured(&self) -> bool {
        self.core.is_some()
    }

    /// The namespace of every Redis key this limiter writes (`sluicegate` unless a prefix
    /// was given); `None` without Redis.
    pub fn prefix(&self) -> Option<&str> {
        self.core.as_deref().map(|c| c.keys.prefix())
    }

    /// The start-up check behind [`RateLimiter::check_redis`](crate::RateLimiter::check_redis).
    pub(crate) async fn check(&self) -> Result<RedisCheck, Error> {
        check::check(core_of(&self.core)?).await
    }

    /// The shared core, for the hybrid provider.
    pub(crate) fn core(&self) -> Option<&Arc<Core>> {
        self.core.as_ref()
    }
}
