//! The hybrid provider: decisions from local state with no Redis I/O, Redis-wide limits.
//!
//! ```no_run
//! use std::sync::Arc;
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
//! let rl = Arc::new(RateLimiter::new(RateLimiterOptions {
//!     local,
//!     redis: RedisRateLimiterOptions {
//!         connection_manager,
//!         prefix: None,
//!         window_size_seconds: local.window_size_seconds,
//!         rate_group_size_ms: local.rate_group_size_ms,
//!         hard_limit_factor: local.hard_limit_factor,
//!         suppression_factor_cache_ms: local.suppression_factor_cache_ms,
//!         sync_interval_ms: SyncIntervalMs::try_from(10)?,
//!     },
//! }));
//! let key = RedisKey::try_from("user_123")?;
//! let rate = RateLimit::try_from(10.0)?;
//! if rl.hybrid().absolute().inc(&key, &rate, 1).await?.is_allowed() { /* serve */ }
//! println!("{:?}", rl.hybrid().stats());
//! # Ok(()) }
//! ```
//!
//! # How it works
//! A call never waits on Redis: it reads and updates the key's in-process state and
//! returns. A background task, the committer (started on the tokio runtime the limiter is
//! built in, or on the first hybrid call; it ends when the limiter is dropped), wakes every
//! `sync_interval_ms` and sends, in **one pipelined round trip** (up to 512 keys a
//! pipeline; more keys, more pipelines, two in flight at once), one script call per key
//! touched since the last cycle (on a Redis Cluster, where a pipeline must stay in one slot, those
//! calls go out at once, each to its key's node). The script:
//!
//! 1. adds the key's unsent increments to the same Redis keys, buckets and TTLs the Redis
//!    provider uses (each increment carries its grid-aligned bucket id, on the server's
//!    clock, learned from the script's `TIME`); a bucket already out of the window is
//!    dropped, as it no longer counts;
//! 2. grants this instance a **lease**: `(C − A − L) / N`, where `A` is the key's accepted
//!    usage in Redis, `L` the unspent leases of the other instances holding a live lease on
//!    the key and `N` those instances plus this one (at least the largest count this
//!    instance could not fit, if that much is left, so a share below one call does not
//!    strand the last units);
//! 3. returns what the instance decides on until the next cycle: the lease, the key's
//!    usage, the holders, past half the capacity the key's 32 oldest buckets (absolute),
//!    and the observed sums the suppression factor is computed from (suppressed).
//!
//! Between cycles an instance admits a call outright while the units it admitted since its
//! last refresh plus the call fit its lease and the call's capacity (a rate given to a call
//! applies to that call). Capacity that appears before the next refresh (buckets that
//! expire, a higher rate) is shared as the lease was: the instance takes `1 / N` of it.
//! Past that, the absolute strategy rejects, with the wait until enough of the oldest
//! buckets expire for this call (one sync interval when other instances' leases hold the
//! rest), and the suppressed strategy admits with probability `1 − sf`, `sf` the local
//! core's formula on the key's Redis-wide observed usage, cached per instance for
//! `suppression_factor_cache_ms`. With a refresh before each call, one instance answers the
//! shared conformance table exactly as the Redis and local providers do
//! (`tests/hybrid_conformance.rs`). Each key is refreshed by the committer at most once per
//! cycle, however many callers hit it: there is no thundering herd. A new key (or one idle
//! longer than a lease) admits at its rate before its first refresh under the absolute
//! strategy: `max(1, rate × (t + sync_interval))` units `t` after its first call, at most
//! its capacity, so a refresh that comes late (a busy runtime) does not turn a key under
//! its rate away; under the suppressed strategy it is decided as in an outage (below)
//! until then.
//!
//! # How far several instances can over-admit
//! Leases are reserved in Redis: at each grant `A + L + lease ≤ C`, an instance admits
//! outright only within its lease, and what it may still spend of a lease while a refresh
//! is in flight stays reserved (the refresh never shrinks a lease below it). So in steady
//! operation a key's admitted usage never exceeds `C` by more than what instances admit for
//! it before their first refresh: at most `N × max(1, rate × (T + sync_interval))` for
//! `N` instances that start on the key together and get their first refresh `T` later
//! (`T` is about one sync interval; the first refresh reserves what is left). The suppressed strategy adds its probabilistic admissions above
//! capacity, which are by design (`rate` at steady load). A lease lives
//! `max(10 × sync_interval, 200 ms)`; the lease of an instance that dies or stops calling
//! is freed after that (until then the others may under-admit by it). Decisions lag Redis
//! by about one sync interval. `tests/hybrid_accuracy.rs` holds four instances hammering
//! one key to `C..=C + 2.5 %`: they admit `C` plus their provisional units, which grow with
//! `T`. Measured: 1001–1008 of 1000 on a quiet machine, up to 1018 on a loaded one, where
//! the runtime delays the first refresh (12 runs on 2 cores shared with other builds).
//!
//! # Limit sets
//! [`HybridRateLimiter::policy`] decides a [`LimitSet`](crate::policy::LimitSet) the same
//! way: each limit keeps this key state per key, on its own window and grouping, and a
//! request is decided under every limit's key at once, from memory, counted in all or none
//! (see [`HybridPolicy`]). Each limit is held to the bound above; a refused request spends
//! nothing in any limit, on any instance. The counts land in the Redis provider's set keys.
//!
//! # Redis outages
//! When a cycle fails (logged with `tracing`, counted in [`HybridStats::flush_errors`]),
//! increments stay in memory and the failed batches are sent again, under the same sequence
//! number, on every later cycle. The script applies a batch only if its sequence number is
//! above the last one it applied for this instance and key, so a batch whose reply was lost
//! lands exactly once. Leases still valid are used up; after that each instance decides on
//! its own usage against `1 / N` of the capacity (`N` the holders it last saw), with the
//! local core's algorithm. Memory stays bounded: unsent buckets that leave the window are
//! dropped ([`HybridStats::units_expired`]), and past
//! [`RateLimiterBuilder::hybrid_max_pending_buckets`](crate::RateLimiterBuilder::hybrid_max_pending_buckets)
//! (default 1,000,000 buckets) the oldest are dropped and counted in
//! [`HybridStats::units_dropped`].
//!
//! # Runtime
//! The committer is a tokio task: on a `current_thread` runtime it runs only when callers
//! yield, so a loop that only calls `inc` (which never awaits) should yield now and then, or
//! run on a multi-thread runtime.

mod absolute;
mod bound;
mod committer;
mod core;
#[cfg(test)]
mod fixtures;
mod flush;
mod key;
mod mode;
mod policy;
mod refund;
mod stats;
mod suppressed;
mod usage;
mod walk;

use std::sync::Arc;

pub use crate::settings::SyncIntervalMs;
pub use policy::HybridPolicy;
pub use stats::HybridStats;

use absolute::AbsoluteKey;
use core::HybridCore;
use suppressed::SuppressedKey;

use crate::call::{Call, checked_capacity};
use crate::clock::Time;
use crate::local::store::KeyStore;
use crate::redis::{Core, KeyUsage, RedisKey};
use crate::{Error, RateLimit, RateLimitDecision};
use mode::{Conditions, Now};

/// The memory bound on unsent increments unless
/// [`RateLimiterBuilder::hybrid_max_pending_buckets`](crate::RateLimiterBuilder::hybrid_max_pending_buckets)
/// says otherwise.
pub const DEFAULT_MAX_PENDING_BUCKETS: usize = 1_000_000;

#[inline]
fn core_of(shared: &Option<Arc<HybridCore>>) -> Result<&Arc<HybridCore>, Error> {
    match shared {
        Some(shared) => {
            shared.ensure_started();
            Ok(shared)
        }
        None => Err(not_configured()),
    }
}

#[cold]
fn not_configured() -> Error {
    Error::RedisNotConfigured
}

/// `inc` and `inc_sync` of a strategy's limiter, the same for both: they hand the call to
/// its `decide`. The doc comment given documents both.
macro_rules! inc_methods {
    ($(#[$inc_doc:meta])*) => {
        $(#[$inc_doc])*
        /// The same as [`inc_sync`](Self::inc_sync), for callers that hold a future.
        ///
        /// # Errors
        /// As [`inc_sync`](Self::inc_sync).
        pub async fn inc(
            &self,
            key: &RedisKey,
            rate: &RateLimit,
            count: u64,
        ) -> Result<RateLimitDecision, Error> {
            self.decide(key, rate, count, |_, _, _, decision| decision)
        }

        $(#[$inc_doc])*
        /// Without a future: the decision is taken from this instance's state and never does
        /// I/O (the committer talks to Redis in the background). Call it inside a tokio
        /// runtime, where the committer runs.
        ///
        /// # Errors
        /// [`Error::ZeroCount`], [`Error::CapacityBelowOne`] and
        /// [`Error::CountAboveCapacity`] for a call that can never be served (nothing is
        /// recorded); [`Error::RedisNotConfigured`] on a limiter built without Redis. Redis
        /// failures are never returned here: the committer counts and logs them.
        #[inline]
        pub fn inc_sync(
            &self,
            key: &RedisKey,
            rate: &RateLimit,
            count: u64,
        ) -> Result<RateLimitDecision, Error> {
            self.decide(key, rate, count, |_, _, _, decision| decision)
        }

        /// [`inc_sync`](Self::inc_sync), with the key's usage after an admitted call
        /// (`None` for a refusal), read from the state the call was decided on: no I/O,
        /// no second lookup. The usage is this instance's view: Redis's count at the last
        /// refresh plus what this instance admitted since.
        ///
        /// # Errors
        /// As [`inc_sync`](Self::inc_sync).
        #[inline]
        pub fn inc_sync_with_usage(
            &self,
            key: &RedisKey,
            rate: &RateLimit,
            count: u64,
        ) -> Result<(RateLimitDecision, Option<KeyUsage>), Error> {
            self.decide(key, rate, count, |state, conditions, now, decision| {
                let usage = decision.is_allowed().then(|| state.usage_now(conditions, now));
                (decision, usage)
            })
        }
    };
}

/// One checked call on a key of `keys`, created by `create(rate, cap, now)` if new,
/// decided by `decide`: both strategies' `inc_sync`.
#[inline]
#[allow(clippy::too_many_arguments)] // each strategy's parts, passed once from two call sites
fn decide_on<K, R>(
    core: &Option<Arc<HybridCore>>,
    key: &RedisKey,
    rate: &RateLimit,
    count: u64,
    keys: impl FnOnce(&HybridCore) -> &KeyStore<K>,
    create: impl FnOnce(f64, f64, u64) -> K,
    decide: impl FnOnce(&mut K, &HybridCore, &Conditions<'_>, Now, Call) -> R,
    idle: impl FnMut(&mut K, &crate::window::WindowGrid, Now) -> bool,
) -> Result<R, Error> {
    let core = core_of(core)?;
    let rate = rate.get();
    let cap = checked_capacity(rate, core.settings.grid.window_seconds(), count)?;
    let now = core.now();
    let call = Call {
        now_ms: now.server,
        rate,
        count,
        cap,
    };
    let conditions = core.conditions();
    let mut idle = idle;
    // Under a full key budget only keys cleanup would drop may make room.
    Ok(keys(core).try_with(
        key.as_str(),
        || create(rate, cap, now.local),
        |state| decide(state, core, &conditions, now, call),
        |state| match idle(state, &core.settings.grid, now) {
            true => crate::local::store::Spare::Idle,
            false => crate::local::store::Spare::Keep,
        },
    )?)
}

/// `rl.hybrid()`: both strategies, from local state, flushed to Redis in the background.
///
/// On a limiter built without Redis options every call returns
/// [`Error::RedisNotConfigured`].
#[derive(Debug, Clone)]
pub struct HybridRateLimiter {
    shared: Option<Arc<HybridCore>>,
    absolute: AbsoluteHybridRateLimiter,
    suppressed: SuppressedHybridRateLimiter,
}

impl HybridRateLimiter {
    pub(crate) fn new(
        core: Option<&Arc<Core>>,
        clock: Time,
        max_pending_buckets: usize,
        keys: &Arc<crate::local::store::KeyCount>,
    ) -> Self {
        let shared = core.map(|core| {
            Arc::new(HybridCore::new(
                core.clone(),
                clock,
                max_pending_buckets,
                keys,
            ))
        });
        if let Some(shared) = &shared {
            // Inside a runtime already: start now, so the first call finds a lease sooner.
            shared.start();
        }
        HybridRateLimiter {
            absolute: AbsoluteHybridRateLimiter {
                shared: shared.clone(),
            },
            suppressed: SuppressedHybridRateLimiter {
                shared: shared.clone(),
            },
            shared,
        }
    }

    /// The absolute strategy: admit up to capacity, reject the rest with a retry time.
    pub fn absolute(&self) -> &AbsoluteHybridRateLimiter {
        &self.absolute
    }

    /// The suppressed strategy: shed load probabilistically between capacity and the hard
    /// limit.
    pub fn suppressed(&self) -> &SuppressedHybridRateLimiter {
        &self.suppressed
    }

    /// A [`LimitSet`](crate::policy::LimitSet) decided by this provider: from memory, every
    /// limit admitting a request or none counting it, the counts batched to Redis by the
    /// committer (see [`HybridPolicy`]).
    ///
    /// # Errors
    /// [`Error::RedisNotConfigured`] on a limiter built without Redis.
    pub fn policy(&self, set: crate::policy::LimitSet) -> Result<HybridPolicy, Error> {
        let shared = core_of(&self.shared)?;
        Ok(HybridPolicy::new(shared.clone(), set))
    }

    /// The committer's counters (all zero without Redis).
    pub fn stats(&self) -> HybridStats {
        self.shared
            .as_ref()
            .map_or_else(HybridStats::default, |s| s.stats.snapshot())
    }

    /// Runs one flush-and-refresh cycle now and waits for it (it waits for a running one
    /// first): before a graceful shutdown, or in tests.
    ///
    /// # Errors
    /// [`Error::RedisNotConfigured`] on a limiter built without Redis. A failed flush is not
    /// an error here: it is counted in [`HybridStats::flush_errors`] and retried.
    pub async fn flush(&self) -> Result<(), Error> {
        let shared = core_of(&self.shared)?;
        shared.cycle().await;
        Ok(())
    }

    /// Keys held in memory, both strategies.
    pub fn key_count(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| s.absolute.len() + s.suppressed.len())
    }

    /// Drops keys with nothing unsent, no live lease and no usage of this instance left in
    /// the window; returns how many.
    pub(crate) fn cleanup(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.cleanup())
    }
}

/// `rl.hybrid().absolute()`: the absolute strategy, decided in process on a lease of the
/// key's Redis-wide capacity.
#[derive(Debug, Clone)]
pub struct AbsoluteHybridRateLimiter {
    shared: Option<Arc<HybridCore>>,
}

impl AbsoluteHybridRateLimiter {
    inc_methods! {
        /// Admits `count` units for `key` if they fit this instance's lease (see the module
        /// docs); never waits on Redis.
    }

    /// The decision of every `inc` method; `then` reads the key's state after it.
    #[inline]
    fn decide<R>(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
        then: impl FnOnce(&mut AbsoluteKey, &Conditions<'_>, Now, RateLimitDecision) -> R,
    ) -> Result<R, Error> {
        decide_on(
            &self.shared,
            key,
            rate,
            count,
            |core| &core.absolute,
            AbsoluteKey::new,
            |state, _, conditions, now, call| {
                let decision = state.inc(conditions, now, call);
                then(state, conditions, now, decision)
            },
            AbsoluteKey::idle,
        )
    }

    /// Whether `inc(key, rate, 1)` at the key's latest rate would be admitted now, from
    /// local state. Records nothing; a key this instance has not seen is `Allowed`.
    ///
    /// # Errors
    /// [`Error::RedisNotConfigured`] on a limiter built without Redis.
    pub async fn is_allowed(&self, key: &RedisKey) -> Result<RateLimitDecision, Error> {
        let shared = core_of(&self.shared)?;
        let now = shared.now();
        let conditions = shared.conditions();
        Ok(shared
            .absolute
            .peek(key.as_str(), |s| s.check(&conditions, now))
            .unwrap_or(RateLimitDecision::Allowed))
    }
}

/// `rl.hybrid().suppressed()`: the suppressed strategy, decided in process; above this
/// instance's lease it sheds with the key's Redis-wide suppression factor.
#[derive(Debug, Clone)]
pub struct SuppressedHybridRateLimiter {
    shared: Option<Arc<HybridCore>>,
}

impl SuppressedHybridRateLimiter {
    inc_methods! {
        /// Decides one call: `Allowed` within the lease, `Suppressed { is_allowed, .. }`
        /// beyond it (always check `is_allowed`). Every call counts as observed.
    }

    /// The decision of every `inc` method; `then` reads the key's state after it.
    #[inline]
    fn decide<R>(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
        then: impl FnOnce(&mut SuppressedKey, &Conditions<'_>, Now, RateLimitDecision) -> R,
    ) -> Result<R, Error> {
        decide_on(
            &self.shared,
            key,
            rate,
            count,
            |core| &core.suppressed,
            SuppressedKey::new,
            |state, core, conditions, now, call| {
                let decision = state.inc(conditions, now, call, || core.core.random.next_f64());
                then(state, conditions, now, decision)
            },
            SuppressedKey::idle,
        )
    }

    /// The key's suppression factor now, in `[0, 1]`, from local state: 0 within the lease
    /// or for a key this instance has not seen, 1 over the hard limit. Records nothing.
    ///
    /// # Errors
    /// [`Error::RedisNotConfigured`] on a limiter built without Redis.
    pub async fn get_suppression_factor(&self, key: &RedisKey) -> Result<f64, Error> {
        let shared = core_of(&self.shared)?;
        let now = shared.now();
        let conditions = shared.conditions();
        Ok(shared
            .suppressed
            .peek(key.as_str(), |s| s.factor(&conditions, now))
            .unwrap_or(0.0))
    }
}
