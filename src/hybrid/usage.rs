//! What an admitted hybrid decision reports of its key (`inc_sync_with_usage`): read from the
//! state it was decided on, so it costs no I/O and no second lookup.

use super::absolute::AbsoluteKey;
use super::key::KeyState;
use super::mode::{Conditions, Now};
use super::suppressed::SuppressedKey;
use crate::redis::KeyUsage;
use crate::window::Counts;

impl<S, C: Counts> KeyState<S, C> {
    /// The key's usage right after a decision, as this instance knows it: with a view,
    /// Redis's accepted usage at the last refresh (less what has expired of its oldest
    /// buckets since) plus what this instance admitted since; without one, what this
    /// instance admitted in the window (`own_accepted`). The reset is the expiry of the
    /// oldest bucket known (Redis's oldest, which the refresh sends for an absolute key past
    /// half its capacity, or this instance's unsent ones), else the whole window, an upper
    /// bound.
    pub(super) fn usage_after(&self, c: &Conditions<'_>, now: Now, own_accepted: u64) -> KeyUsage {
        let used = match &self.view {
            Some(view) => view.used.saturating_sub(self.freed(c, now)) + self.spent,
            None => own_accepted.max(self.spent),
        };
        let live = c.grid.oldest_live(now.server);
        let oldest = self
            .oldest
            .iter()
            .map(|b| b.id)
            .chain(
                self.inflight
                    .iter()
                    .filter_map(|b| b.buckets.first().map(|b| b.id)),
            )
            .chain(self.unsent.buckets().next().map(|b| b.id))
            .filter(|id| *id >= live)
            .min();
        let window_ms = c.grid.window_seconds() * 1000;
        let reset_ms = oldest.map_or(window_ms, |id| {
            c.grid.expires_at(id).saturating_sub(now.server)
        });
        KeyUsage::new(self.cap, used, reset_ms, c.grid.window_seconds())
    }
}

impl AbsoluteKey {
    /// [`usage_after`](KeyState::usage_after) with this instance's own accepted usage.
    pub(super) fn usage_now(&mut self, c: &Conditions<'_>, now: Now) -> KeyUsage {
        let own = self.own.usage(c.grid, now.server);
        self.usage_after(c, now, own)
    }
}

impl SuppressedKey {
    /// [`usage_after`](KeyState::usage_after) with this instance's own accepted usage.
    pub(super) fn usage_now(&mut self, c: &Conditions<'_>, now: Now) -> KeyUsage {
        let own = self.own.usage(c.grid, now.server).accepted;
        self.usage_after(c, now, own)
    }
}

#[cfg(test)]
mod tests {
    use super::super::AbsoluteKey;
    use super::super::SuppressedKey;
    use super::super::fixtures::{at, call, ctx, geo, view};

    #[test]
    fn usage_is_redis_at_the_refresh_plus_what_was_admitted_since() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        key.refreshed(0, view(50.0, 30, 2, at(0)));
        assert!(key.inc(&c, at(10), call(at(10), 4)).is_allowed());
        let usage = key.usage_after(&c, at(10), 4);
        assert_eq!((usage.used, usage.remaining), (34, 66));
        // The newest bucket leaves the window up to a group after the window: capped.
        assert_eq!(usage.reset_ms, 10_000);
        assert!(key.inc(&c, at(150), call(at(150), 1)).is_allowed());
        // The oldest bucket known is the unsent one of t = 10 (server bucket 10 000): it
        // leaves the window at 1 000 100 + 10 000.
        let usage = key.usage_after(&c, at(150), 5);
        assert_eq!((usage.used, usage.reset_ms), (35, 1_010_100 - 1_000_150));
    }

    #[test]
    fn without_a_view_usage_is_this_instances_own() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = SuppressedKey::new(10.0, 100.0, 0);
        assert!(key.inc(&c, at(0), call(at(0), 1), || 0.5).is_allowed());
        let usage = key.usage_after(&c, at(0), 1);
        assert_eq!((usage.used, usage.remaining), (1, 99));
        // Nothing known at all: the whole window.
        let fresh = AbsoluteKey::new(10.0, 100.0, 0);
        assert_eq!(fresh.usage_after(&c, at(0), 0).reset_ms, 10_000);
    }
}
