//! One key's hybrid state and the decisions taken on it, with no I/O: the committer
//! (`committer.rs`) fills in the view and empties the pending buckets.
//!
//! A decision goes through one of three modes:
//! - **lease**: the last refresh (younger than the lease time to live) granted this instance
//!   a lease of units; a call is admitted outright while the units spent since that refresh
//!   plus the call fit the lease. Past it, the absolute strategy rejects (with the wait the
//!   refresh computed) and the suppressed one sheds with the key's global factor.
//! - **provisional**: no valid view yet (a new or long idle key) while Redis answers: the
//!   absolute strategy admits up to `max(1, rate × sync interval)` units until the first
//!   refresh; the suppressed one decides as in an outage.
//! - **outage**: no valid view and the last flush failed: the local core decides on this
//!   instance's own usage against `1 / N` of the capacity, `N` the lease holders last seen.

use std::collections::VecDeque;

use crate::RateLimitDecision;
use crate::absolute::{AbsoluteState, Call};
use crate::config::capacity;
use crate::suppressed::{SuppressedState, SuppressionParams};
use crate::window::{Bucket, Counts, Geometry, Usage};

/// The most buckets one key sends in one flush (oldest first): after a long outage the rest
/// follow in the next cycles, so no script call carries an unbounded list.
pub(crate) const MAX_BUCKETS_PER_BATCH: usize = 256;

/// What the last refresh said about a key, from Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    /// Units this instance may admit outright until its next refresh.
    pub(crate) lease: f64,
    /// Accepted usage in Redis at the refresh.
    pub(crate) used: u64,
    /// Instances holding a live lease on the key, this one included.
    pub(crate) holders: u64,
    /// Wait until one more unit fits (`-1` never, `-2` room left), at the refresh.
    pub(crate) wait_ms: i64,
    /// Accepted usage left after that wait.
    pub(crate) left: u64,
    /// Observed usage in Redis (suppressed strategy).
    pub(crate) observed: u64,
    /// The key's suppression factor from its global usage (suppressed strategy).
    pub(crate) factor: f64,
    /// Whether the key was over its hard limit (suppressed strategy).
    pub(crate) hard: bool,
    /// Local time the refresh was sent.
    pub(crate) taken_at: u64,
    /// Local time until which the lease holds (its Redis entry outlives it).
    pub(crate) valid_until: u64,
}

/// A batch sent to Redis and not yet acknowledged: resent as is, same sequence number,
/// until a reply says it landed (once).
#[derive(Debug, Clone)]
pub(crate) struct Batch<C> {
    pub(crate) seq: u64,
    pub(crate) buckets: Vec<Bucket<C>>,
}

/// "Now" on both clocks: the limiter's for validity, the server's grid for bucket ids.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) local: u64,
    pub(crate) server: u64,
}

/// What a decision needs beyond the key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) geo: &'a Geometry,
    pub(crate) params: &'a SuppressionParams,
    pub(crate) sync_ms: u64,
    /// Whether the last flush reached Redis.
    pub(crate) healthy: bool,
}

impl Ctx<'_> {
    /// Units a key may admit before its first refresh: the rate over one sync interval, at
    /// least one unit.
    fn provisional(&self, cap: f64) -> f64 {
        (cap * self.sync_ms as f64 / (self.geo.window_seconds() * 1000) as f64).max(1.0)
    }
}

enum Mode {
    Lease(View),
    Provisional,
    Outage(u64),
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

/// The refresh part of a reply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refresh {
    pub(crate) view: View,
}

/// One key: `S` is the local core's state of this instance's own admissions (for outage
/// decisions), `C` what a bucket counts.
#[derive(Debug)]
pub(crate) struct KeyState<S, C> {
    own: S,
    /// Increments not yet sent, oldest first, one entry per bucket.
    pending: VecDeque<Bucket<C>>,
    inflight: Option<Batch<C>>,
    view: Option<View>,
    /// Accepted units since the view's snapshot (counted against its lease).
    spent: u64,
    /// Observed units since the view's snapshot.
    observed_since: u64,
    /// The largest count a lease could not fit since the last refresh.
    wanted: u64,
    rate: f64,
    cap: f64,
    /// Decided on since the last refresh.
    touched: bool,
    holders_last: u64,
}

/// Accepted units of a bucket's counts (the first value the script reads).
pub(crate) trait Units: Counts {
    fn accepted(&self) -> u64;
    fn observed(&self) -> u64;
}

impl Units for u64 {
    fn accepted(&self) -> u64 {
        *self
    }
    fn observed(&self) -> u64 {
        *self
    }
}

impl Units for Usage {
    fn accepted(&self) -> u64 {
        self.accepted
    }
    fn observed(&self) -> u64 {
        self.observed
    }
}

impl<S, C: Units> KeyState<S, C> {
    fn with_own(own: S, rate: f64, cap: f64) -> Self {
        KeyState {
            own,
            pending: VecDeque::new(),
            inflight: None,
            view: None,
            spent: 0,
            observed_since: 0,
            wanted: 1,
            rate,
            cap,
            touched: true,
            holders_last: 1,
        }
    }

    fn mode(&mut self, ctx: &Ctx<'_>, now: Now) -> Mode {
        if let Some(view) = self.view {
            if now.local < view.valid_until {
                return Mode::Lease(view);
            }
            if ctx.healthy && view.wait_ms != -2 {
                let full_until = match u64::try_from(view.wait_ms) {
                    Ok(wait) => view.taken_at.saturating_add(wait),
                    Err(_) => u64::MAX,
                };
                if now.local < full_until {
                    // The lease ran out but the key was full when last seen and still is:
                    // nothing to grant until the next refresh says otherwise.
                    return Mode::Lease(View { lease: 0.0, ..view });
                }
            }
            // The lease ran out in Redis too: what is unflushed is all that is not counted.
            self.view = None;
            self.spent = self.pending.iter().map(|b| b.counts.accepted()).sum();
            self.observed_since = self.pending.iter().map(|b| b.counts.observed()).sum();
        }
        if ctx.healthy {
            Mode::Provisional
        } else {
            Mode::Outage(self.holders_last.max(1))
        }
    }

    fn push(&mut self, geo: &Geometry, now: Now, counts: C) {
        let id = geo.bucket_of(now.server);
        match self.pending.back_mut() {
            // A time behind the newest bucket counts in it: later, never earlier.
            Some(last) if last.id >= id => last.counts.add(counts),
            _ => self.pending.push_back(Bucket { id, counts }),
        }
        self.spent += counts.accepted();
        self.observed_since += counts.observed();
    }

    /// Whether the committer has anything to do for this key.
    pub(crate) fn is_dirty(&self) -> bool {
        self.touched || !self.pending.is_empty() || self.inflight.is_some()
    }

    /// Pending and in-flight buckets held in memory.
    pub(crate) fn held_buckets(&self) -> usize {
        self.pending.len() + self.inflight.as_ref().map_or(0, |b| b.buckets.len())
    }

    /// Drops held buckets that no longer count at `server_now`; returns their units.
    pub(crate) fn drop_expired(&mut self, geo: &Geometry, server_now: u64) -> u64 {
        let live = geo.oldest_live(server_now);
        let mut dropped = 0;
        while let Some(front) = self.pending.front() {
            if front.id >= live {
                break;
            }
            dropped += front.counts.accepted();
            self.pending.pop_front();
        }
        if let Some(batch) = self.inflight.as_mut() {
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
        self.pending.pop_front().map(|b| b.counts.accepted())
    }

    /// Takes what to send: the unacknowledged batch again, or the pending buckets under a
    /// new sequence number from `next_seq`.
    pub(crate) fn job(
        &mut self,
        ctx: &Ctx<'_>,
        now_local: u64,
        next_seq: impl FnOnce() -> u64,
    ) -> Job<C> {
        let allowance = match self.view {
            Some(view) if now_local < view.valid_until => view.lease,
            Some(_) => 0.0,
            None if ctx.healthy => ctx.provisional(self.cap),
            None => 0.0,
        };
        let held = (allowance - self.spent as f64).max(0.0);
        if self.inflight.is_none() && !self.pending.is_empty() {
            let take = self.pending.len().min(MAX_BUCKETS_PER_BATCH);
            self.inflight = Some(Batch {
                seq: next_seq(),
                buckets: self.pending.drain(..take).collect(),
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
    pub(crate) fn refreshed(&mut self, seq: u64, refresh: Refresh) {
        if self.inflight.as_ref().is_some_and(|b| b.seq == seq) {
            self.inflight = None;
        }
        // What is still unflushed was admitted after the snapshot: it spends the new lease.
        self.spent = self.pending.iter().map(|b| b.counts.accepted()).sum();
        self.observed_since = self.pending.iter().map(|b| b.counts.observed()).sum();
        self.wanted = 1;
        self.holders_last = refresh.view.holders.max(1);
        self.view = Some(refresh.view);
    }

    /// Whether cleanup may drop the key: nothing unsent, no lease, nothing recent.
    fn is_idle(&self, now_local: u64) -> bool {
        !self.touched
            && self.pending.is_empty()
            && self.inflight.is_none()
            && self.view.is_none_or(|v| now_local >= v.valid_until)
    }

    fn rejection(&self, ctx: &Ctx<'_>, mode: &Mode, now: Now) -> RateLimitDecision {
        let (retry_after_ms, remaining_after_waiting) = match mode {
            Mode::Lease(view) => match view.wait_ms {
                -1 => (u64::MAX, 0),
                wait if wait >= 0 => {
                    let elapsed = now.local.saturating_sub(view.taken_at);
                    match (wait as u64).checked_sub(elapsed) {
                        Some(left) if left > 0 => (left, view.left),
                        _ => (ctx.sync_ms, view.left),
                    }
                }
                // Room left in Redis, held by other instances' leases: ask after the next refresh.
                _ => (ctx.sync_ms, view.used),
            },
            _ => (ctx.sync_ms, self.spent),
        };
        RateLimitDecision::Rejected {
            window_size_seconds: ctx.geo.window_seconds(),
            retry_after_ms,
            remaining_after_waiting,
        }
    }
}

/// One key under the absolute strategy.
pub(crate) type AbsoluteKey = KeyState<AbsoluteState, u64>;

impl AbsoluteKey {
    pub(crate) fn new(rate: f64, cap: f64) -> Self {
        Self::with_own(AbsoluteState::new(rate), rate, cap)
    }

    /// Decides one checked call from local state.
    pub(crate) fn inc(&mut self, ctx: &Ctx<'_>, now: Now, call: Call) -> RateLimitDecision {
        self.rate = call.rate;
        self.cap = call.cap;
        self.touched = true;
        let mode = self.mode(ctx, now);
        let admitted = match mode {
            Mode::Lease(view) => capacity::fits_more(self.spent, call.count, view.lease),
            Mode::Provisional => {
                capacity::fits_more(self.spent, call.count, ctx.provisional(call.cap))
            }
            Mode::Outage(holders) => {
                let share = Call {
                    now_ms: now.server,
                    cap: call.cap / holders as f64,
                    ..call
                };
                let decision = self.own.inc(ctx.geo, share);
                if decision.is_allowed() {
                    self.push(ctx.geo, now, call.count);
                }
                return decision;
            }
        };
        if admitted {
            self.own.record(ctx.geo, now.server, call.rate, call.count);
            self.push(ctx.geo, now, call.count);
            RateLimitDecision::Allowed
        } else {
            self.wanted = self.wanted.max(call.count);
            self.rejection(ctx, &mode, now)
        }
    }

    /// Whether one more unit at the latest rate would be admitted now; records nothing.
    pub(crate) fn check(&mut self, ctx: &Ctx<'_>, now: Now) -> RateLimitDecision {
        let mode = self.mode(ctx, now);
        let fits = match mode {
            Mode::Lease(view) => capacity::fits_more(self.spent, 1, view.lease),
            Mode::Provisional => capacity::fits_more(self.spent, 1, ctx.provisional(self.cap)),
            Mode::Outage(holders) => capacity::fits_more(
                self.own.usage(ctx.geo, now.server),
                1,
                self.cap / holders as f64,
            ),
        };
        if fits {
            RateLimitDecision::Allowed
        } else {
            self.rejection(ctx, &mode, now)
        }
    }

    pub(crate) fn idle(&mut self, geo: &Geometry, now: Now) -> bool {
        self.own.usage(geo, now.server) == 0 && self.is_idle(now.local)
    }
}

/// One key under the suppressed strategy.
pub(crate) type SuppressedKey = KeyState<SuppressedState, Usage>;

impl SuppressedKey {
    pub(crate) fn new(rate: f64, cap: f64) -> Self {
        Self::with_own(SuppressedState::new(rate), rate, cap)
    }

    fn record(&mut self, ctx: &Ctx<'_>, now: Now, accepted: u64, observed: u64) {
        self.own.usage(ctx.geo, now.server);
        self.own.record(ctx.geo, now.server, accepted, observed);
        self.push(ctx.geo, now, Usage { accepted, observed });
    }

    /// Decides one checked call from local state; `draw` as in the local core.
    pub(crate) fn inc(
        &mut self,
        ctx: &Ctx<'_>,
        now: Now,
        call: Call,
        draw: impl FnOnce() -> f64,
    ) -> RateLimitDecision {
        self.rate = call.rate;
        self.cap = call.cap;
        self.touched = true;
        let n = call.count;
        match self.mode(ctx, now) {
            Mode::Lease(view) => {
                // Others observe about as much as this instance since the refresh.
                let observed = view
                    .observed
                    .saturating_add(self.observed_since.saturating_mul(view.holders));
                let hard = call.cap * ctx.params.hard_limit_factor;
                if view.hard || capacity::reaches(observed, hard) {
                    self.record(ctx, now, 0, n);
                    return RateLimitDecision::Suppressed {
                        suppression_factor: 1.0,
                        is_allowed: false,
                    };
                }
                if capacity::fits_more(self.spent, n, view.lease) {
                    self.record(ctx, now, n, n);
                    return RateLimitDecision::Allowed;
                }
                self.wanted = self.wanted.max(n);
                let factor = view.factor;
                let is_allowed = draw() >= factor;
                self.record(ctx, now, if is_allowed { n } else { 0 }, n);
                RateLimitDecision::Suppressed {
                    suppression_factor: factor,
                    is_allowed,
                }
            }
            // No lease yet or Redis away: the local core on this instance's own usage.
            Mode::Provisional | Mode::Outage(_) => {
                let holders = self.holders_last.max(1);
                let share = Call {
                    now_ms: now.server,
                    rate: call.rate / holders as f64,
                    cap: call.cap / holders as f64,
                    count: n,
                };
                let decision = self.own.inc(ctx.geo, ctx.params, share, draw);
                let accepted = if decision.is_allowed() { n } else { 0 };
                self.push(
                    ctx.geo,
                    now,
                    Usage {
                        accepted,
                        observed: n,
                    },
                );
                decision
            }
        }
    }

    /// The factor a call would see now; records nothing.
    pub(crate) fn factor(&mut self, ctx: &Ctx<'_>, now: Now) -> f64 {
        match self.mode(ctx, now) {
            Mode::Lease(view) => {
                let observed = view
                    .observed
                    .saturating_add(self.observed_since.saturating_mul(view.holders));
                if view.hard || capacity::reaches(observed, self.cap * ctx.params.hard_limit_factor)
                {
                    1.0
                } else if capacity::fits_more(self.spent, 1, view.lease) {
                    0.0
                } else {
                    view.factor
                }
            }
            Mode::Provisional | Mode::Outage(_) => {
                self.own.factor_now(ctx.geo, ctx.params, now.server)
            }
        }
    }

    pub(crate) fn idle(&mut self, geo: &Geometry, now: Now) -> bool {
        self.own.usage(geo, now.server).observed == 0 && self.is_idle(now.local)
    }
}
