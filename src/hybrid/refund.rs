//! Reservations and refunds on the hybrid provider: units an admitted call recorded, given
//! back, for counting by outcome. Units still unsent leave this instance's state (its lease
//! spends them no more); units already sent go back in Redis with the Redis provider's
//! refund script, on the same keys, once the cycle that took them for a batch is over (the
//! cycle lock, read): a refund sent ahead of its batch would find nothing in Redis and leave
//! the units counted. The wait is at most one cycle's round trip, and only for refunds of
//! units already taken; the next cycle waits for the refund's round trip in turn.

use super::key::KeyState;
use super::{AbsoluteHybridRateLimiter, SuppressedHybridRateLimiter, core_of};
use crate::local::Reservation;
use crate::local::refund::{Refundable, refund_state};
use crate::local::store::KeyStore;
use crate::redis::{RedisKey, StrategyTag};
use crate::window::{Refund, WindowGrid};
use crate::{Error, RateLimit, RateLimitDecision};

impl<S: Refundable<Counts = C>, C: Refund> KeyState<S, C> {
    /// Takes `count` units reserved at `span` (bucket ids on the server's grid) out of the
    /// unsent increments and this instance's own usage; returns how many were not unsent
    /// (already on their way to Redis, or flushed).
    pub(super) fn refund_unsent(
        &mut self,
        grid: &WindowGrid,
        server_now: u64,
        span: (u64, u64),
        count: u64,
    ) -> u64 {
        let left = self.unsent.take_back(span.0, span.1, S::units(count));
        let taken = count - left.accepted();
        // The next cycle refreshes the key: its lease grows by what went back in Redis.
        self.touched = true;
        self.spent = self.spent.saturating_sub(taken);
        self.observed_since = self.observed_since.saturating_sub(taken);
        // This instance's own usage (its outage decisions) counted them all.
        let _ = refund_state(&mut self.own, grid, server_now, span, count);
        left.accepted()
    }
}

/// A refund on `keys`: the unsent part in memory, the rest in Redis.
async fn refund_on<S: Refundable<Counts = C>, C: Refund>(
    limiter: &Option<std::sync::Arc<super::HybridCore>>,
    keys: impl Fn(&super::HybridCore) -> &KeyStore<KeyState<S, C>>,
    tag: StrategyTag,
    key: &RedisKey,
    count: u64,
    at: Reservation,
) -> Result<u64, Error> {
    let core = core_of(limiter)?;
    let grid = core.settings.grid;
    let now = core.now();
    let span = at.buckets(&grid, 0);
    let sent = keys(core)
        .peek(key.as_str(), |state| {
            state.refund_unsent(&grid, now.server, span, count)
        })
        .unwrap_or(count);
    if sent == 0 {
        return Ok(0);
    }
    // Taken for a batch: wait for its cycle, so the batch has landed (or failed) before the
    // refund reaches Redis; sent earlier on the connection, the refund would find nothing
    // and the units would stay counted. No cycle sends while the refund is out.
    let _after_the_batch = core.cycle_lock.read().await;
    // Already sent: the Redis keys hold them, under the bucket ids this instance gave them.
    let left = core.core.refund_buckets(key, tag, sent, span).await?;
    // A cycle may have refreshed the key while the refund was on its way: the next one
    // refreshes it again, after it.
    keys(core).peek(key.as_str(), |state| state.touched = true);
    Ok(left)
}

/// `reserve_sync` and `refund`, the same for both strategies.
macro_rules! refund_methods {
    ($keys:ident, $tag:expr) => {
        /// [`inc_sync`](Self::inc_sync), with the [`Reservation`] a later
        /// [`refund`](Self::refund) of its units needs (counting by outcome).
        ///
        /// # Errors
        /// As [`inc_sync`](Self::inc_sync).
        pub fn reserve_sync(
            &self,
            key: &RedisKey,
            rate: &RateLimit,
            count: u64,
        ) -> Result<(RateLimitDecision, Reservation), Error> {
            let core = core_of(&self.shared)?;
            Reservation::around(|| core.now().server, || self.inc_sync(key, rate, count))
        }

        /// Gives back `count` units that an admitted [`reserve_sync`](Self::reserve_sync)
        /// for `key` recorded; returns how many were not found. Units not yet sent leave
        /// this instance's state with no I/O; units already taken for a batch are given back
        /// in Redis in one script round trip, after that batch's cycle. Units of a batch whose
        /// cycle failed may be missed there (it may land later): they stay counted, which only
        /// makes the limit stricter.
        ///
        /// # Errors
        /// [`Error::Redis`] or [`Error::RedisTimeout`] when units had to be given back in
        /// Redis and it failed; [`Error::RedisNotConfigured`] without Redis.
        pub async fn refund(
            &self,
            key: &RedisKey,
            count: u64,
            reservation: Reservation,
        ) -> Result<u64, Error> {
            refund_on(&self.shared, |c| &c.$keys, $tag, key, count, reservation).await
        }
    };
}

impl AbsoluteHybridRateLimiter {
    refund_methods!(absolute, StrategyTag::Absolute);
}

/// A refund gives the units back as accepted and observed.
impl SuppressedHybridRateLimiter {
    refund_methods!(suppressed, StrategyTag::Suppressed);
}

impl super::HybridRateLimiter {
    /// The clock hybrid reservations are read on: the server grid's (0 without Redis).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn reservation_ms(&self) -> u64 {
        self.shared.as_ref().map_or(0, |c| c.now().server)
    }
}

#[cfg(test)]
mod tests {
    use super::super::AbsoluteKey;
    use super::super::fixtures::{at, call, ctx, geo, view};

    #[test]
    fn a_refund_takes_unsent_units_in_memory_and_reports_those_a_batch_took() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        key.refreshed(0, view(10.0, 0, 1, at(0)));
        for i in 0..3 {
            assert!(key.inc(&c, at(i), call(at(i), 1)).is_allowed());
        }
        let mut seq = 0;
        let job = key.job(5, || {
            seq += 1;
            seq
        });
        assert_eq!(job.buckets[0].counts, 3, "three on their way");
        for i in 5..7 {
            assert!(key.inc(&c, at(i), call(at(i), 1)).is_allowed());
        }
        assert_eq!(key.spent, 5);
        key.touched = false;
        let span = (g.bucket_of(at(0).server), g.bucket_of(at(10).server));
        // Five back: the two unsent leave memory, three are for Redis to find.
        assert_eq!(key.refund_unsent(&g, at(10).server, span, 5), 3);
        assert_eq!(
            key.spent, 3,
            "only what left memory stops spending the lease"
        );
        assert!(key.unsent.is_empty());
        assert!(key.touched, "the next cycle refreshes the key");
        assert_eq!(
            key.own.usage(&g, at(10).server),
            0,
            "its own record gave all back"
        );
        // A lease of 10 with 3 spent: 7 more.
        for i in 0..7 {
            assert!(
                key.inc(&c, at(20), call(at(20), 1)).is_allowed(),
                "unit {i}"
            );
        }
        assert!(!key.inc(&c, at(20), call(at(20), 1)).is_allowed());
    }
}
