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
//! O(1): each bucket is pushed once and popped once, and a key's ring grows one slot at a
//! time only up to 16 slots, by a quarter past that.

mod refund;

use std::borrow::Borrow;

pub(crate) use refund::Refund;

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
/// Laid out for a call on one of a million keys, which finds the key cold: the total, which
/// every decision reads, sits in the key's table entry beside the key, and a lone bucket
/// (an idle key's, a sprayed key's) is its id there too, so such a key costs no allocation.
/// Two buckets or more live in a ring of their own whose capacity follows the key's bucket
/// count: a key that keeps `n` buckets holds a ring of `n` slots, and a steady call, which
/// expires the oldest bucket and opens a new one, writes the new one into the slot the old
/// one left (or the one before it). The ring's head, length and capacity are in the entry,
/// so such a call touches the entry's line and about one line of the ring.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window<C> {
    /// The sum of every live bucket. Zero iff the window is empty: an increment is never
    /// zero, and the newest bucket is never left at zero (a refund that empties it drops it).
    total: C,
    shape: Shape<C>,
}

#[derive(Debug, Clone)]
enum Shape<C> {
    /// No bucket (the total is zero) or one: its id, its counts being the total.
    One { id: u64 },
    /// Two buckets or more.
    Ring(Ring<C>),
}

impl<C> Default for Shape<C> {
    fn default() -> Self {
        Shape::One { id: 0 }
    }
}

/// Up to 16 buckets the ring grows one slot at a time (a steady key then keeps exactly as
/// many slots as buckets); past that by a quarter, so a key called in every group of a long
/// window grows in a few steps.
const GROW_BY_ONE: usize = 16;

/// Buckets oldest first from `head`, `len` of them (at least two), in exactly `slots.len()`
/// slots. The capacity is the ring's own bound on its memory: it grows only when a bucket
/// would not fit, and shrinks once the buckets fill at most a quarter of it.
#[derive(Debug, Clone)]
struct Ring<C> {
    slots: Box<[Bucket<C>]>,
    head: u32,
    len: u32,
}

impl<C: Counts> Ring<C> {
    /// A ring of `older` and `newer`, with room for no more.
    fn two(older: Bucket<C>, newer: Bucket<C>) -> Self {
        Ring {
            slots: Box::new([older, newer]),
            head: 0,
            len: 2,
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.len as usize
    }

    /// The slot of the `i`-th bucket, oldest first (`i <= len`, and `i < capacity`).
    #[inline]
    fn slot(&self, i: usize) -> usize {
        let at = self.head as usize + i;
        if at >= self.slots.len() {
            at - self.slots.len()
        } else {
            at
        }
    }

    #[inline]
    fn front(&self) -> &Bucket<C> {
        &self.slots[self.head as usize]
    }

    #[inline]
    fn back(&self) -> &Bucket<C> {
        &self.slots[self.slot(self.len() - 1)]
    }

    #[inline]
    fn back_mut(&mut self) -> &mut Bucket<C> {
        let at = self.slot(self.len() - 1);
        &mut self.slots[at]
    }

    #[inline]
    fn push_back(&mut self, bucket: Bucket<C>) {
        if self.len() == self.slots.len() {
            self.grow();
        }
        let at = self.slot(self.len());
        self.slots[at] = bucket;
        self.len += 1;
    }

    #[cold]
    fn grow(&mut self) {
        let cap = self.slots.len();
        self.rebuild(if cap < GROW_BY_ONE {
            cap + 1
        } else {
            cap + cap / 4
        });
    }

    /// The same buckets in `capacity` slots (at least `len`), from slot 0.
    fn rebuild(&mut self, capacity: usize) {
        let mut slots = Vec::with_capacity(capacity);
        let (a, b) = self.as_slices();
        slots.extend_from_slice(a);
        slots.extend_from_slice(b);
        slots.resize(capacity, Bucket::default());
        self.slots = slots.into_boxed_slice();
        self.head = 0;
    }

    /// Gives back most of a ring that its buckets fill at most a quarter of.
    #[inline]
    fn shrink_if_sparse(&mut self) {
        if self.slots.len() > 8 && self.len() * 4 <= self.slots.len() {
            self.rebuild(self.len() + 1);
        }
    }

    /// Takes the oldest bucket out (at least one stays: the caller turns a lone one into
    /// [`Shape::One`]).
    #[inline]
    fn pop_front(&mut self) -> Bucket<C> {
        let front = *self.front();
        self.head = self.slot(1) as u32;
        self.len -= 1;
        front
    }

    fn pop_back(&mut self) -> Bucket<C> {
        let back = *self.back();
        self.len -= 1;
        back
    }

    /// The buckets, oldest first, as two runs.
    fn as_slices(&self) -> (&[Bucket<C>], &[Bucket<C>]) {
        let (head, len, cap) = (self.head as usize, self.len(), self.slots.len());
        if head + len <= cap {
            (&self.slots[head..head + len], &[])
        } else {
            (&self.slots[head..], &self.slots[..head + len - cap])
        }
    }
}

impl<C: Counts> Window<C> {
    /// The sum of every live bucket.
    #[inline]
    pub(crate) fn total(&self) -> C {
        self.total
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.total.is_zero()
    }

    /// The oldest live bucket's id (what [`buckets`](Self::buckets) yields first), without
    /// walking; `None` when the window is empty. Limit sets read it for their `reset_ms`.
    #[inline]
    pub(crate) fn oldest(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.oldest_id())
    }

    /// Drops the buckets that no longer count at `now_ms`. The test is always inlined and
    /// the dropping out of line: most calls drop nothing (a key's second call in a group,
    /// and the usage read right after a decision, which expired at the same instant), and
    /// an out-of-line `expire` cost a call and its spills for that test.
    #[inline(always)]
    pub(crate) fn expire(&mut self, geo: &WindowGrid, now_ms: u64) {
        // The same test as `oldest_id >= oldest_live(now)`, with a multiply for the divide.
        if self.is_empty() || now_ms < geo.expires_at(self.oldest_id()) {
            return;
        }
        self.expire_out_of_line(geo.oldest_live(now_ms));
    }

    /// [`expire`](Self::expire)'s dropping, once its test found the oldest bucket expired.
    #[inline(never)]
    fn expire_out_of_line(&mut self, oldest_live: u64) {
        self.expire_slow(oldest_live);
    }

    #[inline]
    fn oldest_id(&self) -> u64 {
        match &self.shape {
            Shape::One { id } => *id,
            Shape::Ring(ring) => ring.front().id,
        }
    }

    #[inline]
    fn newest_id(&self) -> u64 {
        match &self.shape {
            Shape::One { id } => *id,
            Shape::Ring(ring) => ring.back().id,
        }
    }

    #[inline]
    fn expire_slow(&mut self, oldest_live: u64) {
        let ring = match &mut self.shape {
            Shape::One { id } => {
                if *id < oldest_live {
                    self.total = C::default();
                }
                return;
            }
            Shape::Ring(ring) => ring,
        };
        // `expire` found the oldest bucket expired.
        debug_assert!(ring.front().id < oldest_live);
        loop {
            let gone = ring.pop_front();
            self.total.sub(gone.counts);
            if ring.len() == 1 {
                let last = *ring.front();
                self.shape = Shape::One { id: last.id };
                if last.id < oldest_live {
                    self.total = C::default();
                }
                return;
            }
            // Ids rise along the ring: past the last expired id, the rest is live, and the
            // next bucket (maybe on another line) is not read. The common case at many keys:
            // one bucket expires, and the new one goes into its slot.
            if gone.id + 1 >= oldest_live || ring.front().id >= oldest_live {
                break;
            }
        }
        ring.shrink_if_sparse();
    }

    /// [`expire`](Self::expire) with its test always inlined and the dropping out of line,
    /// for a caller that expires several windows per call (a limit set: an out-of-line
    /// `expire` per window cost a call and its spills for a test that nearly always finds
    /// nothing to drop). Returns when the oldest bucket left expires (`None` if the window
    /// is empty): the number the test computed, which the caller's `reset_ms` needs too.
    #[inline(always)]
    pub(crate) fn expire_fast(&mut self, geo: &WindowGrid, now_ms: u64) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        let expires = geo.expires_at(self.oldest_id());
        if now_ms < expires {
            return Some(expires);
        }
        self.expire_cold(geo, now_ms)
    }

    #[cold]
    #[inline(never)]
    fn expire_cold(&mut self, geo: &WindowGrid, now_ms: u64) -> Option<u64> {
        self.expire_slow(geo.oldest_live(now_ms));
        self.oldest().map(|id| geo.expires_at(id))
    }

    /// [`add`](Self::add) to a window that is not empty, with the common case (its newest
    /// bucket still open at `now_ms`) always inlined and the rest out of line: for a caller
    /// that adds to several windows per call (a limit set).
    #[inline(always)]
    pub(crate) fn add_to_nonempty(&mut self, geo: &WindowGrid, now_ms: u64, counts: C) {
        debug_assert!(!counts.is_zero() && !self.is_empty());
        match &mut self.shape {
            Shape::One { id } => {
                if now_ms < geo.end_of(*id) {
                    self.total.add(counts);
                    return;
                }
            }
            Shape::Ring(ring) => {
                let at = ring.slot(ring.len() - 1);
                let newest = &mut ring.slots[at];
                if now_ms < geo.end_of(newest.id) {
                    newest.counts.add(counts);
                    self.total.add(counts);
                    return;
                }
            }
        }
        self.add_cold(geo, now_ms, counts);
    }

    /// [`add`](Self::add) out of line: the uncommon adds of a limit set's common call.
    #[inline(never)]
    pub(crate) fn add_cold(&mut self, geo: &WindowGrid, now_ms: u64, counts: C) {
        self.add(geo, now_ms, counts);
    }

    /// Records `counts` at `now_ms`. A time behind the newest bucket (a clock that stepped
    /// back) counts in the newest bucket, which expires later: never earlier than it should.
    /// Opening a new bucket (once a group at most) is out of line.
    #[inline]
    pub(crate) fn add(&mut self, geo: &WindowGrid, now_ms: u64, counts: C) {
        debug_assert!(!counts.is_zero());
        if self.is_empty() {
            self.total = counts;
            self.shape = Shape::One {
                id: geo.bucket_of(now_ms),
            };
            return;
        }
        if now_ms < geo.end_of(self.newest_id()) {
            // `bucket_of(now_ms) <= newest id` without the divide: the common case.
            self.total.add(counts);
            if let Shape::Ring(ring) = &mut self.shape {
                ring.back_mut().counts.add(counts);
            }
            return;
        }
        self.open_bucket(geo, now_ms, counts);
    }

    /// [`add`](Self::add) to a window that is not empty and whose newest bucket has closed
    /// at `now_ms`: `counts` in a new bucket.
    #[inline(never)]
    fn open_bucket(&mut self, geo: &WindowGrid, now_ms: u64, counts: C) {
        let before = self.total;
        self.total.add(counts);
        let newer = Bucket {
            id: geo.bucket_of(now_ms),
            counts,
        };
        match &mut self.shape {
            Shape::One { id } => {
                let older = Bucket {
                    id: *id,
                    counts: before,
                };
                self.shape = Shape::Ring(Ring::two(older, newer));
            }
            Shape::Ring(ring) => ring.push_back(newer),
        }
    }

    /// Live buckets, oldest first.
    pub(crate) fn buckets(&self) -> impl DoubleEndedIterator<Item = Bucket<C>> + '_ {
        let (a, b, one): (&[Bucket<C>], &[Bucket<C>], _) = match &self.shape {
            Shape::One { id } => (
                &[],
                &[],
                (!self.is_empty()).then_some(Bucket {
                    id: *id,
                    counts: self.total,
                }),
            ),
            Shape::Ring(ring) => {
                let (a, b) = ring.as_slices();
                (a, b, None)
            }
        };
        a.iter().chain(b).copied().chain(one)
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
        match &self.shape {
            _ if self.is_empty() => 0,
            Shape::One { .. } => 1,
            Shape::Ring(ring) => ring.len(),
        }
    }

    /// Takes the oldest bucket out.
    #[cfg_attr(not(feature = "redis-tokio"), allow(dead_code))] // the hybrid's unsent queue
    pub(crate) fn pop_oldest(&mut self) -> Option<Bucket<C>> {
        if self.is_empty() {
            return None;
        }
        let ring = match &mut self.shape {
            Shape::One { id } => {
                let id = *id;
                return Some(Bucket {
                    id,
                    counts: std::mem::take(&mut self.total),
                });
            }
            Shape::Ring(ring) => ring,
        };
        let front = ring.pop_front();
        self.total.sub(front.counts);
        if ring.len() == 1 {
            self.shape = Shape::One {
                id: ring.front().id,
            };
        } else {
            ring.shrink_if_sparse();
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
pub(crate) fn release_until<C: Counts>(
    geo: &WindowGrid,
    now_ms: u64,
    total: C,
    buckets: impl IntoIterator<Item = impl Borrow<Bucket<C>>>,
    mut done: impl FnMut(C) -> bool,
) -> Option<(u64, C)> {
    let mut left = total;
    for bucket in buckets {
        let bucket = bucket.borrow();
        left.sub(bucket.counts);
        if done(left) {
            return Some((geo.expires_at(bucket.id).saturating_sub(now_ms), left));
        }
    }
    None
}

#[cfg_attr(not(feature = "redis-tokio"), allow(dead_code))]
/// The counts of the leading `buckets` (oldest first) that no longer count at `now_ms`.
pub(crate) fn expired_total<C: Counts>(
    geo: &WindowGrid,
    now_ms: u64,
    buckets: impl IntoIterator<Item = impl Borrow<Bucket<C>>>,
) -> C {
    let mut sum = C::default();
    for bucket in buckets {
        let bucket = bucket.borrow();
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
    fn the_window_and_its_ring_slots_are_the_sizes_the_key_budget_docs_give() {
        assert_eq!(size_of::<Window<u64>>(), 32);
        assert_eq!(size_of::<Window<Usage>>(), 40);
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
        assert!(
            matches!(w.shape, Shape::One { id: 4 }),
            "a ring down to one bucket is given back"
        );
        w.expire(&g, 1500);
        assert!(w.is_empty());
    }

    #[test]
    fn the_ring_wraps_grows_shrinks_and_keeps_order_and_total() {
        let g = geo(1, 100);
        let mut w = Window::<u64>::default();
        let mut model: Vec<Bucket<u64>> = Vec::new();
        let mut t = 0;
        let (mut grown, mut shrunk) = (false, false);
        // A call every 300 ms keeps about four buckets and wraps the ring; every 50 calls a
        // burst of one-bucket calls grows it past 16 slots; 25 calls later a pause empties
        // the window.
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
                for _ in 0..24 {
                    t += 100;
                    w.add(&g, t, 1);
                    model.push(Bucket {
                        id: t / 100,
                        counts: 1,
                    });
                }
                grown |= matches!(&w.shape, Shape::Ring(r) if r.slots.len() > GROW_BY_ONE);
            }
            assert_eq!(w.buckets().collect::<Vec<_>>(), model, "step {step}");
            assert_eq!(w.total(), model.iter().map(|b| b.counts).sum::<u64>());
            assert_eq!(w.len(), model.len());
            if let Shape::Ring(r) = &w.shape {
                // The ring's memory stays bounded by its buckets.
                assert!(r.slots.len() <= 4 * r.len().max(2) + 8, "step {step}");
                assert!(r.len() >= 2 && r.len() <= r.slots.len(), "step {step}");
                shrunk |= step % 50 == 20 && r.slots.len() < GROW_BY_ONE;
            }
        }
        assert!(grown, "the bursts grew the ring");
        assert!(shrunk, "the ring shrank back after the bursts expired");
        while let Some(b) = w.pop_oldest() {
            assert_eq!(b, model.remove(0));
            assert_eq!(w.total(), model.iter().map(|b| b.counts).sum::<u64>());
        }
        assert!(model.is_empty() && w.is_empty());
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
            [Bucket { id: 20, counts: 3 }]
        );
    }

    #[test]
    fn a_snapshot_of_buckets_releases_and_expires_like_a_window() {
        let g = geo(1, 100);
        let oldest = [Bucket { id: 0, counts: 3 }, Bucket { id: 2, counts: 5 }];
        // A total of 10 known elsewhere: 10 - 3 = 7 after 1100, 2 after 1300.
        assert_eq!(
            release_until(&g, 300, 10, oldest, |left| left <= 7),
            Some((800, 7))
        );
        assert_eq!(
            release_until(&g, 300, 10, oldest, |left| left <= 2),
            Some((1000, 2))
        );
        assert_eq!(release_until(&g, 300, 10, oldest, |left| left == 0), None);
        // More released than the total: what is left stops at zero.
        assert_eq!(
            release_until(&g, 0, 4, oldest, |left| left == 0),
            Some((1300, 0))
        );
        assert_eq!(expired_total(&g, 1099, oldest), 0);
        assert_eq!(expired_total(&g, 1100, oldest), 3);
        assert_eq!(expired_total(&g, 5000, oldest), 8);
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
