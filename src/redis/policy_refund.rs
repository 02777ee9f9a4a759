//! Refunds on Redis limit sets (counting by outcome on a layer of several limits): the units
//! an admitted set call counted, given back in each limit's keys (`prefix:{key}:p:limit:b`
//! and `:h`) by `refund.lua`, the single-limit refund script, pointed at that limit's keys
//! and grid. One round trip per limit given back; each limit's refund is atomic on its own
//! (a refund only lowers counts, so the limits need no common script: the limit holds as it
//! does for one limit, and a refund that fails leaves the units counted, which is only
//! stricter).

use super::RedisPolicy;
use crate::Error;
use crate::Strategy;
use crate::local::Reservation;
use crate::local::refund::masked;
use crate::policy::SetDecision;
use crate::redis::{RedisKey, StrategyTag};
use crate::window::WindowGrid;

/// Which buckets a set refund names: a reservation (how long ago, on the scripts' clock) or
/// bucket ids on the server's grid (the hybrid provider's sends).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Span {
    Reserved(Reservation),
    /// Limit `i`'s bucket ids are found from the reservation on its own grid.
    ServerBuckets(Reservation),
}

impl RedisPolicy {
    /// The clock this policy's reservations are read on.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn reservation_ms(&self) -> u64 {
        self.core.reservation_ms()
    }

    /// [`inc_each`](Self::inc_each), with the [`Reservation`] a later
    /// [`refund_each`](Self::refund_each) of its units needs (counting by outcome).
    ///
    /// # Errors
    /// As [`inc_each`](Self::inc_each).
    pub async fn reserve_each(
        &self,
        keys: &[&RedisKey],
        cost: u64,
    ) -> Result<(SetDecision, Reservation), Error> {
        Reservation::around_async(|| self.core.reservation_ms(), self.inc_each(keys, cost)).await
    }

    /// Gives back, in every limit, the `cost` units an admitted
    /// [`reserve_each`](Self::reserve_each) counted (limit `i` on `keys[i]`): one script
    /// round trip per limit; returns the units not found, summed over the limits.
    ///
    /// # Errors
    /// [`Error::Redis`] or [`Error::RedisTimeout`] when Redis fails (the units of the
    /// limits not yet given back then stay counted); [`Error::InvalidValue`] unless there
    /// is one key per limit.
    pub async fn refund_each(
        &self,
        keys: &[&RedisKey],
        cost: u64,
        reservation: Reservation,
    ) -> Result<u64, Error> {
        let all = (1u16 << self.limits.len()) - 1;
        self.refund_masked(keys, cost, Span::Reserved(reservation), all)
            .await
    }

    /// [`refund_each`](Self::refund_each) in the limits of `mask` only (bit `i`: limit `i`).
    pub(crate) async fn refund_masked(
        &self,
        keys: &[&RedisKey],
        cost: u64,
        span: Span,
        mask: u16,
    ) -> Result<u64, Error> {
        if keys.len() != self.limits.len() {
            return Err(Error::invalid(
                "keys",
                keys.len(),
                "give one key per limit of the set, in the set's order",
            ));
        }
        let mut missing = 0;
        for i in masked(keys.len(), mask) {
            let limit = &self.set.limits()[i];
            missing += refund_limit(
                &self.core,
                keys[i],
                limit.name(),
                &self.limits[i].grid,
                limit.strategy(),
                cost,
                span,
            )
            .await?;
        }
        Ok(missing)
    }
}

/// `cost` units given back in one limit's keys for `key`.
pub(crate) async fn refund_limit(
    core: &super::Core,
    key: &RedisKey,
    name: &str,
    grid: &WindowGrid,
    strategy: Strategy,
    cost: u64,
    span: Span,
) -> Result<u64, Error> {
    let names = core.keys.limit_names(key, name);
    let tag = match strategy {
        Strategy::Absolute => StrategyTag::Absolute,
        Strategy::Suppressed => StrategyTag::Suppressed,
    };
    let (span, kind) = match span {
        Span::Reserved(at) => (core.ago(at), "t"),
        Span::ServerBuckets(at) => (at.buckets(grid, 0), "b"),
    };
    core.refund_names(&names, grid, tag, cost, span, kind).await
}
