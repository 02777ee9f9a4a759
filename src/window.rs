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
    /// `n` times the counts of one admitted unit (a bucket [`Shape::Bits`] keeps as one bit
    /// holds one unit).
    fn units(n: u64) -> Self;
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
    #[inline]
    fn units(n: u64) -> Self {
        n
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
    #[inline]
    fn units(n: u64) -> Self {
        Usage {
            accepted: n,
            observed: n,
        }
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
/// every decision reads, sits in the key's table entry beside the key, and so do the
/// buckets of a key called at most once a group ([`Shape::Bits`]: the newest bucket's id,
/// and one bit per older group, set where a bucket of one unit is), so such a key (an idle
/// key, a sprayed one, one of a million called now and then) costs no allocation and a
/// steady call, which expires the oldest bucket and opens a new one, touches no line but
/// the entry's. Other windows keep their buckets in a ring of their own whose capacity
/// follows the key's bucket count: a key that keeps `n` buckets holds a ring of `n` slots,
/// and a steady call writes the new bucket into the slot the old one left (or the one
/// before it). The ring's head, length and capacity are in the entry, so such a call
/// touches the entry's line and about one line of the ring.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window<C> {
    /// The sum of every live bucket. Zero iff the window is empty: an increment is never
    /// zero, and the newest bucket is never left at zero (a refund that empties it drops it).
    total: C,
    shape: Shape<C>,
}

#[derive(Debug, Clone)]
enum Shape<C> {
    /// No bucket (the total is zero), or a newest bucket and older buckets of one unit
    /// each ([`Counts::units`]`(1)`), at most [`AGES`] groups older than the newest one.
    /// The newest bucket's counts are what the others leave of the total.
    Bits(Bits),
    /// Two buckets or more, any counts.
    Ring(Ring<C>),
}

impl<C> Default for Shape<C> {
    fn default() -> Self {
        Shape::Bits(Bits::one(0))
    }
}

/// How many groups before the newest one [`Bits`] has a bit for: a window of up to `AGES`
/// groups (the default ten seconds of 100 ms groups is 100) keeps a key called at most
/// once a group in its entry whatever its call rate.
const AGES: u32 = 112;

/// [`Shape::Bits`]: the newest bucket's id (bytes 0..8), a bit per older group (bytes
/// 8..22, little-endian): bit `i` set iff bucket `newest - 1 - i` holds one unit, and how
/// many bits are set (byte 22), so that no call counts them. Bytes, so that the enum fits
/// its tag beside them in 24 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Bits([u8; 23]);

impl Bits {
    /// A lone bucket (or, with a zero total, none).
    #[inline]
    fn one(id: u64) -> Self {
        Bits::new(id, 0, 0)
    }

    /// `older` has `n` bits set.
    #[inline]
    fn new(newest: u64, older: u128, n: u8) -> Self {
        debug_assert!(older >> AGES == 0 && older.count_ones() == n as u32);
        let mut b = [0u8; 23];
        b[..8].copy_from_slice(&newest.to_le_bytes());
        b[8..22].copy_from_slice(&older.to_le_bytes()[..14]);
        b[22] = n;
        Bits(b)
    }

    #[inline]
    fn newest(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }

    #[inline]
    fn older(&self) -> u128 {
        let (mut lo, mut hi) = ([0u8; 8], [0u8; 8]);
        lo.copy_from_slice(&self.0[8..16]);
        // Bytes 15..23, the low one `lo`'s and the high one the count: one load.
        hi.copy_from_slice(&self.0[15..23]);
        let hi = (u64::from_le_bytes(hi) >> 8) & ((1 << 48) - 1);
        u64::from_le_bytes(lo) as u128 | (hi as u128) << 64
    }

    /// How many older buckets there are.
    #[inline]
    fn n(&self) -> u8 {
        self.0[22]
    }

    /// The oldest bucket's id (the newest's if it is alone).
    #[inline]
    fn oldest(&self) -> u64 {
        self.newest() - age_of_oldest(self.older())
    }
}

/// How many groups the oldest bucket of `older` is behind the newest (0 if none).
#[inline]
fn age_of_oldest(older: u128) -> u64 {
    (128 - older.leading_zeros()) as u64
}

impl std::fmt::Debug for Bits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bits")
            .field("newest", &self.newest())
            .field("older", &format_args!("{:#x}", self.older()))
            .finish()
    }
}

/// Up to 16 buckets the ring grows one slot at a time (a steady key then keeps exactly as
/// many slots as buckets); past that by a quarter, so a key called in every group of a long
/// window grows in a few steps.
const GROW_BY_ONE: usize = 16;

/// The most buckets a ring holds (its length has 24 bits, beside the shape's tag): a
/// window that would hold more (more than 16 million groups, each with a call in it)
/// counts a new bucket's units in its newest bucket, which expires later: never earlier
/// than it should.
const MAX_RING_LEN: usize = (1 << 24) - 1;

/// A byte with one value, that gives [`Shape`] the tag it needs beside a ring's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum RingMark {
    Ring = 0,
}

/// Buckets oldest first from `head`, `len` of them (at least two), in exactly `slots.len()`
/// slots. The capacity is the ring's own bound on its memory: it grows only when a bucket
/// would not fit, and shrinks once the buckets fill at most a quarter of it.
#[derive(Debug, Clone)]
struct Ring<C> {
    _mark: RingMark,
    len_high: u8,
    len_low: u16,
    head: u32,
    slots: Box<[Bucket<C>]>,
}

impl<C: Counts> Ring<C> {
    /// A ring of `buckets` (at least two, oldest first), with room for no more.
    fn of(buckets: Vec<Bucket<C>>) -> Self {
        debug_assert!(buckets.len() >= 2 && buckets.len() <= MAX_RING_LEN);
        let mut ring = Ring {
            _mark: RingMark::Ring,
            len_high: 0,
            len_low: 0,
            head: 0,
            slots: buckets.into_boxed_slice(),
        };
        ring.set_len(ring.slots.len());
        ring
    }

    #[inline]
    fn len(&self) -> usize {
        (self.len_high as usize) << 16 | self.len_low as usize
    }

    #[inline]
    fn set_len(&mut self, len: usize) {
        debug_assert!(len <= MAX_RING_LEN);
        self.len_high = (len >> 16) as u8;
        self.len_low = len as u16;
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

    /// Appends `bucket`; a full ring ([`MAX_RING_LEN`]) counts it in its newest bucket.
    #[inline]
    fn push_back(&mut self, bucket: Bucket<C>) {
        if self.len() == MAX_RING_LEN {
            self.back_mut().counts.add(bucket.counts);
            return;
        }
        if self.len() == self.slots.len() {
            self.grow();
        }
        let at = self.slot(self.len());
        self.slots[at] = bucket;
        self.set_len(self.len() + 1);
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
    /// [`Shape::Bits`]).
    #[inline]
    fn pop_front(&mut self) -> Bucket<C> {
        let front = *self.front();
        self.head = self.slot(1) as u32;
        self.set_len(self.len() - 1);
        front
    }

    fn pop_back(&mut self) -> Bucket<C> {
        let back = *self.back();
        self.set_len(self.len() - 1);
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

/// [`Window::buckets`]: a ring's runs, or the buckets [`Bits`] holds, oldest first.
enum Buckets<'a, C> {
    Ring(std::iter::Chain<std::slice::Iter<'a, Bucket<C>>, std::slice::Iter<'a, Bucket<C>>>),
    /// The older buckets not yet yielded, and the newest one (`None` once yielded).
    Bits {
        newest_id: u64,
        older: u128,
        newest: Option<C>,
    },
}

impl<C: Counts> Iterator for Buckets<'_, C> {
    type Item = Bucket<C>;

    fn next(&mut self) -> Option<Bucket<C>> {
        match self {
            Buckets::Ring(runs) => runs.next().copied(),
            Buckets::Bits {
                newest_id,
                older,
                newest,
            } => {
                if *older != 0 {
                    let age = age_of_oldest(*older);
                    *older &= !(1u128 << (age - 1));
                    return Some(Bucket {
                        id: *newest_id - age,
                        counts: C::units(1),
                    });
                }
                newest.take().map(|counts| Bucket {
                    id: *newest_id,
                    counts,
                })
            }
        }
    }
}

impl<C: Counts> DoubleEndedIterator for Buckets<'_, C> {
    fn next_back(&mut self) -> Option<Bucket<C>> {
        match self {
            Buckets::Ring(runs) => runs.next_back().copied(),
            Buckets::Bits {
                newest_id,
                older,
                newest,
            } => {
                if let Some(counts) = newest.take() {
                    return Some(Bucket {
                        id: *newest_id,
                        counts,
                    });
                }
                if *older == 0 {
                    return None;
                }
                let age = older.trailing_zeros() as u64 + 1;
                *older &= *older - 1;
                Some(Bucket {
                    id: *newest_id - age,
                    counts: C::units(1),
                })
            }
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

    /// Drops the buckets that no longer count at `now_ms`. The test is always inlined, and
    /// so is the dropping of buckets kept as bits (a steady call on one of many keys drops
    /// one); a ring's is out of line: most calls drop nothing (a key's second call in a
    /// group, and the usage read right after a decision, which expired at the same instant),
    /// and an out-of-line `expire` cost a call and its spills for that test.
    #[inline(always)]
    pub(crate) fn expire(&mut self, geo: &WindowGrid, now_ms: u64) {
        if self.is_empty() {
            return;
        }
        // The same test as `oldest_id >= oldest_live(now)`, with a multiply for the divide.
        match &mut self.shape {
            Shape::Bits(bits) => {
                let (newest, mut older) = (bits.newest(), bits.older());
                let mut age = age_of_oldest(older);
                if now_ms < geo.expires_at(newest - age) {
                    return;
                }
                // The oldest go one at a time, with no count of the bits.
                let mut n = bits.n();
                while age > 0 {
                    older &= !(1u128 << (age - 1));
                    n -= 1;
                    self.total.sub(C::units(1));
                    age = age_of_oldest(older);
                    if now_ms < geo.expires_at(newest - age) {
                        break;
                    }
                }
                if age == 0 && now_ms >= geo.expires_at(newest) {
                    self.total = C::default();
                }
                *bits = Bits::new(newest, older, n);
            }
            Shape::Ring(ring) => {
                if now_ms < geo.expires_at(ring.front().id) {
                    return;
                }
                self.expire_out_of_line(geo.oldest_live(now_ms));
            }
        }
    }

    /// [`expire`](Self::expire)'s dropping, once its test found the oldest bucket expired.
    #[inline(never)]
    fn expire_out_of_line(&mut self, oldest_live: u64) {
        self.expire_slow(oldest_live);
    }

    #[inline]
    fn oldest_id(&self) -> u64 {
        match &self.shape {
            Shape::Bits(bits) => bits.oldest(),
            Shape::Ring(ring) => ring.front().id,
        }
    }

    #[inline]
    fn expire_slow(&mut self, oldest_live: u64) {
        let ring = match &mut self.shape {
            Shape::Bits(bits) => {
                let newest = bits.newest();
                if newest < oldest_live {
                    self.total = C::default();
                    *bits = Bits::one(newest);
                    return;
                }
                // Older buckets up to `keep` groups behind the newest stay: the oldest go one
                // at a time (one, in a steady call), with no count of the bits.
                let keep = newest - oldest_live;
                let (mut older, mut n) = (bits.older(), bits.n());
                loop {
                    let age = age_of_oldest(older);
                    if age <= keep {
                        break;
                    }
                    older &= !(1u128 << (age - 1));
                    n -= 1;
                    self.total.sub(C::units(1));
                }
                *bits = Bits::new(newest, older, n);
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
                self.shape = Shape::Bits(Bits::one(last.id));
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
            Shape::Bits(bits) => {
                if now_ms < geo.end_of(bits.newest()) {
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
            self.shape = Shape::Bits(Bits::one(geo.bucket_of(now_ms)));
            return;
        }
        // `bucket_of(now_ms) <= newest id` without the divide: the common case.
        match &mut self.shape {
            Shape::Bits(bits) => {
                let newest = bits.newest();
                if now_ms < geo.end_of(newest) {
                    self.total.add(counts);
                    return;
                }
                // A new bucket beside older ones of one unit, the newest of one unit too:
                // one more bit, inline (a steady call on one of many keys).
                let (older, n) = (bits.older(), bits.n());
                let mut newest_counts = self.total;
                newest_counts.sub(C::units(n as u64));
                if newest_counts == C::units(1) {
                    let shift = geo.bucket_of(now_ms) - newest;
                    if shift <= AGES as u64 && older >> (AGES as u64 - shift) == 0 {
                        let older = (older << shift) | (1u128 << (shift - 1));
                        *bits = Bits::new(newest + shift, older, n + 1);
                        self.total.add(counts);
                        return;
                    }
                }
            }
            Shape::Ring(ring) => {
                let newest = ring.back_mut();
                if now_ms < geo.end_of(newest.id) {
                    newest.counts.add(counts);
                    self.total.add(counts);
                    return;
                }
            }
        }
        self.open_bucket(geo, now_ms, counts);
    }

    /// [`add`](Self::add) to a window that is not empty and whose newest bucket has closed
    /// at `now_ms`: `counts` in a new bucket. `add` has already kept bits whose newest
    /// bucket becomes one more bit; bits that cannot (a newest bucket of more than one
    /// unit, or an older one out of [`AGES`]'s reach from the new one) move into a ring.
    #[inline(never)]
    fn open_bucket(&mut self, geo: &WindowGrid, now_ms: u64, counts: C) {
        let before = self.total;
        self.total.add(counts);
        let newer = Bucket {
            id: geo.bucket_of(now_ms),
            counts,
        };
        match &mut self.shape {
            Shape::Bits(bits) => {
                let (newest, older, n) = (bits.newest(), bits.older(), bits.n());
                let mut newest_counts = before;
                newest_counts.sub(C::units(n as u64));
                let mut buckets = Vec::with_capacity(n as usize + 2);
                buckets.extend(
                    Buckets::Bits {
                        newest_id: newest,
                        older,
                        newest: Some(newest_counts),
                    }
                    .chain([newer]),
                );
                self.shape = Shape::Ring(Ring::of(buckets));
            }
            Shape::Ring(ring) => ring.push_back(newer),
        }
    }

    /// A window of [`Shape::Bits`] with older buckets moved into a ring (one that holds
    /// one bucket or none stays as it is), for the rare changes written for rings alone.
    fn move_into_ring(&mut self) {
        if let Shape::Bits(bits) = &self.shape {
            if bits.older() != 0 {
                let buckets: Vec<_> = self.buckets().collect();
                self.shape = Shape::Ring(Ring::of(buckets));
            }
        }
    }

    /// Live buckets, oldest first.
    pub(crate) fn buckets(&self) -> impl DoubleEndedIterator<Item = Bucket<C>> + '_ {
        match &self.shape {
            Shape::Bits(bits) => Buckets::Bits {
                newest_id: bits.newest(),
                older: bits.older(),
                newest: {
                    let mut newest = self.total;
                    newest.sub(C::units(bits.n() as u64));
                    (!self.is_empty()).then_some(newest)
                },
            },
            Shape::Ring(ring) => {
                let (a, b) = ring.as_slices();
                Buckets::Ring(a.iter().chain(b))
            }
        }
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
            Shape::Bits(bits) => 1 + bits.n() as usize,
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
            Shape::Bits(bits) => {
                let (newest, older) = (bits.newest(), bits.older());
                if older == 0 {
                    return Some(Bucket {
                        id: newest,
                        counts: std::mem::take(&mut self.total),
                    });
                }
                let age = age_of_oldest(older);
                *bits = Bits::new(newest, older & !(1u128 << (age - 1)), bits.n() - 1);
                self.total.sub(C::units(1));
                return Some(Bucket {
                    id: newest - age,
                    counts: C::units(1),
                });
            }
            Shape::Ring(ring) => ring,
        };
        let front = ring.pop_front();
        self.total.sub(front.counts);
        if ring.len() == 1 {
            self.shape = Shape::Bits(Bits::one(ring.front().id));
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
        assert_eq!(
            size_of::<Shape<u64>>(),
            24,
            "the bits and the ring's fields beside a tag"
        );
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
            matches!(&w.shape, Shape::Bits(b) if b.newest() == 4 && b.older() == 0),
            "a ring down to one bucket is given back"
        );
        w.expire(&g, 1500);
        assert!(w.is_empty());
    }

    #[test]
    fn a_ring_of_more_than_65536_buckets_keeps_its_length_and_order() {
        // 100,000 one-millisecond groups in the window; two units a group keep a ring.
        let g = geo(100, 1);
        let mut w = Window::<u64>::default();
        let n = 70_000u64;
        for t in 0..n {
            w.add(&g, t, 2);
        }
        let Shape::Ring(r) = &w.shape else {
            panic!("two units a group make a ring");
        };
        assert_eq!(r.len(), n as usize, "the length's high byte counts");
        assert_eq!(w.len(), n as usize);
        assert_eq!(w.total(), 2 * n);
        let ids: Vec<u64> = w.buckets().map(|b| b.id).collect();
        assert_eq!(ids, (0..n).collect::<Vec<_>>());
        // The first 40,000 leave the window: 30,000 are left, in order.
        w.expire(&g, g.expires_at(39_999));
        assert_eq!(w.len(), 30_000);
        assert_eq!(w.buckets().next().map(|b| b.id), Some(40_000));
        assert_eq!(w.total(), 60_000);
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

    /// Which shape a window is in: bits with older buckets, a ring, or neither.
    fn kind<C>(w: &Window<C>) -> &'static str {
        match &w.shape {
            Shape::Bits(b) if b.older() != 0 => "bits",
            Shape::Bits(_) => "one",
            Shape::Ring(_) => "ring",
        }
    }

    /// Random calls, pauses, refunds and pops on a window, against a list of buckets: the
    /// buckets kept as bits and those in a ring must be the same ones, whichever way the
    /// window moves between the two (a bucket of two units or one more than `AGES` groups
    /// old sends it into a ring; a ring down to one bucket comes back).
    fn bits_and_ring_hand_off<C: Refund + std::fmt::Debug>(
        window_s: u64,
        unit: C,
        two: C,
    ) -> Vec<(&'static str, &'static str)> {
        let g = geo(window_s, 100);
        let mut w = Window::<C>::default();
        let mut model: Vec<Bucket<C>> = Vec::new();
        let mut seen = Vec::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut t = 1_000_000;
        for step in 0..20_000 {
            t += match next(100) {
                0 => g.expires_at(0) + 5000, // a pause that empties the window
                1..=9 => 0,                  // same group
                10..=69 => 100 + next(1500), // about a call a second
                _ => 100 * (1 + next(60)),
            };
            let before = kind(&w);
            w.expire(&g, t);
            model.retain(|b| g.expires_at(b.id) > t);
            let counts = if next(40) == 0 { two } else { unit };
            w.add(&g, t, counts);
            match model.last_mut() {
                Some(b) if b.id >= t / 100 => b.counts.add(counts),
                _ => model.push(Bucket {
                    id: t / 100,
                    counts,
                }),
            }
            if next(200) == 0 && !model.is_empty() {
                // A refund of one unit from the buckets of the last second.
                let (from, to) = (t / 100 - 10, t / 100);
                let left = w.take_back(from, to, unit);
                let mut want = unit;
                for b in model.iter_mut().filter(|b| (from..=to).contains(&b.id)) {
                    b.counts.take_from(&mut want);
                }
                assert_eq!(left, want, "step {step}");
                while model.last().is_some_and(|b| b.counts.is_zero()) {
                    model.pop();
                }
            }
            if next(300) == 0 {
                assert_eq!(w.pop_oldest(), (!model.is_empty()).then(|| model.remove(0)));
            }
            seen.push((before, kind(&w)));
            assert_eq!(w.buckets().collect::<Vec<_>>(), model, "step {step}");
            assert_eq!(w.buckets().rev().count(), model.len(), "step {step}");
            let mut total = C::default();
            model.iter().for_each(|b| total.add(b.counts));
            assert_eq!(w.total(), total, "step {step}");
            assert_eq!(w.len(), model.len(), "step {step}");
            assert_eq!(w.oldest(), model.first().map(|b| b.id), "step {step}");
            let mut recent = C::default();
            model
                .iter()
                .filter(|b| g.end_of(b.id) > t - 3000)
                .for_each(|b| recent.add(b.counts));
            assert_eq!(w.recent(&g, t, 3000), recent, "step {step}");
        }
        seen
    }

    #[test]
    fn bits_expire_every_bucket_whose_time_is_up_in_one_call() {
        // Buckets 10, 11 and 12 of one unit each. Bucket 10 stops counting at 11,100 and
        // bucket 11 at 11,200: a call at exactly 11,200 drops both, leaving bucket 12.
        let g = geo(10, 100);
        let mut w = Window::<u64>::default();
        for t in [1_000, 1_100, 1_200] {
            w.add(&g, t, 1);
        }
        let mut later = w.clone();
        w.expire(&g, 11_199);
        assert_eq!(w.total(), 2, "bucket 11 still counts at 11,199");
        later.expire(&g, 11_200);
        assert_eq!(later.total(), 1, "both older buckets are gone at 11,200");
        assert_eq!(later.oldest(), Some(12));
    }

    #[test]
    fn a_window_of_bits_debugs_as_its_newest_id_and_older_bits() {
        // Buckets 10, 12 and 13 of one unit each: the newest is 13, with bits for one and
        // three groups back (0b101).
        let g = geo(10, 100);
        let mut w = Window::<u64>::default();
        for t in [1_000, 1_200, 1_300] {
            w.add(&g, t, 1);
        }
        let shown = format!("{w:?}");
        assert!(shown.contains("Bits { newest: 13, older: 0x5 }"), "{shown}");
    }

    #[test]
    fn buckets_move_between_bits_and_a_ring_and_stay_the_same_buckets() {
        let unit = Usage {
            accepted: 1,
            observed: 1,
        };
        let two = Usage {
            accepted: 1,
            observed: 2,
        };
        for seen in [
            bits_and_ring_hand_off::<u64>(10, 1, 2),
            bits_and_ring_hand_off::<u64>(20, 1, 2),
            bits_and_ring_hand_off::<Usage>(10, unit, two),
            bits_and_ring_hand_off::<Usage>(20, unit, two),
        ] {
            for hand_off in [("one", "bits"), ("bits", "ring"), ("one", "ring")] {
                assert!(seen.contains(&hand_off), "{hand_off:?} never happened");
            }
            assert!(
                seen.iter()
                    .any(|&(from, to)| from == "ring" && to != "ring"),
                "a ring never came back to bits"
            );
        }
    }

    #[test]
    fn a_bucket_older_than_the_bits_reach_moves_the_window_into_a_ring() {
        // 20 s of 100 ms groups: a bucket can live 200 groups, the bits reach 120.
        let g = geo(20, 100);
        let mut w = Window::<u64>::default();
        w.add(&g, 0, 1);
        w.add(&g, 100 * AGES as u64, 1); // the first bucket exactly AGES groups back
        assert_eq!(kind(&w), "bits");
        w.add(&g, 100 * AGES as u64 + 100, 1);
        assert_eq!(
            kind(&w),
            "ring",
            "AGES + 1 groups back does not fit the bits"
        );
        assert_eq!(
            w.buckets().map(|b| b.id).collect::<Vec<_>>(),
            [0, AGES as u64, AGES as u64 + 1]
        );
        assert_eq!(w.total(), 3);
        // Two units in a bucket that stops being the newest: a ring too.
        let mut w = Window::<u64>::default();
        w.add(&g, 0, 1);
        w.add(&g, 100, 2);
        assert_eq!(kind(&w), "bits", "the newest bucket may hold any count");
        w.add(&g, 200, 1);
        assert_eq!(kind(&w), "ring");
        assert_eq!(w.buckets().map(|b| b.counts).collect::<Vec<_>>(), [1, 2, 1]);
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
