//! Giving units back to a window: the refund behind counting by outcome (a layer that counts
//! only some responses reserves a unit before the handler and gives it back after).
//!
//! A refund names the buckets its units may be in, `[from, to]` (the bucket of a time just
//! before the reservation and of one just after it), and takes the units from the oldest of
//! those buckets first. The reserved units are in one of them, so taking from an older one
//! or the same one never lets a later call fit earlier than it would have had the unit never
//! been counted: what is left is attributed to buckets at least as new as its own, and
//! expires no earlier. A bucket that has already left the window gives nothing back (its
//! units no longer count anyway).

use super::{Bits, Counts, Shape, Usage, Window};

/// Counts a refund can take units out of.
pub(crate) trait Refund: Counts {
    /// Takes up to `want`'s admitted units out of `self`; lowers `want` by what was taken
    /// and returns it.
    fn take_from(&mut self, want: &mut Self) -> Self;
}

impl Refund for u64 {
    #[inline]
    fn take_from(&mut self, want: &mut Self) -> Self {
        let taken = (*self).min(*want);
        *self -= taken;
        *want -= taken;
        taken
    }
}

impl Refund for Usage {
    /// An admitted unit was counted as accepted and observed: both go back. Units the
    /// bucket declined (observed, not accepted) stay.
    #[inline]
    fn take_from(&mut self, want: &mut Self) -> Self {
        let taken = self.accepted.min(want.accepted);
        self.accepted -= taken;
        self.observed = self.observed.saturating_sub(taken);
        want.accepted -= taken;
        want.observed = want.observed.saturating_sub(taken);
        Usage {
            accepted: taken,
            observed: taken,
        }
    }
}

impl<C: Refund> Window<C> {
    /// Takes `units` back from the live buckets with ids in `[from, to]`, oldest first;
    /// returns what could not be found there (zero when all of it was).
    pub(crate) fn take_back(&mut self, from: u64, to: u64, units: C) -> C {
        let mut want = units;
        if self.is_empty() || want.is_zero() {
            return want;
        }
        // Written for rings: older buckets kept as bits move into one first.
        self.move_into_ring();
        let ring = match &mut self.shape {
            Shape::Bits(bits) => {
                // A lone bucket's counts are the total; taking all of them empties the window.
                if (from..=to).contains(&bits.newest()) {
                    self.total.take_from(&mut want);
                }
                return want;
            }
            Shape::Ring(ring) => ring,
        };
        let mut taken = C::default();
        for i in 0..ring.len() {
            let at = ring.slot(i);
            let slot = &mut ring.slots[at];
            if want.is_zero() || slot.id > to {
                break;
            }
            if slot.id >= from {
                taken.add(slot.counts.take_from(&mut want));
            }
        }
        self.total.sub(taken);
        // Zero counts in the newest bucket would read as an empty window: the next older
        // bucket that holds anything becomes the newest.
        while ring.back().counts.is_zero() {
            ring.pop_back();
            if ring.len() == 1 {
                // What is left is in the one bucket: the total (zero if it is empty too).
                self.shape = Shape::Bits(Bits::one(ring.front().id));
                break;
            }
        }
        want
    }
}

#[cfg(test)]
mod tests {
    use super::super::WindowGrid;
    use super::*;

    fn buckets<C: Counts>(w: &Window<C>) -> Vec<(u64, C)> {
        w.buckets().map(|b| (b.id, b.counts)).collect()
    }

    #[test]
    fn a_refund_takes_from_the_oldest_named_bucket_and_keeps_the_total() {
        let g = WindowGrid::for_tests(1, 100);
        let mut w = Window::<u64>::default();
        for (t, n) in [(0, 1), (150, 2), (420, 4)] {
            w.add(&g, t, n);
        }
        // Buckets 1..=4 hold 2 and 4: two units from bucket 1, one from bucket 4.
        assert_eq!(w.take_back(1, 4, 3), 0);
        assert_eq!(buckets(&w), [(0, 1), (1, 0), (4, 3)]);
        assert_eq!(w.total(), 4);
        // Nothing named holds more: the rest is reported back.
        assert_eq!(w.take_back(2, 3, 5), 5);
        assert_eq!(w.take_back(4, 9, 5), 2);
        // The newest bucket emptied, and the one before it: bucket 0 is the newest now.
        assert_eq!(buckets(&w), [(0, 1)]);
        assert_eq!(w.total(), 1);
        w.expire(&g, 1100);
        assert!(w.is_empty());
    }

    #[test]
    fn emptying_the_only_bucket_empties_the_window_and_a_grown_ring_gives_back_too() {
        let g = WindowGrid::for_tests(10, 100);
        let mut w = Window::<u64>::default();
        w.add(&g, 50, 1);
        assert_eq!(w.take_back(0, 0, 1), 0);
        assert!(w.is_empty());
        w.add(&g, 60, 2);
        assert_eq!(buckets(&w), [(0, 2)], "a fresh bucket after the refund");
        // A ring that grew past its first slots.
        for t in 1..20 {
            w.add(&g, t * 100, 1);
        }
        assert!(matches!(&w.shape, Shape::Ring(r) if r.slots.len() >= 20));
        assert_eq!(w.take_back(3, 5, 2), 0);
        assert_eq!(w.total(), 2 + 19 - 2);
        let ids: Vec<_> = buckets(&w).into_iter().filter(|b| b.1 == 0).collect();
        assert_eq!(ids, [(3, 0), (4, 0)]);
        // Empty the newest bucket of a ring: the next one moves up.
        assert_eq!(w.take_back(19, 19, 1), 0);
        assert_eq!(buckets(&w).last(), Some(&(18, 1)));
        assert_eq!(w.total(), 18);
    }

    #[test]
    fn a_suppressed_refund_gives_back_admitted_units_only() {
        let g = WindowGrid::for_tests(10, 100);
        let mut w = Window::<Usage>::default();
        w.add(
            &g,
            0,
            Usage {
                accepted: 1,
                observed: 3,
            },
        );
        let left = w.take_back(
            0,
            0,
            Usage {
                accepted: 2,
                observed: 2,
            },
        );
        assert_eq!(
            left,
            Usage {
                accepted: 1,
                observed: 1
            }
        );
        assert_eq!(
            w.total(),
            Usage {
                accepted: 0,
                observed: 2
            }
        );
        assert!(!w.is_empty(), "declined units still count as observed");
    }
}
