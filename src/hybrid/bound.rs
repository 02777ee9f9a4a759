//! The memory bound on what the hybrid provider holds for Redis: held buckets that left
//! the window are dropped every cycle, and past `max_pending_buckets` the oldest go too,
//! one from each key in turn. Both are counted in the stats.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use super::core::HybridCore;
use super::walk::{for_each, try_for_each};

impl HybridCore {
    /// Drops what no longer counts at `server_now` and enforces the bound; records the
    /// units dropped and the buckets still held.
    pub(super) fn bound_held(&self, server_now: u64) {
        let grid = self.settings.grid;
        let (mut held, mut expired) = (0usize, 0u64);
        for_each(&self.absolute, |_, state| {
            expired += state.drop_expired(&grid, server_now);
            held += state.held_buckets();
        });
        for_each(&self.suppressed, |_, state| {
            expired += state.drop_expired(&grid, server_now);
            held += state.held_buckets();
        });
        if held > self.max_pending_buckets {
            let dropped = self.enforce_bound(held);
            held -= dropped.0;
            self.stats
                .units_dropped
                .fetch_add(dropped.1, Ordering::Relaxed);
            tracing::warn!(
                buckets = dropped.0,
                units = dropped.1,
                bound = self.max_pending_buckets,
                "sluicegate hybrid: pending increments over the memory bound; oldest dropped"
            );
        }
        self.stats
            .units_expired
            .fetch_add(expired, Ordering::Relaxed);
        self.stats
            .pending_buckets
            .store(held as u64, Ordering::Relaxed);
    }

    /// Drops the oldest held buckets until the bound holds; (buckets, units) dropped.
    fn enforce_bound(&self, mut held: usize) -> (usize, u64) {
        let (mut buckets, mut units) = (0usize, 0u64);
        while held > self.max_pending_buckets {
            let before = buckets;
            let bound = self.max_pending_buckets;
            // One bucket from each key in turn, stopping as soon as the bound holds.
            let mut drop_one = |dropped: Option<u64>| {
                if let Some(u) = dropped {
                    (held, buckets, units) = (held - 1, buckets + 1, units + u);
                }
                if held > bound {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            };
            if try_for_each(&self.absolute, |_, state| drop_one(state.drop_oldest())).is_continue()
            {
                let _ = try_for_each(&self.suppressed, |_, state| drop_one(state.drop_oldest()));
            }
            if buckets == before {
                break;
            }
        }
        (buckets, units)
    }
}
