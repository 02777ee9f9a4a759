//! One key's hybrid state and the decisions taken on it, with no I/O: the committer
//! (`committer.rs`) fills in the view and empties the pending buckets.
//!
//! A decision goes through one of three modes:
//! - **lease**: the last refresh (younger than the lease time to live) granted this instance
//!   a lease of units; a call is admitted outright while the units spent since that refresh
//!   plus the call fit the lease. Past it, the absolute strategy rejects (with the wait the
//!   refresh computed) and the suppressed one sheds with the key's global factor.
//! - **provisional**: no valid view yet (a new or long idle key) while Redis answers: the
//!   absolute strategy admits at the key's rate (`rate × (time waited + sync interval)`, at
//!   least one unit) until the first refresh; the suppressed one decides as in an outage.
//! - **outage**: no valid view and the last flush failed: the local core decides on this
//!   instance's own usage against `1 / N` of the capacity, `N` the lease holders last seen.

use std::collections::VecDeque;

use crate::RateLimitDecision;
use crate::absolute::AbsoluteState;
use crate::call::Call;
use crate::config::capacity;
use crate::settings::SuppressionParams;
use crate::suppressed::{SuppressedState, factor_of};
use crate::window::{Bucket, Counts, Usage, WindowGrid};

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
    pub(crate) geo: &'a WindowGrid,
    pub(crate) params: &'a SuppressionParams,
    pub(crate) sync_ms: u64,
    /// Whether the last flush reached Redis.
    pub(crate) healthy: bool,
}

impl Ctx<'_> {
    /// Units a key may admit before its first refresh, `elapsed_ms` after it started
    /// waiting for one: its rate over that time plus one sync interval, at least one unit,
    /// at most its capacity. A refresh that is late (a busy runtime) does not turn a key
    /// under its rate away.
    fn provisional(&self, cap: f64, elapsed_ms: u64) -> f64 {
        let span_ms = elapsed_ms.saturating_add(self.sync_ms) as f64;
        (cap * span_ms / (self.geo.window_seconds() * 1000) as f64)
            .min(cap)
            .max(1.0)
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
#[derive(Debug, Clone)]
pub(crate) struct Refresh {
    pub(crate) view: View,
    /// The key's oldest buckets in Redis, oldest first (absolute, past half capacity).
    pub(crate) oldest: Vec<Bucket<u64>>,
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
    /// The key's oldest buckets in Redis at the last refresh, for rejections' waits.
    oldest: Vec<Bucket<u64>>,
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
    /// Local time since which the key has had no lease (creation, or its lease ran out).
    unleased_since: u64,
    holders_last: u64,
    /// The suppressed strategy's cached factor, reused while the server's time is below
    /// `factor_until` (`suppression_factor_cache_ms`).
    factor_cached: f64,
    factor_until: u64,
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
    fn with_own(own: S, rate: f64, cap: f64, now_local: u64) -> Self {
        KeyState {
            own,
            pending: VecDeque::new(),
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
            factor_cached: 0.0,
            factor_until: 0,
        }
    }

    fn mode(&mut self, ctx: &Ctx<'_>, now: Now) -> Mode {
        if let Some(view) = self.view {
            if now.local < view.valid_until {
                return Mode::Lease(view);
            }
            if ctx.healthy && !capacity::fits_more(view.used, 1, self.cap) {
                if let Some(wait) = self.wait(ctx, now, 1) {
                    if wait.0 > 0 {
                        // The lease ran out but the key was full when last seen and still
                        // is: nothing to grant until the next refresh says otherwise.
                        return Mode::Lease(View { lease: 0.0, ..view });
                    }
                }
            }
            // The lease ran out in Redis too: what is unflushed is all that is not counted.
            self.view = None;
            self.unleased_since = now.local;
            self.spent = self.pending.iter().map(|b| b.counts.accepted()).sum();
            self.observed_since = self.pending.iter().map(|b| b.counts.observed()).sum();
        }
        if ctx.healthy {
            Mode::Provisional
        } else {
            Mode::Outage(self.holders_last.max(1))
        }
    }

    #[inline]
    fn push(&mut self, geo: &WindowGrid, now: Now, counts: C) {
        match self.pending.back_mut() {
            // Within (or behind: later, never earlier) the newest bucket; a multiply, not a
            // divide, as in the local core's window.
            Some(last) if now.server < geo.end_of(last.id) => last.counts.add(counts),
            _ => self.pending.push_back(Bucket {
                id: geo.bucket_of(now.server),
                counts,
            }),
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
    pub(crate) fn drop_expired(&mut self, geo: &WindowGrid, server_now: u64) -> u64 {
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
    pub(crate) fn job(&mut self, now_local: u64, next_seq: impl FnOnce() -> u64) -> Job<C> {
        // Only a lease is reserved: provisional units are the documented bound.
        let allowance = match self.view {
            Some(view) if now_local < view.valid_until => view.lease,
            _ => 0.0,
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
    pub(crate) fn refreshed(&mut self, seq: u64, mut refresh: Refresh) {
        if self.inflight.as_ref().is_some_and(|b| b.seq == seq) {
            self.inflight = None;
        }
        // What is still unflushed was admitted after the snapshot: it spends the new lease.
        self.spent = self.pending.iter().map(|b| b.counts.accepted()).sum();
        self.observed_since = self.pending.iter().map(|b| b.counts.observed()).sum();
        self.wanted = 1;
        self.holders_last = refresh.view.holders.max(1);
        self.view = Some(refresh.view);
        std::mem::swap(&mut self.oldest, &mut refresh.oldest);
    }

    /// Whether cleanup may drop the key: nothing unsent, no lease, nothing recent.
    fn is_idle(&self, now_local: u64) -> bool {
        !self.touched
            && self.pending.is_empty()
            && self.inflight.is_none()
            && self.view.is_none_or(|v| now_local >= v.valid_until)
    }

    /// Units of the key's oldest buckets (as Redis sent them) that stopped counting since.
    fn freed(&self, ctx: &Ctx<'_>, now: Now) -> u64 {
        self.oldest
            .iter()
            .take_while(|b| ctx.geo.expires_at(b.id) <= now.server)
            .map(|b| b.counts)
            .sum()
    }

    /// Whether `count` more units fit the lease and the call's capacity `cap`, on what this
    /// instance knows. Capacity that appeared since the refresh (buckets that expired, a
    /// higher rate) is shared as the lease was: this instance takes `1 / holders` of it.
    fn lease_fits(&self, ctx: &Ctx<'_>, now: Now, view: &View, count: u64, cap: f64) -> bool {
        if capacity::fits_more(self.spent, count, view.lease)
            && capacity::fits_more(view.used + self.spent, count, cap)
        {
            return true;
        }
        let freed = self.freed(ctx, now);
        let extra = (cap - view.cap).max(0.0) + freed as f64;
        extra > 0.0
            && capacity::fits_more(self.spent, count, view.lease + extra / view.holders as f64)
            && capacity::fits_more(view.used.saturating_sub(freed) + self.spent, count, cap)
    }

    /// How long until `count` more units fit the key's capacity, and the usage left then,
    /// from its oldest buckets in Redis (expired ones count as gone now); `None` if the
    /// buckets known do not free enough.
    fn wait(&self, ctx: &Ctx<'_>, now: Now, count: u64) -> Option<(u64, u64)> {
        let view = self.view?;
        let mut left = view.used + self.spent;
        for bucket in &self.oldest {
            left = left.saturating_sub(bucket.counts);
            if capacity::fits_more(left, count, self.cap) {
                let wait = ctx.geo.expires_at(bucket.id).saturating_sub(now.server);
                return Some((wait, left));
            }
        }
        None
    }

    fn rejection(&self, ctx: &Ctx<'_>, mode: &Mode, now: Now, count: u64) -> RateLimitDecision {
        let (retry_after_ms, remaining_after_waiting) = match mode {
            Mode::Lease(view)
                if !capacity::fits_more(
                    view.used.saturating_sub(self.freed(ctx, now)) + self.spent,
                    count,
                    self.cap,
                ) =>
            {
                match self.wait(ctx, now, count) {
                    Some((wait, left)) if wait > 0 => (wait, left),
                    // Freed already, by what Redis said: ask again after the next refresh.
                    Some((_, left)) => (ctx.sync_ms, left),
                    None => match self.oldest.last() {
                        // More buckets than were sent must expire: at least this long.
                        Some(last) if self.oldest.len() >= 32 => (
                            ctx.geo
                                .expires_at(last.id)
                                .saturating_sub(now.server)
                                .max(ctx.sync_ms),
                            0,
                        ),
                        _ => (ctx.sync_ms, view.used + self.spent),
                    },
                }
            }
            // Room left in Redis, held by other instances' leases: ask after the next refresh.
            Mode::Lease(view) => (ctx.sync_ms, view.used + self.spent),
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
    pub(crate) fn new(rate: f64, cap: f64, now_local: u64) -> Self {
        Self::with_own(AbsoluteState::new(rate), rate, cap, now_local)
    }

    /// Decides one checked call from local state.
    #[inline]
    pub(crate) fn inc(&mut self, ctx: &Ctx<'_>, now: Now, call: Call) -> RateLimitDecision {
        // The common case, kept small: a live lease with room, at the refresh's rate or less.
        if let Some(view) = &self.view {
            if now.local < view.valid_until
                && capacity::fits_more(self.spent, call.count, view.lease)
                && capacity::fits_more(view.used + self.spent, call.count, call.cap)
            {
                self.rate = call.rate;
                self.cap = call.cap;
                self.touched = true;
                self.own.record(ctx.geo, now.server, call.rate, call.count);
                self.push(ctx.geo, now, call.count);
                return RateLimitDecision::Allowed;
            }
        }
        self.inc_slow(ctx, now, call)
    }

    #[inline(never)]
    fn inc_slow(&mut self, ctx: &Ctx<'_>, now: Now, call: Call) -> RateLimitDecision {
        self.rate = call.rate;
        self.cap = call.cap;
        self.touched = true;
        let mode = self.mode(ctx, now);
        let admitted = match mode {
            // Within the lease, and within the call's own capacity on what this instance
            // knows (a lower rate applies at once, not at the next refresh).
            Mode::Lease(view) => self.lease_fits(ctx, now, &view, call.count, call.cap),
            Mode::Provisional => {
                let elapsed = now.local.saturating_sub(self.unleased_since);
                capacity::fits_more(self.spent, call.count, ctx.provisional(call.cap, elapsed))
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
            self.rejection(ctx, &mode, now, call.count)
        }
    }

    /// Whether one more unit at the latest rate would be admitted now; records nothing.
    pub(crate) fn check(&mut self, ctx: &Ctx<'_>, now: Now) -> RateLimitDecision {
        let mode = self.mode(ctx, now);
        let fits = match mode {
            Mode::Lease(view) => self.lease_fits(ctx, now, &view, 1, self.cap),
            Mode::Provisional => {
                let elapsed = now.local.saturating_sub(self.unleased_since);
                capacity::fits_more(self.spent, 1, ctx.provisional(self.cap, elapsed))
            }
            Mode::Outage(holders) => capacity::fits_more(
                self.own.usage(ctx.geo, now.server),
                1,
                self.cap / holders as f64,
            ),
        };
        if fits {
            RateLimitDecision::Allowed
        } else {
            self.rejection(ctx, &mode, now, 1)
        }
    }

    pub(crate) fn idle(&mut self, geo: &WindowGrid, now: Now) -> bool {
        self.own.usage(geo, now.server) == 0 && self.is_idle(now.local)
    }
}

/// One key under the suppressed strategy.
pub(crate) type SuppressedKey = KeyState<SuppressedState, Usage>;

impl SuppressedKey {
    pub(crate) fn new(rate: f64, cap: f64, now_local: u64) -> Self {
        Self::with_own(SuppressedState::new(rate), rate, cap, now_local)
    }

    fn record(&mut self, ctx: &Ctx<'_>, now: Now, accepted: u64, observed: u64) {
        self.own.usage(ctx.geo, now.server);
        self.own.record(ctx.geo, now.server, accepted, observed);
        self.push(ctx.geo, now, Usage { accepted, observed });
    }

    /// The key's observed usage: Redis's at the refresh, plus what this instance observed
    /// since, times the holders (the others observe about as much).
    fn observed_estimate(&self, view: &View) -> u64 {
        view.observed
            .saturating_add(self.observed_since.saturating_mul(view.holders))
    }

    /// The local core's formula on the key's Redis-wide observed usage at the refresh.
    fn formula(&self, ctx: &Ctx<'_>, view: &View) -> f64 {
        factor_of(ctx.geo, view.at, self.rate, view.observed, view.recent)
    }

    /// Decides one checked call from local state; `draw` as in the local core.
    #[inline]
    pub(crate) fn inc(
        &mut self,
        ctx: &Ctx<'_>,
        now: Now,
        call: Call,
        draw: impl FnOnce() -> f64,
    ) -> RateLimitDecision {
        // The common case, kept small: a live lease with room, under the hard limit.
        if let Some(view) = &self.view {
            if call.rate == self.rate
                && now.local < view.valid_until
                && capacity::fits_more(self.spent, call.count, view.lease)
                && capacity::fits_more(view.used + self.spent, call.count, call.cap)
                && !capacity::reaches(
                    self.observed_estimate(view),
                    call.cap * ctx.params.hard_limit_factor,
                )
            {
                self.touched = true;
                self.record(ctx, now, call.count, call.count);
                return RateLimitDecision::Allowed;
            }
        }
        self.inc_slow(ctx, now, call, draw)
    }

    #[inline(never)]
    fn inc_slow(
        &mut self,
        ctx: &Ctx<'_>,
        now: Now,
        call: Call,
        draw: impl FnOnce() -> f64,
    ) -> RateLimitDecision {
        if call.rate != self.rate {
            self.factor_until = 0;
        }
        self.rate = call.rate;
        self.cap = call.cap;
        self.touched = true;
        let n = call.count;
        match self.mode(ctx, now) {
            Mode::Lease(view) => {
                let hard = call.cap * ctx.params.hard_limit_factor;
                if capacity::reaches(self.observed_estimate(&view), hard) {
                    self.record(ctx, now, 0, n);
                    return RateLimitDecision::Suppressed {
                        suppression_factor: 1.0,
                        is_allowed: false,
                    };
                }
                if self.lease_fits(ctx, now, &view, n, call.cap) {
                    self.record(ctx, now, n, n);
                    return RateLimitDecision::Allowed;
                }
                self.wanted = self.wanted.max(n);
                let factor = if now.server < self.factor_until {
                    self.factor_cached
                } else {
                    self.factor_cached = self.formula(ctx, &view);
                    self.factor_until = now.server.saturating_add(ctx.params.cache_ms);
                    self.factor_cached
                };
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
                let hard = self.cap * ctx.params.hard_limit_factor;
                if capacity::reaches(self.observed_estimate(&view), hard) {
                    1.0
                } else if self.lease_fits(ctx, now, &view, 1, self.cap) {
                    0.0
                } else {
                    self.formula(ctx, &view)
                }
            }
            Mode::Provisional | Mode::Outage(_) => {
                self.own.factor_now(ctx.geo, ctx.params, now.server)
            }
        }
    }

    pub(crate) fn idle(&mut self, geo: &WindowGrid, now: Now) -> bool {
        self.own.usage(geo, now.server).observed == 0 && self.is_idle(now.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RateGroupSizeMs, WindowSizeSeconds};

    const PARAMS: SuppressionParams = SuppressionParams {
        hard_limit_factor: 1.5,
        cache_ms: 0,
    };

    fn geo() -> WindowGrid {
        WindowGrid::new(
            WindowSizeSeconds::try_from(10).unwrap(),
            RateGroupSizeMs::try_from(100).unwrap(),
        )
        .unwrap()
    }

    fn ctx(geo: &WindowGrid, healthy: bool) -> Ctx<'_> {
        Ctx {
            geo,
            params: &PARAMS,
            sync_ms: 10,
            healthy,
        }
    }

    fn at(ms: u64) -> Now {
        Now {
            local: ms,
            server: 1_000_000 + ms,
        }
    }

    /// 10/s over 10 s: capacity 100.
    fn call(now: Now, count: u64) -> Call {
        Call {
            now_ms: now.server,
            rate: 10.0,
            count,
            cap: 100.0,
        }
    }

    fn view(lease: f64, used: u64, holders: u64, now: Now) -> Refresh {
        Refresh {
            view: View {
                lease,
                used,
                holders,
                cap: 100.0,
                observed: used,
                recent: 0,
                at: now.server,
                valid_until: now.local + 200,
            },
            oldest: Vec::new(),
        }
    }

    #[test]
    fn a_new_key_admits_its_provisional_units_then_waits_for_a_refresh() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        // max(1, 100 × 10 ms / 10 s) = 1 unit before the first refresh.
        assert!(key.inc(&c, at(0), call(at(0), 1)).is_allowed());
        match key.inc(&c, at(1), call(at(1), 1)) {
            RateLimitDecision::Rejected { retry_after_ms, .. } => assert_eq!(retry_after_ms, 10),
            other => panic!("{other:?}"),
        }
        assert_eq!(key.held_buckets(), 1);
        // A late refresh: the key goes on at its rate, 10/s: rate × (t + 10 ms) reaches two
        // units at t = 190 ms (1.6 at 150 ms).
        assert!(!key.inc(&c, at(150), call(at(150), 1)).is_allowed());
        assert!(key.inc(&c, at(190), call(at(190), 1)).is_allowed());
        assert!(!key.inc(&c, at(200), call(at(200), 1)).is_allowed());
    }

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
    fn capacity_freed_between_refreshes_is_shared_by_the_holders() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        let mut refresh = view(0.0, 100, 2, at(0));
        // Bucket 9_990 (the server's 999 000 ms) expires at 1 000 100 + 10 000 = local 10 000 - 900.
        refresh.oldest = vec![Bucket {
            id: 9_990,
            counts: 40,
        }];
        refresh.view.valid_until = 1_000_000;
        key.refreshed(0, refresh);
        let expiry_local = g.expires_at(9_990) - 1_000_000;
        match key.inc(&c, at(expiry_local - 1), call(at(expiry_local - 1), 1)) {
            RateLimitDecision::Rejected {
                retry_after_ms,
                remaining_after_waiting,
                ..
            } => assert_eq!((retry_after_ms, remaining_after_waiting), (1, 60)),
            other => panic!("{other:?}"),
        }
        // 40 freed, 2 holders: 20 for this instance.
        let now = at(expiry_local);
        let admitted = (0..30)
            .filter(|_| key.inc(&c, now, call(now, 1)).is_allowed())
            .count();
        assert_eq!(admitted, 20);
    }

    #[test]
    fn without_redis_and_without_a_lease_the_local_core_decides_on_a_share() {
        let g = geo();
        let c = ctx(&g, false);
        let mut key = AbsoluteKey::new(10.0, 100.0, 0);
        // Last seen with 4 holders; the lease ran out (valid until 200).
        key.refreshed(0, view(0.0, 0, 4, at(0)));
        let now = at(500);
        let admitted = (0..100)
            .filter(|_| key.inc(&c, now, call(now, 1)).is_allowed())
            .count();
        assert_eq!(admitted, 25, "a quarter of the capacity");
        assert_eq!(key.held_buckets(), 1, "everything admitted waits for Redis");
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

    #[test]
    fn suppressed_sheds_with_the_redis_wide_factor_past_its_lease() {
        let g = geo();
        let c = ctx(&g, true);
        let mut key = SuppressedKey::new(10.0, 100.0, 0);
        let mut refresh = view(0.0, 100, 1, at(0));
        // 120 observed in the window, 20 in the last second: R = max(12, 20) = 20/s.
        refresh.view.observed = 120;
        refresh.view.recent = 20;
        key.refreshed(0, refresh);
        let expected = factor_of(&g, at(0).server, 10.0, 120, 20);
        assert!(expected > 0.0);
        match key.inc(&c, at(1), call(at(1), 1), || 0.0) {
            RateLimitDecision::Suppressed {
                suppression_factor,
                is_allowed,
            } => {
                assert_eq!(suppression_factor, expected);
                assert!(!is_allowed);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(key.factor(&c, at(2)), expected);
        // The hard limit (150) on Redis-wide observed usage: factor 1.
        let mut over = view(0.0, 100, 1, at(3));
        over.view.observed = 150;
        key.refreshed(0, over);
        assert_eq!(key.factor(&c, at(3)), 1.0);
    }
}
