//! The sliding window, written once for every in-process provider (the Lua scripts mirror it).
//!
//! Time is cut into grid-aligned groups of `g` ms: an increment at `t` lands in bucket
//! `floor(t / g)`, whatever process makes it, so a hybrid flush lands in the bucket Redis
//! would have used. Bucket `b` covers `[b·g, (b+1)·g)` and counts while any part of it is
//! inside the last `W` ms: it is live at `t` iff `(b+1)·g + W > t`. Every increment therefore
//! counts for at least `W` and at most `W + g` ms, so no interval of `W` ms ever holds more
//! than what the window admitted.
//!
//! Work per call is bounded by the number of live buckets, at most `W/g + 1`, and amortised
//! O(1): each bucket is pushed once and popped once.

use std::collections::VecDeque;

use crate::Error;
use crate::config::{RateGroupSizeMs, WindowSizeSeconds};

/// Window and group sizes in milliseconds, checked against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowGrid {
    window_ms: u64,
    group_ms: u64,
}

impl WindowGrid {
    /// Checks that a group is no wider than the window.
    pub(crate) fn new(window: WindowSizeSeconds, group: RateGroupSizeMs) -> Result<Self, Error> {
        let window_ms = window.get() * 1000;
        if group.get() > window_ms {
            return Err(Error::invalid(
                "RateGroupSizeMs",
                group.get(),
                "must not exceed the window (window_size_seconds × 1000 ms)",
            ));
        }
        Ok(WindowGrid {
            window_ms,
            group_ms: group.get(),
        })
    }

    pub(crate) fn window_seconds(&self) -> u64 {
        self.window_ms / 1000
    }

    pub(crate) fn group_ms(&self) -> u64 {
        self.group_ms
    }

    #[inline]
    pub(crate) fn bucket_of(&self, now_ms: u64) -> u64 {
        now_ms / self.group_ms
    }

    /// The oldest bucket still live at `now_ms`.
    #[inline]
    pub(crate) fn oldest_live(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.window_ms) / self.group_ms
    }

    /// The first instant after bucket `id`: `now_ms < end_of(id)` iff `bucket_of(now_ms) <= id`.
    #[inline]
    pub(crate) fn end_of(&self, id: u64) -> u64 {
        (id + 1) * self.group_ms
    }

    /// The first instant at which bucket `id` no longer counts: `now_ms < expires_at(id)` iff
    /// `id >= oldest_live(now_ms)`.
    #[inline]
    pub(crate) fn expires_at(&self, id: u64) -> u64 {
        self.end_of(id) + self.window_ms
    }
}

#[cfg(test)]
impl WindowGrid {
    /// A grid of `window_s` seconds and `group_ms` groups, for tests.
    pub(crate) fn for_tests(window_s: u64, group_ms: u64) -> Self {
        WindowGrid::new(
            WindowSizeSeconds::try_from(window_s).unwrap(),
            RateGroupSizeMs::try_from(group_ms).unwrap(),
        )
        .unwrap()
    }
}

/// What a bucket counts: `u64` (admitted units) for the absolute strategy, [`Usage`] for
/// the suppressed one.
pub(crate) trait Counts: Copy + Default + PartialEq {
    fn add(&mut self, other: Self);
    /// Takes `other` away, stopping at zero (a count from Redis may exceed what is left).
    fn sub(&mut self, other: Self);
    /// The accepted units.
    #[cfg_attr(not(feature = "redis-tokio"), allow(dead_code))]
    fn accepted(&self) -> u64;
    /// All offered units (the absolute strategy counts only what it accepts).
    #[cfg_attr(not(feature = "redis-tokio"), allow(dead_code))]
    fn observed(&self) -> u64;
    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl Counts for u64 {
    #[inline]
    fn add(&mut self, other: Self) {
        *self += other;
    }
    #[inline]
    fn sub(&mut self, other: Self) {
        *self = self.saturating_sub(other);
    }
    #[inline]
    fn accepted(&self) -> u64 {
        *self
    }
    #[inline]
    fn observed(&self) -> u64 {
        *self
    }
}

/// The suppressed strategy's counts: accepted units and all offered (observed) units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) accepted: u64,
    pub(crate) observed: u64,
}

impl Counts for Usage {
    #[inline]
    fn add(&mut self, other: Self) {
        self.accepted += other.accepted;
        self.observed += other.observed;
    }
    #[inline]
    fn sub(&mut self, other: Self) {
        self.accepted = self.accepted.saturating_sub(other.accepted);
        self.observed = self.observed.saturating_sub(other.observed);
    }
    #[inline]
    fn accepted(&self) -> u64 {
        self.accepted
    }
    #[inline]
    fn observed(&self) -> u64 {
        self.observed
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bucket<C> {
    pub(crate) id: u64,
    pub(crate) counts: C,
}

/// One key's live buckets and their running total.
///
/// The newest bucket lives inline and older ones, with their sum, in a box that exists only
/// while there are any, so an idle key costs no allocation beyond its map entry, and its
/// entry holds one bucket and one pointer (the sum of a lone bucket is the bucket).
#[derive(Debug, Clone, Default)]
pub(crate) struct Window<C> {
    /// Zero counts means the window is empty (an increment is never zero).
    newest: Bucket<C>,
    /// `None` when there is no bucket but the newest. Boxed on purpose: 8 bytes in every
    /// idle key's entry instead of the older buckets and their sum.
    older: Option<Box<Older<C>>>,
}

/// How many older buckets the box holds in itself before it moves them to a deque.
///
/// A key called every second or so over a 10 s window keeps about six: with them in the
/// box, beside their sum, a call that opens a bucket (and expires one) works on one
/// allocation of 128 bytes (absolute) instead of the box and both ends of a deque's buffer.
const RING: usize = 6;

/// The buckets before the newest, oldest first: never empty while it exists.
///
/// Not aligned to a cache line: `repr(align(64))` made a call touch more lines, not fewer
/// (cachegrind, 200k keys in steady state), as the allocator pads each such box.
#[derive(Debug, Clone)]
enum Older<C> {
    /// Up to [`RING`] buckets in a ring in the box itself.
    Ring {
        total: C,
        /// The oldest bucket's slot.
        head: u8,
        /// Buckets held, 1 to [`RING`].
        len: u8,
        slots: [Bucket<C>; RING],
    },
    /// More than [`RING`] buckets (a key called often): a deque. Stays one until the window
    /// holds no older bucket, so a key at the boundary does not move back and forth.
    Deque {
        buckets: VecDeque<Bucket<C>>,
        total: C,
        /// The front bucket's id, beside the sum: the expiry test on every call then reads
        /// this box's line and not also the deque's buffer.
        oldest: u64,
    },
}

impl<C: Counts> Older<C> {
    fn with(first: Bucket<C>) -> Self {
        let mut slots = [Bucket::default(); RING];
        slots[0] = first;
        Older::Ring {
            total: first.counts,
            head: 0,
            len: 1,
            slots,
        }
    }

    #[inline]
    fn total(&self) -> C {
        match self {
            Older::Ring { total, .. } | Older::Deque { total, .. } => *total,
        }
    }

    #[inline]
    fn oldest(&self) -> u64 {
        match self {
            Older::Ring { head, slots, .. } => slots[usize::from(*head)].id,
            Older::Deque { oldest, .. } => *oldest,
        }
    }

    fn len(&self) -> usize {
        match self {
            Older::Ring { len, .. } => usize::from(*len),
            Older::Deque { buckets, .. } => buckets.len(),
        }
    }

    /// The buckets, oldest first, as two runs.
    fn as_slices(&self) -> (&[Bucket<C>], &[Bucket<C>]) {
        match self {
            Older::Ring {
                head, len, slots, ..
            } => {
                let (head, len) = (usize::from(*head), usize::from(*len));
                if head + len <= RING {
                    (&slots[head..head + len], &[])
                } else {
                    (&slots[head..], &slots[..head + len - RING])
                }
            }
            Older::Deque { buckets, .. } => buckets.as_slices(),
        }
    }

    #[inline]
    fn push_back(&mut self, bucket: Bucket<C>) {
        match self {
            Older::Ring {
                total,
                head,
                len,
                slots,
            } if usize::from(*len) < RING => {
                let mut at = usize::from(*head) + usize::from(*len);
                if at >= RING {
                    at -= RING;
                }
                slots[at] = bucket;
                *len += 1;
                total.add(bucket.counts);
            }
            Older::Ring { .. } => self.spill(bucket),
            Older::Deque { buckets, total, .. } => {
                buckets.push_back(bucket);
                total.add(bucket.counts);
            }
        }
    }

    /// A full ring and one more bucket: into a deque.
    #[cold]
    fn spill(&mut self, bucket: Bucket<C>) {
        let (a, b) = self.as_slices();
        let mut buckets = VecDeque::with_capacity(2 * RING + 2);
        buckets.extend(a.iter().chain(b).copied());
        buckets.push_back(bucket);
        let mut total = self.total();
        total.add(bucket.counts);
        let oldest = buckets[0].id;
        *self = Older::Deque {
            buckets,
            total,
            oldest,
        };
    }

    /// Takes the oldest bucket out; `None` if it was the last (the box is then to be dropped).
    #[inline]
    fn pop_front(&mut self) -> (Bucket<C>, bool) {
        match self {
            Older::Ring {
                total,
                head,
                len,
                slots,
            } => {
                let front = slots[usize::from(*head)];
                total.sub(front.counts);
                *head = if usize::from(*head) + 1 == RING {
                    0
                } else {
                    *head + 1
                };
                *len -= 1;
                (front, *len > 0)
            }
            Older::Deque {
                buckets,
                total,
                oldest,
            } => {
                let front = buckets.pop_front().expect("an older deque is never empty");
                total.sub(front.counts);
                match buckets.front() {
                    Some(next) => {
                        *oldest = next.id;
                        (front, true)
                    }
                    None => (front, false),
                }
            }
        }
    }
}

impl<C: Counts> Window<C> {
    /// The sum of every live bucket.
    #[inline]
    pub(crate) fn total(&self) -> C {
        let mut total = self.newest.counts;
        if let Some(older) = &self.older {
            total.add(older.total());
        }
        total
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.newest.counts.is_zero()
    }

    /// The oldest live bucket's id (what [`buckets`](Self::buckets) yields first), without
    /// walking; `None` when the window is empty. Limit sets read it for their `reset_ms`.
    #[inline]
    pub(crate) fn oldest(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.oldest_id())
    }

    /// Drops the buckets that no longer count at `now_ms`.
    #[inline]
    pub(crate) fn expire(&mut self, geo: &WindowGrid, now_ms: u64) {
        // The same test as `oldest_id >= oldest_live(now)`, with a multiply for the divide.
        if self.is_empty() || now_ms < geo.expires_at(self.oldest_id()) {
            return;
        }
        self.expire_slow(geo.oldest_live(now_ms));
    }

    #[inline]
    fn oldest_id(&self) -> u64 {
        match self.older.as_deref() {
            Some(o) => o.oldest(),
            None => self.newest.id,
        }
    }

    #[inline]
    fn expire_slow(&mut self, oldest_live: u64) {
        if let Some(older) = self.older.as_deref_mut() {
            loop {
                if older.oldest() >= oldest_live {
                    return;
                }
                if !older.pop_front().1 {
                    break;
                }
            }
            self.older = None;
        }
        if self.newest.id < oldest_live {
            self.newest = Bucket::default();
        }
    }

    /// Records `counts` at `now_ms`. A time behind the newest bucket (a clock that stepped
    /// back) counts in the newest bucket, which expires later: never earlier than it should.
    #[inline]
    pub(crate) fn add(&mut self, geo: &WindowGrid, now_ms: u64, counts: C) {
        debug_assert!(!counts.is_zero());
        if self.is_empty() {
            self.newest = Bucket {
                id: geo.bucket_of(now_ms),
                counts,
            };
        } else if now_ms < geo.end_of(self.newest.id) {
            // `bucket_of(now_ms) <= newest.id` without the divide: the common case.
            self.newest.counts.add(counts);
        } else {
            let id = geo.bucket_of(now_ms);
            let previous = std::mem::replace(&mut self.newest, Bucket { id, counts });
            match self.older.as_deref_mut() {
                Some(older) => older.push_back(previous),
                None => self.older = Some(Box::new(Older::with(previous))),
            }
        }
    }

    /// Live buckets, oldest first.
    pub(crate) fn buckets(&self) -> impl DoubleEndedIterator<Item = &Bucket<C>> {
        let newest = (!self.is_empty()).then_some(&self.newest);
        let (a, b) = self
            .older
            .as_deref()
            .map_or((&[][..], &[][..]), Older::as_slices);
        a.iter().chain(b).chain(newest)
    }

    /// [`release_until`] on this window's buckets and total.
    pub(crate) fn release_until(
        &self,
        geo: &WindowGrid,
        now_ms: u64,
        done: impl FnMut(C) -> bool,
    ) -> Option<(u64, C)> {
        release_until(geo, now_ms, self.total(), self.buckets(), done)
    }

    /// Drops the buckets that no longer count at `now_ms`, as [`expire`](Self::expire);
    /// returns their counts.
    #[cfg_attr(not(feature = "redis-tokio"), allow(dead_code))] // the hybrid's unsent queue
    pub(crate) fn expire_counting(&mut self, geo: &WindowGrid, now_ms: u64) -> C {
        let mut dropped = self.total();
        self.expire(geo, now_ms);
        dropped.sub(self.total());
        dropped
    }

    /// How many buckets the window holds.
    #[cfg_attr(not(feature = "redis-tokio"), allow(dead_code))] // the hybrid's unsent queue
    pub(crate) fn len(&self) -> usize {
        if self.is_empty() {
            0
        } else {
            1 + self.older.as_ref().map_or(0, |o| o.len())
        }
    }

    /// Takes the oldest bucket out.
    #[cfg_attr(not(feature = "redis-tokio"), allow(dead_code))] // the hybrid's unsent queue
    pub(crate) fn pop_oldest(&mut self) -> Option<Bucket<C>> {
        let Some(older) = self.older.as_deref_mut() else {
            return (!self.is_empty()).then(|| std::mem::take(&mut self.newest));
        };
        let (front, more) = older.pop_front();
        if !more {
            self.older = None;
        }
        Some(front)
    }

    /// Takes up to `max` of the oldest buckets out, oldest first.
    #[cfg_attr(not(feature = "redis-tokio"), allow(dead_code))] // the hybrid's unsent queue
    pub(crate) fn take_oldest(&mut self, max: usize) -> Vec<Bucket<C>> {
        let mut taken = Vec::with_capacity(max.min(self.len()));
        while taken.len() < max {
            match self.pop_oldest() {
                Some(bucket) => taken.push(bucket),
                None => break,
            }
        }
        taken
    }

    /// The counts of the buckets that overlap the last `span_ms`.
    pub(crate) fn recent(&self, geo: &WindowGrid, now_ms: u64, span_ms: u64) -> C {
        let cutoff = now_ms.saturating_sub(span_ms);
        let mut sum = C::default();
        for bucket in self.buckets().rev() {
            if geo.end_of(bucket.id) <= cutoff {
                break;
            }
            sum.add(bucket.counts);
        }
        sum
    }
}

/// Walks `buckets` (oldest first, summing to `total`) as if each expired in turn, until
/// `done(what is left)` holds. Returns how long until that bucket expires and what is left
/// then; `None` if even an empty window does not satisfy `done`. Also walks the oldest
/// buckets Redis sent the hybrid provider, with the key's total as it knows it.
pub(crate) fn release_until<'a, C: Counts + 'a>(
    geo: &WindowGrid,
    now_ms: u64,
    total: C,
    buckets: impl IntoIterator<Item = &'a Bucket<C>>,
    mut done: impl FnMut(C) -> bool,
) -> Option<(u64, C)> {
    let mut left = total;
    for bucket in buckets {
        left.sub(bucket.counts);
        if done(left) {
            return Some((geo.expires_at(bucket.id).saturating_sub(now_ms), left));
        }
    }
    None
}

#[cfg_attr(not(feature = "redis-tokio"), allow(dead_code))]
/// The counts of the leading `buckets` (oldest first) that no longer count at `now_ms`.
pub(crate) fn expired_total<'a, C: Counts + 'a>(
    geo: &WindowGrid,
    now_ms: u64,
    buckets: impl IntoIterator<Item = &'a Bucket<C>>,
) -> C {
    let mut sum = C::default();
    for bucket in buckets {
        if geo.expires_at(bucket.id) > now_ms {
            break;
        }
        sum.add(bucket.counts);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(window_s: u64, group_ms: u64) -> WindowGrid {
        WindowGrid::for_tests(window_s, group_ms)
    }

    #[test]
    fn the_older_buckets_box_is_the_size_the_key_budget_docs_give() {
        assert_eq!(size_of::<Older<u64>>(), 112);
        assert_eq!(size_of::<Older<Usage>>(), 168);
        assert_eq!(size_of::<Bucket<u64>>(), 16);
        assert_eq!(size_of::<Bucket<Usage>>(), 24);
    }

    #[test]
    fn group_wider_than_window_is_an_error() {
        let err = WindowGrid::new(
            WindowSizeSeconds::try_from(1).unwrap(),
            RateGroupSizeMs::try_from(1001).unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("RateGroupSizeMs"), "{err}");
    }

    #[test]
    fn bucket_counts_for_at_least_the_window() {
        let g = geo(1, 100);
        let mut w = Window::<u64>::default();
        w.add(&g, 199, 1); // bucket 1 covers [100, 200): live while t < 1200
        w.expire(&g, 1199);
        assert_eq!(w.total(), 1);
        w.expire(&g, 1200);
        assert_eq!(w.total(), 0);
        assert!(w.is_empty());
    }

    #[test]
    fn expiry_drops_oldest_first_and_frees_the_deque() {
        let g = geo(1, 100);
        let mut w = Window::<u64>::default();
        for (t, n) in [(0, 1), (150, 2), (420, 4)] {
            w.add(&g, t, n);
        }
        assert_eq!(w.total(), 7);
        w.expire(&g, 1100); // bucket 0 expires at 1100
        assert_eq!(w.total(), 6);
        w.expire(&g, 1200);
        assert_eq!(w.total(), 4);
        assert!(w.older.is_none(), "an emptied deque is given back");
        w.expire(&g, 1500);
        assert!(w.is_empty());
    }

    #[test]
    fn the_ring_wraps_spills_to_a_deque_and_keeps_order_and_total() {
        let g = geo(1, 100);
        let mut w = Window::<u64>::default();
        let mut model: Vec<Bucket<u64>> = Vec::new();
        let mut t = 0;
        let mut spilled = false;
        // A call every 300 ms keeps about four buckets and wraps the ring; every 50 calls a
        // burst of one-bucket calls overflows it; 25 calls later a pause empties the window.
        for step in 0..400u64 {
            t += match step % 50 {
                25 => 2000,
                _ => 300,
            };
            let n = step % 5 + 1;
            w.expire(&g, t);
            model.retain(|b| g.expires_at(b.id) > t);
            w.add(&g, t, n);
            model.push(Bucket {
                id: t / 100,
                counts: n,
            });
            if step % 50 == 49 {
                for _ in 0..2 * RING {
                    t += 100;
                    w.add(&g, t, 1);
                    model.push(Bucket {
                        id: t / 100,
                        counts: 1,
                    });
                }
                spilled |= matches!(w.older.as_deref(), Some(Older::Deque { .. }));
            }
            assert_eq!(
                w.buckets().copied().collect::<Vec<_>>(),
                model,
                "step {step}"
            );
            assert_eq!(w.total(), model.iter().map(|b| b.counts).sum::<u64>());
            assert_eq!(w.len(), model.len());
            if step % 50 == 30 {
                assert!(
                    matches!(w.older.as_deref(), Some(Older::Ring { .. })),
                    "step {step}"
                );
            }
        }
        assert!(spilled, "the bursts moved the buckets to a deque");
        while let Some(b) = w.pop_oldest() {
            assert_eq!(b, model.remove(0));
            assert_eq!(w.total(), model.iter().map(|b| b.counts).sum::<u64>());
        }
        assert!(model.is_empty() && w.older.is_none());
    }

    #[test]
    fn same_group_shares_a_bucket_and_late_time_counts_in_newest() {
        let g = geo(1, 100);
        let mut w = Window::<u64>::default();
        w.add(&g, 110, 1);
        w.add(&g, 190, 1);
        w.add(&g, 50, 1); // behind the newest bucket
        assert_eq!(w.buckets().count(), 1);
        assert_eq!(w.total(), 3);
    }

    #[test]
    fn release_until_reports_wait_and_what_is_left() {
        let g = geo(1, 100);
        let mut w = Window::<u64>::default();
        w.add(&g, 0, 3);
        w.add(&g, 250, 5);
        // Need total <= 4: dropping bucket 0 (expires 1100) leaves 5; bucket 2 (expires 1300) leaves 0.
        assert_eq!(w.release_until(&g, 300, |left| left <= 4), Some((1000, 0)));
        assert_eq!(w.release_until(&g, 300, |left| left <= 5), Some((800, 5)));
        assert_eq!(w.release_until(&g, 300, |_| false), None);
    }

    #[test]
    fn the_oldest_buckets_come_out_in_order_and_the_rest_stays_consistent() {
        let g = geo(1, 100);
        let mut w = Window::<u64>::default();
        for (t, n) in [(0, 1), (150, 2), (420, 4), (650, 8)] {
            w.add(&g, t, n);
        }
        assert_eq!(w.len(), 4);
        let taken = w.take_oldest(2);
        assert_eq!(
            taken,
            [Bucket { id: 0, counts: 1 }, Bucket { id: 1, counts: 2 }]
        );
        assert_eq!((w.len(), w.total()), (2, 12));
        // The expiry test reads the new oldest bucket (4, expiring at 1500).
        assert_eq!(w.expire_counting(&g, 1499), 0);
        assert_eq!(w.expire_counting(&g, 1500), 4);
        assert_eq!(w.pop_oldest(), Some(Bucket { id: 6, counts: 8 }));
        assert_eq!((w.pop_oldest(), w.len(), w.total()), (None, 0, 0));
        w.add(&g, 2000, 3);
        assert_eq!(
            w.buckets().collect::<Vec<_>>(),
            [&Bucket { id: 20, counts: 3 }]
        );
    }

    #[test]
    fn a_snapshot_of_buckets_releases_and_expires_like_a_window() {
        let g = geo(1, 100);
        let oldest = [Bucket { id: 0, counts: 3 }, Bucket { id: 2, counts: 5 }];
        // A total of 10 known elsewhere: 10 - 3 = 7 after 1100, 2 after 1300.
        assert_eq!(
            release_until(&g, 300, 10, &oldest, |left| left <= 7),
            Some((800, 7))
        );
        assert_eq!(
            release_until(&g, 300, 10, &oldest, |left| left <= 2),
            Some((1000, 2))
        );
        assert_eq!(release_until(&g, 300, 10, &oldest, |left| left == 0), None);
        // More released than the total: what is left stops at zero.
        assert_eq!(
            release_until(&g, 0, 4, &oldest, |left| left == 0),
            Some((1300, 0))
        );
        assert_eq!(expired_total(&g, 1099, &oldest), 0);
        assert_eq!(expired_total(&g, 1100, &oldest), 3);
        assert_eq!(expired_total(&g, 5000, &oldest), 8);
    }

    #[test]
    fn recent_sums_buckets_overlapping_the_span() {
        let g = geo(10, 100);
        let mut w = Window::<Usage>::default();
        w.add(
            &g,
            0,
            Usage {
                accepted: 1,
                observed: 1,
            },
        );
        w.add(
            &g,
            1500,
            Usage {
                accepted: 0,
                observed: 2,
            },
        );
        w.add(
            &g,
            2450,
            Usage {
                accepted: 1,
                observed: 4,
            },
        );
        // At 2500 the last second is (1500, 2500]: bucket 15 ends at 1600 > 1500, bucket 0 does not.
        assert_eq!(
            w.recent(&g, 2500, 1000),
            Usage {
                accepted: 1,
                observed: 6
            }
        );
        assert_eq!(
            w.recent(&g, 2700, 1000),
            Usage {
                accepted: 1,
                observed: 4
            }
        );
    }
}
