//! The committer: a tokio task that, every sync interval, sends every dirty key's pending
//! increments and asks for its lease in one pipelined round trip, then applies the replies.
//! It is the only thing that talks to Redis, so a key is refreshed at most once per cycle
//! however many callers hit it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use super::core::HybridCore;
use super::flush::{KeyJob, MAX_KEYS_PER_PIPELINE};
use super::policy::Dest;
use super::walk::for_each;
use crate::redis::StrategyTag;

/// How many of a cycle's pipelines are on their way to Redis at once: two keep the server
/// busy while a reply travels back, and a pipeline waits behind at most one other, so its
/// deadline measures its own work (a cluster's pipelines are split per key anyway).
const PIPELINES_IN_FLIGHT: usize = 2;

impl HybridCore {
    /// Starts the committer on the current tokio runtime unless it runs already.
    #[inline]
    pub(crate) fn ensure_started(self: &Arc<Self>) {
        if self.started.load(Ordering::Relaxed) {
            return;
        }
        self.start();
    }

    #[cold]
    pub(crate) fn start(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let period = Duration::from_millis(self.sync_ms);
        handle.spawn(run(weak, period));
    }

    /// One flush-and-refresh of every dirty key.
    pub(crate) async fn cycle(&self) {
        let _one_at_a_time = self.cycle_lock.write().await;
        let now = self.now();
        self.bound_held(now.server);
        let mut jobs: Vec<KeyJob> = Vec::new();
        let next_seq = || self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        for_each(&self.absolute, |key, state| {
            if state.is_dirty() {
                let job = state.job(now.local, next_seq);
                jobs.push((
                    key.clone(),
                    Dest::Single(StrategyTag::Absolute),
                    job.into_usage(),
                ));
            }
        });
        for_each(&self.suppressed, |key, state| {
            if state.is_dirty() {
                let job = state.job(now.local, next_seq);
                jobs.push((key.clone(), Dest::Single(StrategyTag::Suppressed), job));
            }
        });
        self.policy_jobs(now, &mut jobs);
        if jobs.is_empty() {
            return;
        }
        // A few pipelines in flight at once, each applied as its reply comes in: all of a
        // large cycle's pipelines sent together would queue in Redis behind each other and
        // those at the back would pass the deadline before Redis reached them (a million
        // dirty keys failed every cycle that way, and their units were dropped).
        // (By index: a stream over `chunks()` borrows in a way a spawned task cannot name.)
        let jobs = &jobs;
        let mut replies = futures_util::stream::iter(0..jobs.len().div_ceil(MAX_KEYS_PER_PIPELINE))
            .map(|i| {
                let chunk = &jobs
                    [i * MAX_KEYS_PER_PIPELINE..jobs.len().min((i + 1) * MAX_KEYS_PER_PIPELINE)];
                // Its own send time: a late pipeline of a long cycle times its round trip
                // (the server clock's offset) and its leases from when it left, not from
                // the cycle's start.
                async move {
                    let sent = self.clock.now_ms();
                    (chunk, sent, self.send(chunk, now.server).await)
                }
            })
            .buffered(PIPELINES_IN_FLIGHT);
        let mut ok = true;
        while let Some((chunk, sent, reply)) = replies.next().await {
            let received = self.clock.now_ms();
            match reply {
                Ok(values) => ok &= self.apply(chunk, &values, sent, received),
                Err(err) => {
                    ok = false;
                    self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%err, keys = chunk.len(), "sluicegate hybrid: flush failed; increments kept for the next one");
                }
            }
        }
        if ok {
            self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        }
        self.healthy.store(ok, Ordering::Relaxed);
    }
}

/// The committer task: a cycle every `period` until the provider is dropped.
async fn run(weak: Weak<HybridCore>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(core) = weak.upgrade() else {
            return;
        };
        core.cycle().await;
    }
}
