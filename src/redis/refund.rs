//! Reservations and refunds on the Redis provider (`lua/refund.lua`): units an admitted
//! call recorded, given back, for counting by outcome. One script round trip.

use std::sync::LazyLock;

use ::redis::Script;

use super::key::{KeyNames, RedisKey, StrategyTag};
use super::wire;
use super::{AbsoluteRedisRateLimiter, Core, SuppressedRedisRateLimiter, TimeSource, core_of};
use crate::clock::{Clock, MonotonicClock};
use crate::local::Reservation;
use crate::window::WindowGrid;
use crate::{Error, RateLimit, RateLimitDecision};

/// `head.lua`, `window.lua`, then `refund.lua`: the units not found, as an integer.
pub(super) static REFUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/head.lua"),
        include_str!("lua/window.lua"),
        include_str!("lua/refund.lua")
    ))
});

/// The clock a reservation is read on when the scripts read the server's `TIME`: only how
/// long ago it was matters, and the script subtracts that from its own time.
static ELAPSED: LazyLock<MonotonicClock> = LazyLock::new(MonotonicClock::new);

impl Core {
    /// The clock reservations are read on: the test clock the scripts read, or a
    /// process-wide monotonic one.
    pub(crate) fn reservation_ms(&self) -> u64 {
        match &self.time {
            TimeSource::Server => ELAPSED.now_ms(),
            TimeSource::TestClock(clock) => clock.now_ms(),
        }
    }

    /// Gives back `count` units admitted for `key` under `strategy` at `at`; the script
    /// gets how long before now `at` was and reads its own time. Returns the units not
    /// found (they no longer counted).
    ///
    /// The script runs some time after `now_ms` is read (at most the deadline, or the call
    /// fails), which would move both ends of the span later: the earliest end is moved back
    /// by the deadline, so the span still starts no later than the reservation did (taking
    /// a unit from an older bucket only makes the limit stricter).
    pub(crate) async fn refund(
        &self,
        key: &RedisKey,
        strategy: StrategyTag,
        count: u64,
        at: Reservation,
    ) -> Result<u64, Error> {
        let ago = self.ago(at);
        self.refund_span(key, strategy, count, ago, "t").await
    }

    /// Gives back `count` units from the buckets `from..=to` (ids on the server's grid, as
    /// the hybrid provider sent them); returns the units not found.
    pub(crate) async fn refund_buckets(
        &self,
        key: &RedisKey,
        strategy: StrategyTag,
        count: u64,
        buckets: (u64, u64),
    ) -> Result<u64, Error> {
        self.refund_span(key, strategy, count, buckets, "b").await
    }

    async fn refund_span(
        &self,
        key: &RedisKey,
        strategy: StrategyTag,
        count: u64,
        span: (u64, u64),
        kind: &str,
    ) -> Result<u64, Error> {
        let names = self.keys.names(key, strategy);
        let grid = self.settings.grid;
        self.refund_names(&names, &grid, strategy, count, span, kind)
            .await
    }

    /// `refund.lua` on the keys `names` (a single-limit key, or one limit of a set) with
    /// its window and group `grid`: `span` is how long ago (`kind` `"t"`) or which bucket
    /// ids (`"b"`). Returns the units not found.
    pub(crate) async fn refund_names(
        &self,
        names: &KeyNames,
        grid: &WindowGrid,
        strategy: StrategyTag,
        count: u64,
        span: (u64, u64),
        kind: &str,
    ) -> Result<u64, Error> {
        let mut invocation = REFUND.prepare_invoke();
        wire::head(
            &mut invocation,
            &[&names.buckets, &names.hash],
            self.script_now(),
            grid,
            "r",
        );
        invocation.arg(strategy.tag());
        invocation.arg(count);
        invocation.arg(span.0);
        invocation.arg(span.1);
        invocation.arg(kind);
        self.conn.invoke::<u64>(&invocation).await
    }

    /// How long before now (on the scripts' clock) a reservation's two ends were, the
    /// earliest moved back by the deadline: see [`refund`](Self::refund).
    pub(crate) fn ago(&self, at: Reservation) -> (u64, u64) {
        let now_ms = self.reservation_ms();
        let slack = u64::try_from(self.conn.timeout().as_millis()).unwrap_or(u64::MAX);
        (
            now_ms.saturating_sub(at.before_ms).saturating_add(slack),
            now_ms.saturating_sub(at.after_ms.max(at.before_ms)),
        )
    }
}

/// `reserve` and `refund`, the same for both strategies.
macro_rules! refund_methods {
    ($tag:expr) => {
        /// [`inc`](Self::inc), with the [`Reservation`] a later [`refund`](Self::refund)
        /// of its units needs (counting by outcome: reserve before the work, give the units
        /// back if its outcome is not to count).
        ///
        /// # Errors
        /// As [`inc`](Self::inc).
        pub async fn reserve(
            &self,
            key: &RedisKey,
            rate: &RateLimit,
            count: u64,
        ) -> Result<(RateLimitDecision, Reservation), Error> {
            let core = core_of(&self.core)?;
            Reservation::around_async(|| core.reservation_ms(), self.inc(key, rate, count)).await
        }

        /// Gives back `count` units that an admitted [`reserve`](Self::reserve) for `key`
        /// recorded, in one script round trip; returns how many were not found (the key's
        /// window had dropped them: they no longer counted). The units are taken from the
        /// oldest bucket between the reservation's start and its reply that holds any, so
        /// what is left never expires earlier than it would have.
        ///
        /// # Errors
        /// [`Error::Redis`] or [`Error::RedisTimeout`] when Redis fails or does not answer
        /// in time (the units then stay counted); [`Error::RedisNotConfigured`] on a
        /// limiter built without Redis.
        pub async fn refund(
            &self,
            key: &RedisKey,
            count: u64,
            reservation: Reservation,
        ) -> Result<u64, Error> {
            core_of(&self.core)?
                .refund(key, $tag, count, reservation)
                .await
        }
    };
}

impl AbsoluteRedisRateLimiter {
    refund_methods!(StrategyTag::Absolute);
}

/// A refund gives the units back as accepted and observed (units the strategy declined
/// stay observed).
impl SuppressedRedisRateLimiter {
    refund_methods!(StrategyTag::Suppressed);
}

impl super::RedisRateLimiter {
    /// The clock reservations are read on (0 without Redis).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn reservation_ms(&self) -> u64 {
        self.core().map_or(0, |c| c.reservation_ms())
    }
}
