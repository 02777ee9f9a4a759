//! One chunk of a cycle's round trip: the flush-and-refresh calls of up to
//! [`MAX_KEYS_PER_PIPELINE`] keys sent together, and their replies applied to the keys.
//! Arguments and replies are encoded and parsed by [`crate::redis::wire`].

use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use ::redis::{Cmd, Script, Value};
use compact_str::CompactString;

use super::core::HybridCore;
use super::key::Job;
use super::mode::{Refresh, View};
use super::policy::Dest;
use crate::Error;
use crate::redis::{TimeSource, wire};
use crate::window::Usage;

/// Keys per pipeline: a cycle with more dirty keys sends several pipelines at once.
pub(crate) const MAX_KEYS_PER_PIPELINE: usize = 512;

/// The flush-and-refresh script: the shared sliding window and the hybrid part.
const SCRIPT_SOURCE: &str = concat!(
    include_str!("../redis/lua/head.lua"),
    include_str!("../redis/lua/window.lua"),
    include_str!("lua/hybrid.lua")
);

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT_SOURCE));

/// One key's part of a cycle: its name, where it goes (a strategy's key or a limit's) and
/// what to send.
pub(super) type KeyJob = (CompactString, Dest, Job<Usage>);

impl HybridCore {
    /// One chunk's round trip: a pipeline on a single server; on a cluster (where a
    /// pipeline must stay in one slot) the keys' calls go out at once, each to its node.
    pub(super) async fn send(
        &self,
        chunk: &[KeyJob],
        server_now: u64,
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        self.stats
            .refreshes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if self.core.conn.is_cluster() {
            return self.send_each(chunk, server_now).await;
        }
        let mut pipe = ::redis::pipe();
        let load = !self.script_loaded.load(Ordering::Relaxed);
        if load {
            pipe.cmd("SCRIPT").arg("LOAD").arg(SCRIPT_SOURCE).ignore();
        }
        for (key, strategy, job) in chunk {
            pipe.add_command(self.command(key, strategy, job, server_now));
        }
        let reply = self.core.conn.pipeline::<Vec<Value>>(&pipe).await;
        match &reply {
            Ok(_) => self.script_loaded.store(true, Ordering::Relaxed),
            Err(_) => self.script_loaded.store(false, Ordering::Relaxed),
        }
        reply.map(|values| values.into_iter().map(Ok).collect())
    }

    /// On a cluster each key's call goes to its own master, and one that answers `NOSCRIPT`
    /// (a promoted replica, a restarted node) gets the script loaded on that master alone:
    /// a `SCRIPT LOAD` to every node would fail, and fail every key's flush, while any one
    /// node is down.
    async fn send_each(
        &self,
        chunk: &[KeyJob],
        server_now: u64,
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        let commands: Vec<Cmd> = chunk
            .iter()
            .map(|(key, dest, job)| self.command(key, dest, job, server_now))
            .collect();
        let replies = futures_util::future::join_all(
            commands
                .iter()
                .map(|c| self.core.conn.evalsha(c, SCRIPT_SOURCE)),
        )
        .await;
        Ok(replies)
    }

    fn command(&self, key: &str, dest: &Dest, job: &Job<Usage>, server_now: u64) -> Cmd {
        let target = dest.target(self, key);
        let now = match &self.core.time {
            TimeSource::Server => None,
            TimeSource::TestClock(_) => Some(server_now),
        };
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(SCRIPT.get_hash());
        wire::head(
            &mut cmd,
            &[&target.names.buckets, &target.names.hash, &target.lease],
            now,
            target.grid,
            target.tag.tag(),
        );
        wire::flush(
            &mut cmd,
            &wire::Flush {
                tag: target.tag,
                instance: &self.instance,
                seq: job.seq,
                lease_ttl_ms: self.lease_ttl_ms,
                rate: job.rate,
                cap: job.cap,
                wanted: job.wanted,
                held: job.held,
                hard_limit_factor: target.hard_limit_factor,
                buckets: &job.buckets,
            },
        );
        cmd
    }

    /// Applies a chunk's replies; returns whether every key's reply was good.
    pub(super) fn apply(
        &self,
        chunk: &[KeyJob],
        values: &[Result<Value, Error>],
        sent: u64,
        received: u64,
    ) -> bool {
        let mut all_good = true;
        let mut lost_keys = 0u64;
        for ((key, dest, job), value) in chunk.iter().zip(values) {
            let mut parsed = match value
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|v| wire::flush_reply(v).map_err(|e| e.to_string()))
            {
                Ok(parsed) => parsed,
                Err(err) => {
                    all_good = false;
                    self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%err, key = %key, "sluicegate hybrid: a key's flush failed; kept for the next one");
                    continue;
                }
            };
            if matches!(self.core.time, TimeSource::Server) {
                let midpoint = (sent + received) / 2;
                self.offset_ms
                    .store(parsed.server_now - midpoint as i64, Ordering::Relaxed);
            }
            let sent_units: u64 = job.buckets.iter().map(|b| b.counts.accepted).sum();
            if job.seq > 0 {
                if parsed.applied {
                    self.stats
                        .units_flushed
                        .fetch_add(sent_units.saturating_sub(parsed.expired), Ordering::Relaxed);
                    self.stats
                        .units_expired
                        .fetch_add(parsed.expired, Ordering::Relaxed);
                } else {
                    // An earlier send of this very batch landed and its reply was lost: its
                    // units reached Redis then, so they count now, once.
                    self.stats.repeats_skipped.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .units_flushed
                        .fetch_add(sent_units, Ordering::Relaxed);
                }
            }
            let view = View {
                lease: parsed.lease,
                used: parsed.used,
                holders: parsed.holders,
                cap: job.cap,
                observed: parsed.observed,
                recent: parsed.recent,
                at: u64::try_from(parsed.server_now).unwrap_or(0),
                valid_until: sent + self.lease_ttl_ms,
            };
            let refresh = Refresh {
                view,
                oldest: std::mem::take(&mut parsed.oldest),
            };
            lost_keys += u64::from(dest.refreshed(self, key, job.seq, refresh));
        }
        if lost_keys > 0 {
            tracing::warn!(
                keys = lost_keys,
                "sluicegate hybrid: Redis holds less usage than this instance admitted in the \
                 window (FLUSHALL, lost writes or eviction); deciding on this instance's own \
                 record for those keys, so nothing it admitted is admitted again"
            );
        }
        all_good
    }
}
