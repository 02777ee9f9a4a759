//! Refunds on local limit sets (counting by outcome on a layer of several limits): units an
//! admitted set call counted, given back in each limit's window of the call's keys.
//!
//! Each limit gives its units back on its own, from the oldest bucket of the reservation's
//! span that holds any (as a single-limit refund does, `window/refund.rs`): a refund only
//! lowers counts, so the limits need no common lock. The limit still holds under any
//! concurrency: every admitted request holds its units in every limit until its refund, so
//! no window ever admits more counted requests than its quota.

use super::{Keys, LocalPolicy, Set};
use crate::Error;
use crate::local::Reservation;
use crate::local::refund::masked;
use crate::policy::{MAX_LIMITS, SetDecision};
use crate::window::Usage;

/// Every limit of a set.
const ALL_LIMITS: u16 = (1 << MAX_LIMITS) - 1;

impl<const N: usize> Set<N> {
    /// Gives back `cost` units counted at `at` by the limits in `mask` (bit `i`: limit `i`);
    /// returns the units not found, summed over those limits (a key gone, or a bucket out
    /// of its window: they no longer counted).
    pub(super) fn refund_units(
        &self,
        keys: Keys<'_>,
        cost: u64,
        at: Reservation,
        mask: u16,
    ) -> u64 {
        let now = self.clock.now_ms();
        let units = Usage {
            accepted: cost,
            observed: cost,
        };
        let mut missing = 0;
        let chosen = masked(N, mask);
        match keys {
            Keys::One(key) => {
                let found = self.keys.peek(key, |slots| {
                    let mut missing = 0;
                    for i in chosen.clone() {
                        let limit = &self.limits[i];
                        let (from, to) = at.buckets(&limit.geo, 0);
                        let window = &mut slots.0[i];
                        window.expire(&limit.geo, now);
                        missing += window.take_back(from, to, units).accepted;
                    }
                    missing
                });
                missing += found.unwrap_or_else(|| cost * chosen.count() as u64);
            }
            Keys::Each(keys) => {
                for i in chosen {
                    let limit = &self.limits[i];
                    let (from, to) = at.buckets(&limit.geo, 0);
                    missing += self
                        .keys
                        .peek(keys[i], |slots| {
                            let window = &mut slots.0[i];
                            window.expire(&limit.geo, now);
                            window.take_back(from, to, units).accepted
                        })
                        .unwrap_or(cost);
                }
            }
        }
        missing
    }
}

impl LocalPolicy {
    /// [`inc`](Self::inc), with the [`Reservation`] a later [`refund`](Self::refund) of
    /// its units needs (counting by outcome: reserve before the work, give the units back
    /// if its outcome is not to count).
    ///
    /// # Errors
    /// As [`inc`](Self::inc).
    pub fn reserve(&self, key: &str, cost: u64) -> Result<(SetDecision, Reservation), Error> {
        Reservation::around(|| self.inner.now_ms(), || self.inc(key, cost))
    }

    /// [`inc_each`](Self::inc_each), with the [`Reservation`] a later
    /// [`refund_each`](Self::refund_each) needs.
    ///
    /// # Errors
    /// As [`inc_each`](Self::inc_each).
    pub fn reserve_each(
        &self,
        keys: &[&str],
        cost: u64,
    ) -> Result<(SetDecision, Reservation), Error> {
        Reservation::around(|| self.inner.now_ms(), || self.inc_each(keys, cost))
    }

    /// Gives back, in every limit, the `cost` units an admitted [`reserve`](Self::reserve)
    /// for `key` counted; returns the units not found, summed over the limits (they no
    /// longer counted). Refund only admitted calls: a refused one counted nothing.
    pub fn refund(&self, key: &str, cost: u64, reservation: Reservation) -> u64 {
        self.inner
            .refund(Keys::One(key), cost, reservation, ALL_LIMITS)
    }

    /// [`refund`](Self::refund) for a [`reserve_each`](Self::reserve_each): limit `i` on
    /// `keys[i]`.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] unless there is one key per limit.
    pub fn refund_each(
        &self,
        keys: &[&str],
        cost: u64,
        reservation: Reservation,
    ) -> Result<u64, Error> {
        self.refund_masked(keys, cost, reservation, ALL_LIMITS)
    }

    /// [`refund_each`](Self::refund_each) in the limits of `mask` only (bit `i`: limit `i`).
    pub(crate) fn refund_masked(
        &self,
        keys: &[&str],
        cost: u64,
        reservation: Reservation,
        mask: u16,
    ) -> Result<u64, Error> {
        if keys.len() != self.inner.set().len() {
            return Err(Error::invalid(
                "keys",
                keys.len(),
                "give one key per limit of the set, in the set's order",
            ));
        }
        Ok(self.inner.refund(Keys::Each(keys), cost, reservation, mask))
    }

    /// The clock this policy's reservations are read on.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
}

/// The engine's side of a refund, for [`Engine`]'s `dyn` calls.
pub(super) fn refund_engine<const N: usize>(
    set: &Set<N>,
    keys: Keys<'_>,
    cost: u64,
    at: Reservation,
    mask: u16,
) -> u64 {
    match keys {
        Keys::Each(each) if each.len() != N => cost,
        keys => set.refund_units(keys, cost, at, mask),
    }
}
