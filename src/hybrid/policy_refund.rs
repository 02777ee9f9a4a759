//! Refunds on hybrid limit sets (counting by outcome on a layer of several limits): the units
//! an admitted set call counted, given back in each limit on its own, as the single-limit
//! hybrid refund does (`refund.rs`): units still unsent leave this instance's state (its
//! lease spends them no more), units already sent go back in Redis with `refund.lua` on the
//! limit's set keys (`prefix:{key}:p:limit:b`, `:h`), under the bucket ids this instance
//! gave them. A refund only lowers counts, so the limits need no common lock; every
//! admitted request holds its units in every limit until then, so no limit admits more
//! counted requests than its quota (within the hybrid bound of the module docs).

use super::{HybridPolicy, LimitKey};
use crate::Error;
use crate::local::Reservation;
use crate::local::refund::masked;
use crate::policy::SetDecision;
use crate::redis::{RedisKey, SetRefundSpan, refund_limit};

impl HybridPolicy {
    /// [`inc_each`](Self::inc_each), with the [`Reservation`] a later
    /// [`refund_each`](Self::refund_each) of its units needs (counting by outcome).
    ///
    /// # Errors
    /// As [`inc_each`](Self::inc_each).
    pub fn reserve_each(
        &self,
        keys: &[&RedisKey],
        cost: u64,
    ) -> Result<(SetDecision, Reservation), Error> {
        Reservation::around(|| self.reservation_ms(), || self.inc_each(keys, cost))
    }

    /// The clock this policy's reservations are read on: the server grid's.
    pub(crate) fn reservation_ms(&self) -> u64 {
        self.inner.core.now().server
    }

    /// Gives back, in every limit, the `cost` units an admitted
    /// [`reserve_each`](Self::reserve_each) counted (limit `i` on `keys[i]`); returns the
    /// units not found, summed over the limits. Unsent units go with no I/O; a limit whose
    /// units were already flushed takes one script round trip.
    ///
    /// # Errors
    /// [`Error::Redis`] or [`Error::RedisTimeout`] when units had to be given back in
    /// Redis and it failed (they stay counted there); [`Error::InvalidValue`] unless there
    /// is one key per limit.
    pub async fn refund_each(
        &self,
        keys: &[&RedisKey],
        cost: u64,
        reservation: Reservation,
    ) -> Result<u64, Error> {
        let all = (1u16 << self.inner.limits.len()) - 1;
        self.refund_masked(keys, cost, reservation, all).await
    }

    /// [`refund_each`](Self::refund_each) in the limits of `mask` only (bit `i`: limit `i`).
    pub(crate) async fn refund_masked(
        &self,
        keys: &[&RedisKey],
        cost: u64,
        at: Reservation,
        mask: u16,
    ) -> Result<u64, Error> {
        let engine = &self.inner;
        engine.set.check_keys(keys.len())?;
        let now = engine.core.now();
        // First every limit's unsent units, in memory; then what was sent, in Redis.
        let mut sent = [0u64; crate::policy::MAX_LIMITS];
        for i in masked(engine.limits.len(), mask) {
            let limit = &engine.limits[i];
            let span = at.buckets(&limit.grid, 0);
            sent[i] = limit
                .keys
                .peek(keys[i].as_str(), |state| match state {
                    LimitKey::Absolute(s) => s.refund_unsent(&limit.grid, now.server, span, cost),
                    LimitKey::Suppressed(s) => s.refund_unsent(&limit.grid, now.server, span, cost),
                })
                .unwrap_or(cost);
        }
        if sent.iter().all(|&n| n == 0) {
            return Ok(0);
        }
        // Taken for a batch: after its cycle, as the single-limit refund (`refund.rs`).
        let _after_the_batch = engine.core.cycle_lock.read().await;
        let mut missing = 0;
        for (i, limit) in engine.limits.iter().enumerate() {
            if sent[i] == 0 {
                continue;
            }
            let set_limit = &engine.set.limits()[i];
            missing += refund_limit(
                &engine.core.core,
                keys[i],
                set_limit.name(),
                &limit.grid,
                limit.strategy,
                sent[i],
                SetRefundSpan::ServerBuckets(at),
            )
            .await?;
            // A cycle may have refreshed the key while the refund was on its way: the next
            // one refreshes it again, after it.
            limit.keys.peek(keys[i].as_str(), |state| match state {
                LimitKey::Absolute(s) => s.touched = true,
                LimitKey::Suppressed(s) => s.touched = true,
            });
        }
        Ok(missing)
    }
}
