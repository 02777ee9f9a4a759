//! One key's hybrid state and its batching: increments not yet sent (a [`Window`] of
//! buckets on the server's grid), the batch in flight until Redis acknowledges it, and the
//! job the committer sends. The decisions on it are in `mode.rs`, `absolute.rs` and
//! `suppressed.rs`; none of them does I/O.

use super::mode::{Now, Refresh, View};
use crate::suppressed::FactorCache;
use crate::window::{Bucket, Counts, Usage, Window, WindowGrid};

/// The most buckets one key sends in one flush (oldest first): after a long outage the rest
/// follow in the next cycles, so no script call carries an unbounded list.
pub(crate) const MAX_BUCKETS_PER_BATCH: usize = 256;

/// A batch sent to Redis and not yet acknowledged: resent as is, same sequence number,
/// until a reply says it landed (once).
#[derive(Debug, Clone)]
pub(crate) struct Batch<C> {
    pub(crate) seq: u64,
    pub(crate) buckets: Vec<Bucket<C>>,
}

/// What the committer sends for one key.
#[derive(Debug, Clone)]
pub(crate) struct Job<C> {
    /// 0 when there is nothing to flush.
    pub(crate) seq: u64,
    pub(crate) buckets: Vec<Bucket<C>>,
    pub(crate) rate: f64,
    pub(crate) cap: f64,
    pub(crate) wanted: u64,
    /// What this instance may still admit on its current lease (or provisional allowance):
    /// it may spend that while the refresh is in flight, so Redis keeps it reserved.
    pub(crate) held: f64,
}

impl<C: Counts> Job<C> {
    /// The job with both strategies' counts in one type, to send jobs of both together.
    pub(crate) fn into_usage(self) -> Job<Usage> {
        Job {
            seq: self.seq,
            buckets: self
                .buckets
                .into_iter()
                .map(|b| Bucket {
                    id: b.id,
                    counts: Usage {
                        accepted: b.counts.accepted(),
                        observed: b.counts.observed(),
                    },
                })
                .collect(),
            rate: self.rate,
            cap: self.cap,
            wanted: self.wanted,
            held: self.held,
        }
    }
}

/// One key: `S` is the local core's state of this instance's own admissions (for outage
/// decisions), `C` what a bucket counts.
#[derive(Debug)]
pub(crate) struct KeyState<S, C> {
    pub(super) own: S,
    /// Increments not yet sent, on the server's grid.
    pub(super) unsent: Window<C>,
    pub(super) inflight: Option<Batch<C>>,
    pub(super) view: Option<View>,
    /// The key's oldest buckets in Redis at the last refresh, for rejections' waits.
    pub(super) oldest: Vec<Bucket<u64>>,
    /// Accepted units since the view's snapshot (counted against its lease).
    pub(super) spent: u64,
    /// Observed units since the view's snapshot.
    pub(super) observed_since: u64,
    /// The largest count a lease could not fit since the last refresh.
    pub(super) wanted: u64,
    pub(super) rate: f64,
    pub(super) cap: f64,
    /// Decided on since the last refresh.
    pub(super) touched: bool,
    /// Local time since which the key has had no lease (creation, or its lease ran out).
    pub(super) unleased_since: u64,
    pub(super) holders_last: u64,
    /// The suppressed strategy's factor, cached on the server's time.
    pub(super) factor: FactorCache,
}

impl<S, C: Counts> KeyState<S, C> {
    pub(super) fn with_own(own: S, rate: f64, cap: f64, now_local: u64) -> Self {
        KeyState {
            own,
            unsent: Window::default(),
            inflight: None,
            view: None,
            oldest: Vec::new(),
            spent: 0,
            observed_since: 0,
            wanted: 1,
            rate,
            cap,
            touched: true,
            unleased_since: now_local,
            holders_last: 1,
            factor: FactorCache::default(),
        }
    }

    /// Records `counts` decided now, to be sent.
    #[inline]
    pub(super) fn push(&mut self, geo: &WindowGrid, now: Now, counts: C) {
        self.unsent.add(geo, now.server, counts);
        self.spent += counts.accepted();
        self.observed_since += counts.observed();
    }

    /// Counts what Redis has not acknowledged as spent since the snapshot: the unsent
    /// increments and a batch still in flight (taken after the snapshot the view holds, or
    /// sent by a cycle that failed: it may land at any time, or have landed). Forgetting the
    /// batch when a lease runs out before its reply would let the provisional allowance
    /// admit it again.
    pub(super) fn respend_unacknowledged(&mut self) {
        let mut accepted = self.unsent.total().accepted();
        let mut observed = self.unsent.total().observed();
        if let Some(batch) = &self.inflight {
            for bucket in &batch.buckets {
                accepted += bucket.counts.accepted();
                observed += bucket.counts.observed();
            }
        }
        self.spent = accepted;
        self.observed_since = observed;
    }

    /// Whether the committer has anything to do for this key.
    pub(crate) fn is_dirty(&self) -> bool {
        self.touched || !self.unsent.is_empty() || self.inflight.is_some()
    }

    /// Unsent and in-flight buckets held in memory.
    pub(crate) fn held_buckets(&self) -> usize {
        self.unsent.len() + self.inflight.as_ref().map_or(0, |b| b.buckets.len())
    }

    /// Drops held buckets that no longer count at `server_now`; returns their accepted units.
    pub(crate) fn drop_expired(&mut self, geo: &WindowGrid, server_now: u64) -> u64 {
        let mut dropped = self.unsent.expire_counting(geo, server_now).accepted();
        if let Some(batch) = self.inflight.as_mut() {
            let live = geo.oldest_live(server_now);
            batch.buckets.retain(|b| {
                let keep = b.id >= live;
                if !keep {
                    dropped += b.counts.accepted();
                }
                keep
            });
        }
        dropped
    }

    /// Drops the oldest held bucket (the memory bound); returns its accepted units.
    pub(crate) fn drop_oldest(&mut self) -> Option<u64> {
        if let Some(batch) = self.inflight.as_mut() {
            if !batch.buckets.is_empty() {
                return Some(batch.buckets.remove(0).counts.accepted());
            }
        }
        self.unsent.pop_oldest().map(|b| b.counts.accepted())
    }

    /// Takes what to send: the unacknowledged batch again, or the unsent buckets under a
    /// new sequence number from `next_seq`.
    pub(crate) fn job(&mut self, now_local: u64, next_seq: impl FnOnce() -> u64) -> Job<C> {
        // Only a lease is reserved: provisional units are the documented bound.
        let allowance = match self.view {
            Some(view) if now_local < view.valid_until => view.lease,
            _ => 0.0,
        };
        let held = (allowance - self.spent as f64).max(0.0);
        if self.inflight.is_none() && !self.unsent.is_empty() {
            self.inflight = Some(Batch {
                seq: next_seq(),
                buckets: self.unsent.take_oldest(MAX_BUCKETS_PER_BATCH),
            });
        }
        self.touched = false;
        let (seq, buckets) = match &self.inflight {
            Some(batch) => (batch.seq, batch.buckets.clone()),
            None => (0, Vec::new()),
        };
        Job {
            seq,
            buckets,
            rate: self.rate,
            cap: self.cap,
            wanted: self.wanted,
            held,
        }
    }

    /// Applies a successful reply to the job with sequence number `seq`.
    pub(crate) fn refreshed(&mut self, seq: u64, mut refresh: Refresh) {
        if self.inflight.as_ref().is_some_and(|b| b.seq == seq) {
            self.inflight = None;
        }
        // What is still unsent was admitted after the snapshot: it spends the new lease (and
        // so does a batch still out, when the reply is to another job: none is applied twice).
        self.respend_unacknowledged();
        self.wanted = 1;
        self.holders_last = refresh.view.holders.max(1);
        self.view = Some(refresh.view);
        std::mem::swap(&mut self.oldest, &mut refresh.oldest);
    }

    /// Whether cleanup may drop the key: nothing unsent, no lease, nothing recent.
    pub(super) fn is_idle(&self, now_local: u64) -> bool {
        !self.touched
            && self.unsent.is_empty()
            && self.inflight.is_none()
            && self.view.is_none_or(|v| now_local >= v.valid_until)
    }
}

#[cfg(test)]
mod tests {
    use super::super::AbsoluteKey;
    use super::super::fixtures::{at, call, ctx, geo, view};

    #[test]
    fn a_lease_is_spent_then_refreshed_and_batches_are_resent_until_acknowledged() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        key.refreshed(0, view(5.0, 0, 1, at(0)));
        for i in 0..5 {
            assert!(key.inc(&c, at(i), call(at(i), 1)).is_allowed(), "call {i}");
        }
        assert!(!key.inc(&c, at(5), call(at(5), 1)).is_allowed());
        let mut seq = 0;
        let first = key.job(6, || {
            seq += 1;
            seq
        });
        assert_eq!((first.seq, first.buckets.len()), (1, 1));
        assert_eq!(first.buckets[0].counts, 5);
        assert_eq!(first.held, 0.0, "the lease is spent: nothing to hold");
        // No reply: the same batch goes again, new increments wait.
        key.refreshed(99, view(0.0, 0, 1, at(6))); // a reply to something else
        assert!(key.inflight.is_some());
        let again = key.job(7, || {
            unreachable!("no new sequence number while one is out")
        });
        assert_eq!((again.seq, again.buckets[0].counts), (1, 5));
        key.refreshed(1, view(3.0, 5, 1, at(7)));
        assert!(key.inflight.is_none());
        assert_eq!(key.spent, 0);
        for i in 0..3 {
            assert!(key.inc(&c, at(8 + i), call(at(8 + i), 1)).is_allowed());
        }
        assert!(!key.inc(&c, at(12), call(at(12), 1)).is_allowed());
    }

    #[test]
    fn held_buckets_out_of_the_window_or_over_the_bound_are_dropped_and_counted() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        let mut refresh = view(50.0, 0, 1, at(0));
        refresh.view.valid_until = u64::MAX;
        key.refreshed(0, refresh);
        for t in [0, 100, 200, 300] {
            assert!(key.inc(&c, at(t), call(at(t), 2)).is_allowed());
        }
        assert_eq!(key.held_buckets(), 4);
        assert_eq!(key.drop_oldest(), Some(2));
        // At +10.2 s the buckets of 100 and 200 ms have left the window (expire at +10.2 s
        // and +10.3 s); only the one of 300 ms is left.
        assert_eq!(key.drop_expired(&g, at(10_300).server), 4);
        assert_eq!(key.held_buckets(), 1);
    }
}
