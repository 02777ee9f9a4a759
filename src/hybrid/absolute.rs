//! The absolute strategy on a hybrid key: admit within the lease (or the provisional
//! allowance, or this instance's share in an outage), reject the rest with the wait the
//! key's oldest buckets in Redis give.

use super::key::KeyState;
use super::mode::{Conditions, Mode, Now};
use crate::RateLimitDecision;
use crate::absolute::AbsoluteState;
use crate::call::Call;
use crate::config::capacity;
use crate::window::WindowGrid;

/// How many of a key's oldest buckets the flush script sends at most (`hybrid.lua`).
const OLDEST_SENT: usize = 32;

/// One key under the absolute strategy.
pub(crate) type AbsoluteKey = KeyState<AbsoluteState, u64>;

impl AbsoluteKey {
    pub(crate) fn new(rate: f64, cap: f64, now_local: u64) -> Self {
        Self::with_own(AbsoluteState::new(rate), rate, cap, now_local)
    }

    /// Decides one checked call from local state.
    #[inline]
    pub(crate) fn inc(&mut self, c: &Conditions<'_>, now: Now, call: Call) -> RateLimitDecision {
        // The common case, kept small: a live lease with room, at the refresh's rate or less.
        if let Some(view) = &self.view {
            if now.local < view.valid_until
                && capacity::fits_more(self.spent, call.count, view.lease)
                && capacity::fits_more(view.used + self.spent, call.count, call.cap)
            {
                self.rate = call.rate;
                self.cap = call.cap;
                self.touched = true;
                self.own.record(c.grid, now.server, call.rate, call.count);
                self.push(c.grid, now, call.count);
                return RateLimitDecision::Allowed;
            }
        }
        self.inc_slow(c, now, call)
    }

    #[inline(never)]
    fn inc_slow(&mut self, c: &Conditions<'_>, now: Now, call: Call) -> RateLimitDecision {
        self.rate = call.rate;
        self.cap = call.cap;
        self.touched = true;
        let mode = self.mode(c, now);
        if let Mode::Outage(holders) = mode {
            let share = Call {
                now_ms: now.server,
                cap: call.cap / holders as f64,
                ..call
            };
            let decision = self.own.inc(c.grid, share);
            if decision.is_allowed() {
                self.push(c.grid, now, call.count);
            }
            return decision;
        }
        if self.fits(c, now, &mode, call.count, call.cap) {
            self.admit(c, now, call);
            RateLimitDecision::Allowed
        } else {
            self.wanted = self.wanted.max(call.count);
            self.rejection(c, &mode, now, call.count)
        }
    }

    /// Whether `count` more units fit now at capacity `cap`: within the lease, and within
    /// the call's own capacity on what this instance knows (a lower rate applies at once,
    /// not at the next refresh); the provisional allowance; this instance's share in an
    /// outage.
    fn fits(&mut self, c: &Conditions<'_>, now: Now, mode: &Mode, count: u64, cap: f64) -> bool {
        match mode {
            Mode::Lease(view) => self.lease_fits(c, now, view, count, cap),
            Mode::Provisional => self.provisional_fits(c, now, count, cap),
            Mode::Outage(holders) => capacity::fits_more(
                self.own.usage(c.grid, now.server),
                count,
                cap / *holders as f64,
            ),
        }
    }

    /// Counts an admitted call.
    #[inline]
    pub(crate) fn admit(&mut self, c: &Conditions<'_>, now: Now, call: Call) {
        self.own.record(c.grid, now.server, call.rate, call.count);
        self.push(c.grid, now, call.count);
    }

    /// A limit set's verdict on `call`, recording nothing ([`admit`](Self::admit) counts
    /// it): `Ok` if it fits now, else the wait the rejection of `inc` would give (one sync
    /// interval in an outage, where the share is this instance's guess).
    pub(crate) fn verdict(&mut self, c: &Conditions<'_>, now: Now, call: Call) -> Result<(), u64> {
        self.rate = call.rate;
        self.cap = call.cap;
        self.touched = true;
        let mode = self.mode(c, now);
        if self.fits(c, now, &mode, call.count, call.cap) {
            return Ok(());
        }
        self.wanted = self.wanted.max(call.count);
        Err(self.wait_and_left(c, &mode, now, call.count).0)
    }

    /// Whether one more unit at the latest rate would be admitted now; records nothing.
    pub(crate) fn check(&mut self, c: &Conditions<'_>, now: Now) -> RateLimitDecision {
        let mode = self.mode(c, now);
        if self.fits(c, now, &mode, 1, self.cap) {
            RateLimitDecision::Allowed
        } else {
            self.rejection(c, &mode, now, 1)
        }
    }

    fn rejection(
        &self,
        c: &Conditions<'_>,
        mode: &Mode,
        now: Now,
        count: u64,
    ) -> RateLimitDecision {
        let (retry_after_ms, remaining_after_waiting) = self.wait_and_left(c, mode, now, count);
        RateLimitDecision::Rejected {
            window_size_seconds: c.grid.window_seconds(),
            retry_after_ms,
            remaining_after_waiting,
        }
    }

    /// A rejection's wait and the usage left after it.
    fn wait_and_left(&self, c: &Conditions<'_>, mode: &Mode, now: Now, count: u64) -> (u64, u64) {
        match mode {
            Mode::Lease(view)
                if !capacity::fits_more(
                    view.used.saturating_sub(self.freed(c, now)) + self.spent,
                    count,
                    self.cap,
                ) =>
            {
                match self.wait(c, now, count) {
                    Some((wait, left)) if wait > 0 => (wait, left),
                    // Freed already, by what Redis said: ask again after the next refresh.
                    Some((_, left)) => (c.sync_ms, left),
                    None => match self.oldest.last() {
                        // More buckets than were sent must expire: at least this long.
                        Some(last) if self.oldest.len() >= OLDEST_SENT => (
                            c.grid
                                .expires_at(last.id)
                                .saturating_sub(now.server)
                                .max(c.sync_ms),
                            0,
                        ),
                        _ => (c.sync_ms, view.used + self.spent),
                    },
                }
            }
            // Room left in Redis, held by other instances' leases: ask after the next refresh.
            Mode::Lease(view) => (c.sync_ms, view.used + self.spent),
            _ => (c.sync_ms, self.spent),
        }
    }

    /// Whether cleanup may drop the key.
    pub(crate) fn idle(&mut self, geo: &WindowGrid, now: Now) -> bool {
        self.own.usage(geo, now.server) == 0 && self.is_idle(now.local)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{at, call, ctx, geo, view};
    use super::*;
    use crate::window::Bucket;

    #[test]
    fn a_new_key_admits_its_provisional_units_then_waits_for_a_refresh() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        // max(1, 100 × 10 ms / 10 s) = 1 unit before the first refresh.
        assert!(key.inc(&c, at(0), call(at(0), 1)).is_allowed());
        match key.inc(&c, at(1), call(at(1), 1)) {
            RateLimitDecision::Rejected { retry_after_ms, .. } => assert_eq!(retry_after_ms, 10),
            other => panic!("{other:?}"),
        }
        assert_eq!(key.held_buckets(), 1);
        // A late refresh: the key goes on at its rate, 10/s: rate × (t + 10 ms) reaches two
        // units at t = 190 ms (1.6 at 150 ms).
        assert!(!key.inc(&c, at(150), call(at(150), 1)).is_allowed());
        assert!(key.inc(&c, at(190), call(at(190), 1)).is_allowed());
        assert!(!key.inc(&c, at(200), call(at(200), 1)).is_allowed());
    }

    #[test]
    fn capacity_freed_between_refreshes_is_shared_by_the_holders() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        let mut refresh = view(0.0, 100, 2, at(0));
        // Bucket 9_990 (the server's 999 000 ms) expires at 1 000 100 + 10 000 = local 10 000 - 900.
        refresh.oldest = vec![Bucket {
            id: 9_990,
            counts: 40,
        }];
        refresh.view.valid_until = 1_000_000;
        key.refreshed(0, refresh);
        let expiry_local = g.expires_at(9_990) - 1_000_000;
        match key.inc(&c, at(expiry_local - 1), call(at(expiry_local - 1), 1)) {
            RateLimitDecision::Rejected {
                retry_after_ms,
                remaining_after_waiting,
                ..
            } => assert_eq!((retry_after_ms, remaining_after_waiting), (1, 60)),
            other => panic!("{other:?}"),
        }
        // 40 freed, 2 holders: 20 for this instance.
        let now = at(expiry_local);
        let admitted = (0..30)
            .filter(|_| key.inc(&c, now, call(now, 1)).is_allowed())
            .count();
        assert_eq!(admitted, 20);
    }

    #[test]
    fn without_redis_and_without_a_lease_the_local_core_decides_on_a_share() {
        let g = geo();
        let c = ctx(&g, false);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        // Last seen with 4 holders; the lease ran out (valid until 200).
        key.refreshed(0, view(0.0, 0, 4, at(0)));
        let now = at(500);
        let admitted = (0..100)
            .filter(|_| key.inc(&c, now, call(now, 1)).is_allowed())
            .count();
        assert_eq!(admitted, 25, "a quarter of the capacity");
        assert_eq!(key.held_buckets(), 1, "everything admitted waits for Redis");
    }
}
