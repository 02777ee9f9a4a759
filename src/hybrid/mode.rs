//! The mode machine a hybrid decision goes through, and the lease arithmetic.
//!
//! - **lease**: the last refresh (younger than the lease time to live) granted this instance
//!   a lease of units; a call is admitted outright while the units spent since that refresh
//!   plus the call fit the lease. Past it, the absolute strategy rejects (with the wait the
//!   refresh computed) and the suppressed one sheds with the key's global factor.
//! - **provisional**: no valid view yet (a new or long idle key) while Redis answers: the
//!   absolute strategy admits at the key's rate (`rate × (time waited + sync interval)`, at
//!   least one unit) until the first refresh, counting against it every unit Redis has not
//!   acknowledged (unsent, or in a batch whose reply is late: a lease that runs out before
//!   that reply never admits the batch's units again); the suppressed one decides as in an
//!   outage.
//! - **outage**: no valid view and the last flush failed: the local core decides on this
//!   instance's own usage against `1 / N` of the capacity, `N` the lease holders last seen.

use super::key::KeyState;
use crate::absolute::AbsoluteState;
use crate::config::capacity;
use crate::settings::SuppressionParams;
use crate::suppressed::SuppressedState;
use crate::window::{self, Bucket, Counts, Usage, WindowGrid};

/// This instance's own record of what it admitted (and observed) in the window: the local
/// core's state every hybrid decision also records into.
pub(crate) trait OwnRecord {
    /// Units of this instance still inside the window at `now_ms`, as the flush script's
    /// reply counts them: accepted, and observed where the reply reports observed usage.
    fn own_usage(&mut self, grid: &WindowGrid, now_ms: u64) -> Usage;
}

impl OwnRecord for AbsoluteState {
    /// Observed 0: an absolute key's reply reports no observed usage (`hybrid.lua` returns
    /// 0), so counting the accepted units as observed made every refresh of an absolute
    /// key with acknowledged units look like lost data.
    fn own_usage(&mut self, grid: &WindowGrid, now_ms: u64) -> Usage {
        Usage {
            accepted: self.usage(grid, now_ms),
            observed: 0,
        }
    }
}

impl OwnRecord for SuppressedState {
    fn own_usage(&mut self, grid: &WindowGrid, now_ms: u64) -> Usage {
        self.usage(grid, now_ms)
    }
}

impl<S: OwnRecord, C: Counts> KeyState<S, C> {
    /// Lost Redis data (`FLUSHALL`, a failover that lost writes, an evicted key): Redis
    /// reports less usage than this instance alone admitted in the window and Redis
    /// acknowledged. The view then counts this instance's own record instead, so what it
    /// admitted is never admitted again; returns whether Redis had lost some.
    ///
    /// Acknowledged = own record minus what is still unsent (the reply's batch was
    /// applied by the very script that computed `view.used`).
    pub(crate) fn floor_to_own(&mut self, grid: &WindowGrid, view: &mut View) -> bool {
        let own = self.own.own_usage(grid, view.at);
        let unsent = self.unsent.total();
        let accepted = own.accepted.saturating_sub(unsent.accepted());
        let observed = own.observed.saturating_sub(unsent.observed());
        let lost = view.used < accepted || view.observed < observed;
        if lost {
            view.used = view.used.max(accepted);
            view.observed = view.observed.max(observed);
            // The lease Redis computed counted none of it.
            view.lease = view.lease.min((view.cap - view.used as f64).max(0.0));
        }
        lost
    }
}

/// What the last refresh said about a key, from Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    /// Units this instance may admit outright until its next refresh.
    pub(crate) lease: f64,
    /// Accepted usage in Redis at the refresh.
    pub(crate) used: u64,
    /// Instances holding a live lease on the key, this one included.
    pub(crate) holders: u64,
    /// The capacity the lease was computed for (the rate of the key's latest call then).
    pub(crate) cap: f64,
    /// Observed usage in Redis (suppressed strategy).
    pub(crate) observed: u64,
    /// Observed usage in Redis in the buckets overlapping the last second before `at`.
    pub(crate) recent: u64,
    /// The server's time of the refresh.
    pub(crate) at: u64,
    /// Local time until which the lease holds (its Redis entry outlives it).
    pub(crate) valid_until: u64,
}

/// The refresh part of a reply.
#[derive(Debug, Clone)]
pub(crate) struct Refresh {
    pub(crate) view: View,
    /// The key's oldest buckets in Redis, oldest first (absolute, past half capacity).
    pub(crate) oldest: Vec<Bucket<u64>>,
}

/// "Now" on both clocks: the limiter's for validity, the server's grid for bucket ids.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) local: u64,
    pub(crate) server: u64,
}

/// The provider's settings and Redis's health, as one decision sees them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conditions<'a> {
    pub(crate) grid: &'a WindowGrid,
    pub(crate) params: &'a SuppressionParams,
    pub(crate) sync_ms: u64,
    /// Whether the last flush reached Redis.
    pub(crate) healthy: bool,
}

impl Conditions<'_> {
    /// Units a key may admit before its first refresh, `elapsed_ms` after it started
    /// waiting for one: its rate over that time plus one sync interval, at least one unit,
    /// at most its capacity. A refresh that is late (a busy runtime) does not turn a key
    /// under its rate away.
    pub(super) fn provisional(&self, cap: f64, elapsed_ms: u64) -> f64 {
        let span_ms = elapsed_ms.saturating_add(self.sync_ms) as f64;
        (cap * span_ms / (self.grid.window_seconds() * 1000) as f64)
            .min(cap)
            .max(1.0)
    }
}

/// Which of the three modes decides a call.
pub(super) enum Mode {
    Lease(View),
    Provisional,
    /// Redis away: decide on `1 / holders` of the capacity.
    Outage(u64),
}

impl<S, C: Counts> KeyState<S, C> {
    /// The mode now; a lease that ran out in Redis too is dropped here.
    pub(super) fn mode(&mut self, c: &Conditions<'_>, now: Now) -> Mode {
        if let Some(view) = self.view {
            if now.local < view.valid_until {
                return Mode::Lease(view);
            }
            if c.healthy && !capacity::fits_more(view.used, 1, self.cap) {
                if let Some(wait) = self.wait(c, now, 1) {
                    if wait.0 > 0 {
                        // The lease ran out but the key was full when last seen and still
                        // is: nothing to grant until the next refresh says otherwise.
                        return Mode::Lease(View { lease: 0.0, ..view });
                    }
                }
            }
            // The lease ran out in Redis too: what Redis has not acknowledged (unsent, or in a
            // batch whose reply is late) is what the provisional allowance counts.
            self.view = None;
            self.unleased_since = now.local;
            self.respend_unacknowledged();
        }
        if c.healthy {
            Mode::Provisional
        } else {
            Mode::Outage(self.holders_last.max(1))
        }
    }

    /// Whether `count` more units fit the provisional allowance before the first refresh.
    pub(super) fn provisional_fits(
        &self,
        c: &Conditions<'_>,
        now: Now,
        count: u64,
        cap: f64,
    ) -> bool {
        let elapsed = now.local.saturating_sub(self.unleased_since);
        capacity::fits_more(self.spent, count, c.provisional(cap, elapsed))
    }

    /// Units of the key's oldest buckets (as Redis sent them) that stopped counting since.
    pub(super) fn freed(&self, c: &Conditions<'_>, now: Now) -> u64 {
        window::expired_total(c.grid, now.server, &self.oldest)
    }

    /// Whether `count` more units fit the lease and the call's capacity `cap`, on what this
    /// instance knows. Capacity that appeared since the refresh (buckets that expired, a
    /// higher rate) is shared as the lease was: this instance takes `1 / holders` of it.
    pub(super) fn lease_fits(
        &self,
        c: &Conditions<'_>,
        now: Now,
        view: &View,
        count: u64,
        cap: f64,
    ) -> bool {
        if capacity::fits_more(self.spent, count, view.lease)
            && capacity::fits_more(view.used + self.spent, count, cap)
        {
            return true;
        }
        let freed = self.freed(c, now);
        let extra = (cap - view.cap).max(0.0) + freed as f64;
        extra > 0.0
            && capacity::fits_more(self.spent, count, view.lease + extra / view.holders as f64)
            && capacity::fits_more(view.used.saturating_sub(freed) + self.spent, count, cap)
    }

    /// How long until `count` more units fit the key's capacity, and the usage left then,
    /// from its oldest buckets in Redis (expired ones count as gone now); `None` if the
    /// buckets known do not free enough.
    pub(super) fn wait(&self, c: &Conditions<'_>, now: Now, count: u64) -> Option<(u64, u64)> {
        let view = self.view?;
        window::release_until(
            c.grid,
            now.server,
            view.used + self.spent,
            &self.oldest,
            |left| capacity::fits_more(left, count, self.cap),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{at, call, ctx, geo, view};
    use super::super::{AbsoluteKey, SuppressedKey};

    #[test]
    fn a_view_short_of_what_this_instance_admitted_counts_its_own_record() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        key.refreshed(0, view(50.0, 0, 1, at(0)));
        for i in 0..30 {
            assert!(key.inc(&c, at(i), call(at(i), 1)).is_allowed());
        }
        let mut seq = 0;
        let job = key.job(40, || {
            seq += 1;
            seq
        });
        // Two more admitted while the batch is out: unsent, so not in Redis yet.
        assert!(key.inc(&c, at(41), call(at(41), 1)).is_allowed());
        assert!(key.inc(&c, at(42), call(at(42), 1)).is_allowed());
        // Redis answers as if it had applied the batch (30), observed 0 as the script
        // reports for an absolute key ...
        let absolute = |lease, used, now| {
            let mut v = view(lease, used, 1, now).view;
            v.observed = 0;
            v
        };
        let mut honest = absolute(60.0, 30, at(50));
        assert!(!key.floor_to_own(&g, &mut honest));
        assert_eq!((honest.used, honest.lease), (30, 60.0));
        // ... or after a FLUSHALL: 0 used, a fresh lease. The instance counts its 30.
        let mut lost = absolute(100.0, 0, at(50));
        assert!(key.floor_to_own(&g, &mut lost));
        assert_eq!(lost.used, 30);
        assert_eq!(
            lost.observed, 0,
            "nothing observed to floor on an absolute key"
        );
        assert_eq!(lost.lease, 70.0, "capacity 100 less the 30 Redis lost");
        // A lease already below what is left stays as it was.
        let mut small = absolute(10.0, 0, at(50));
        assert!(key.floor_to_own(&g, &mut small));
        assert_eq!((small.used, small.lease), (30, 10.0));
        // Once the window has passed, nothing of it counts any more.
        let mut later = absolute(100.0, 0, at(10_200));
        assert!(!key.floor_to_own(&g, &mut later));
        assert_eq!(later.used, 0);
        assert_eq!(job.seq, 1);
    }

    #[test]
    fn the_suppressed_floor_covers_observed_units_too() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = SuppressedKey::new(10.0, 100.0, 0);
        key.refreshed(0, view(200.0, 0, 1, at(0)));
        for i in 0..20 {
            key.inc(&c, at(i), call(at(i), 5), || 0.5);
        }
        let mut seq = 0;
        key.job(30, || {
            seq += 1;
            seq
        });
        let mut lost = view(100.0, 0, 1, at(40)).view;
        lost.observed = 0;
        assert!(key.floor_to_own(&g, &mut lost));
        assert_eq!(lost.observed, 100, "20 calls of 5 observed");
        assert_eq!(lost.used, 100, "all 100 accepted: within capacity");
        // Redis observed more (other instances): no loss, kept.
        let mut more = view(100.0, 100, 1, at(40)).view;
        more.observed = 500;
        assert!(!key.floor_to_own(&g, &mut more));
        assert_eq!(more.observed, 500);
    }
}
