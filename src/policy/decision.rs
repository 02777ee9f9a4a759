//! What a limit set answers: one outcome for the request, and where each limit stands.

use super::limit::MAX_LIMITS;

/// The request's outcome under its whole set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every limit admitted it; it counts in every limit.
    Allowed,
    /// An absolute limit refused it (`429`); it counts in no limit.
    Rejected,
    /// No absolute limit refused it, but a suppressed limit shed it (`503`). It counts as
    /// observed (offered, declined) in the limits that shed it, and in no other.
    Shed,
}

/// Where one limit of the set stands after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LimitStatus {
    /// Whole requests of cost 1 this limit would still admit now (its quota minus its
    /// accepted usage, rounded down).
    pub remaining: u64,
    /// Milliseconds until this limit's usage next falls (its oldest bucket expires), or, for a
    /// limit that refused, until it would admit the same call. At most the window; 0 when
    /// nothing is counted.
    pub reset_ms: u64,
    /// The suppressed strategy's factor for this limit (0 for an absolute limit, and below
    /// the quota).
    pub suppression_factor: f64,
    /// Whether this limit refused or shed the request.
    pub refused: bool,
}

impl LimitStatus {
    /// Whole requests of cost 1 a quota of `cap` still admits with `accepted` counted: the
    /// `remaining` every provider reports.
    #[inline]
    pub(crate) fn remaining_of(cap: f64, accepted: u64) -> u64 {
        // The cast rounds toward zero: the floor of a number that is not negative (and
        // needs no call to `floor`, which the baseline x86-64 target does not inline).
        (cap - accepted as f64).max(0.0) as u64
    }
}

/// The answer for one request under a [`LimitSet`](super::LimitSet).
///
/// A set of up to three limits keeps its statuses inline: the decision is 112
/// bytes and takes no allocation, so returning and moving it costs a few register moves
/// (with room for all [`MAX_LIMITS`] inline it was 280 bytes, whose copy out of the
/// `Result` was a `memcpy` call on every request). A bigger set keeps them in one boxed
/// array, allocated per decision: so the decision is `Clone`, not `Copy`.
#[derive(Debug, Clone)]
pub struct SetDecision {
    pub(crate) outcome: Outcome,
    pub(crate) len: u8,
    pub(crate) retry_after_ms: u64,
    /// `len` statuses in the set's order (past them, defaults).
    pub(crate) limits: Statuses,
}

/// How many limits' statuses a [`SetDecision`] holds without an allocation.
pub(crate) const INLINE_LIMITS: usize = 3;

/// A decision's statuses: indexed as a slice of [`MAX_LIMITS`] or [`INLINE_LIMITS`] of them.
#[derive(Debug, Clone)]
pub(crate) enum Statuses {
    Inline([LimitStatus; INLINE_LIMITS]),
    Boxed(Box<[LimitStatus; MAX_LIMITS]>),
}

impl Statuses {
    /// Room for `len` statuses, all default.
    #[inline]
    fn new(len: usize) -> Self {
        if len <= INLINE_LIMITS {
            Statuses::Inline([LimitStatus::default(); INLINE_LIMITS])
        } else {
            Statuses::Boxed(Box::new([LimitStatus::default(); MAX_LIMITS]))
        }
    }
}

impl std::ops::Deref for Statuses {
    type Target = [LimitStatus];
    #[inline]
    fn deref(&self) -> &[LimitStatus] {
        match self {
            Statuses::Inline(a) => a,
            Statuses::Boxed(b) => &b[..],
        }
    }
}

impl std::ops::DerefMut for Statuses {
    #[inline]
    fn deref_mut(&mut self) -> &mut [LimitStatus] {
        match self {
            Statuses::Inline(a) => a,
            Statuses::Boxed(b) => &mut b[..],
        }
    }
}

impl PartialEq for SetDecision {
    fn eq(&self, other: &Self) -> bool {
        self.outcome == other.outcome
            && self.retry_after_ms == other.retry_after_ms
            && self.limits() == other.limits()
    }
}

impl SetDecision {
    /// An admission with nothing counted, for a set of `len` limits: what a provider fills.
    #[inline]
    pub(crate) fn empty(len: usize) -> Self {
        SetDecision {
            outcome: Outcome::Allowed,
            retry_after_ms: 0,
            len: len as u8,
            limits: Statuses::new(len),
        }
    }

    /// The outcome.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether the request was admitted.
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allowed
    }

    /// For a refused or shed request: the shortest wait after which every limit of the set
    /// would admit the same call, given the usage counted now (the longest of the refusing
    /// limits' waits). `u64::MAX` means never (the cost exceeds a limit's quota). For a shed
    /// request below its hard limit any moment may admit it: this is then 1 s, the factor's
    /// own time scale, capped at the window. 0 when allowed.
    pub fn retry_after_ms(&self) -> u64 {
        self.retry_after_ms
    }

    /// Each limit's status, in the set's order.
    pub fn limits(&self) -> &[LimitStatus] {
        &self.limits[..usize::from(self.len)]
    }

    /// The positions (in the set's order) of the limits that refused or shed the request.
    pub fn refused(&self) -> impl Iterator<Item = usize> + '_ {
        self.limits()
            .iter()
            .enumerate()
            .filter(|(_, l)| l.refused)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_is_the_size_its_docs_give_and_its_statuses_index_alike() {
        assert_eq!(size_of::<SetDecision>(), 112);
        assert!(size_of::<Result<SetDecision, crate::Error>>() <= 112);
        for len in 1..=MAX_LIMITS {
            let mut d = SetDecision::empty(len);
            for i in 0..len {
                d.limits[i].remaining = i as u64 + 1;
            }
            let remaining: Vec<u64> = d.limits().iter().map(|l| l.remaining).collect();
            assert_eq!(remaining, (1..=len as u64).collect::<Vec<_>>(), "len {len}");
            assert_eq!(d, d.clone());
        }
    }

    /// Decisions are equal iff their outcome, wait and statuses are (the slots past `len`
    /// and where the statuses live do not count).
    #[test]
    fn decisions_differ_in_outcome_wait_status_or_length() {
        let base = SetDecision::empty(2);
        let mut other = base.clone();
        other.outcome = Outcome::Rejected;
        assert_ne!(base, other);
        let mut other = base.clone();
        other.retry_after_ms = 1;
        assert_ne!(base, other);
        let mut other = base.clone();
        other.limits[1].refused = true;
        assert_ne!(base, other);
        assert_ne!(base, SetDecision::empty(3));
        assert_ne!(SetDecision::empty(3), SetDecision::empty(4));
        let mut past_len = base.clone();
        past_len.limits[2].remaining = 9;
        assert_eq!(
            base, past_len,
            "a slot past the set's limits is not compared"
        );
    }
}
