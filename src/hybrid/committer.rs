//! The committer: a tokio task that, every sync interval, sends every dirty key's pending
//! increments and asks for its lease in one pipelined round trip, then applies the replies.
//! It is the only thing that talks to Redis, so a key is refreshed at most once per cycle
//! however many callers hit it.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::{Cmd, Script, Value};
use compact_str::CompactString;

use super::state::{AbsoluteKey, Job, Now, Refresh, SuppressedKey, View};
use super::stats::Counters;
use crate::Error;
use crate::clock::{Clock, Time};
use crate::local::store::KeyStore;
use crate::redis::{Core, KeyNames, RedisKey, Strategy, TimeSource};
use crate::settings::SuppressionParams;
use crate::window::{Bucket, Usage, WindowGrid};

/// The flush-and-refresh script: the shared sliding window and the hybrid part.
static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT_SOURCE));

/// Keys per pipeline: a cycle with more dirty keys sends several pipelines at once.
pub(crate) const MAX_KEYS_PER_PIPELINE: usize = 512;

/// Everything the hybrid provider shares between callers and its committer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) core: Arc<Core>,
    /// Copies of the core's settings the decision path reads, one pointer hop closer.
    pub(crate) geo: WindowGrid,
    pub(crate) params: SuppressionParams,
    pub(crate) sync_ms: u64,
    /// The test-only clock the scripts read instead of the server's `TIME`.
    test_clock: Option<Arc<dyn Clock>>,
    pub(crate) clock: Time,
    /// Server time minus local time, in ms (0 under a test clock).
    offset_ms: AtomicI64,
    instance: String,
    seq: AtomicU64,
    pub(crate) absolute: KeyStore<AbsoluteKey>,
    pub(crate) suppressed: KeyStore<SuppressedKey>,
    pub(crate) stats: Counters,
    pub(crate) healthy: AtomicBool,
    script_loaded: AtomicBool,
    started: AtomicBool,
    pub(crate) max_pending_buckets: usize,
    pub(crate) lease_ttl_ms: u64,
    /// One cycle at a time, whether from the task or from `flush()`.
    cycle_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    pub(crate) fn new(core: Arc<Core>, clock: Time, max_pending_buckets: usize) -> Self {
        let sync_ms = core.sync_interval_ms.get();
        let offset = match core.time {
            TimeSource::TestClock(_) => 0,
            TimeSource::Server => {
                let wall = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                wall - clock.now_ms() as i64
            }
        };
        Shared {
            geo: core.settings.grid,
            params: core.settings.suppression,
            sync_ms,
            test_clock: match &core.time {
                TimeSource::TestClock(clock) => Some(clock.clone()),
                TimeSource::Server => None,
            },
            offset_ms: AtomicI64::new(offset),
            instance: instance_id(),
            seq: AtomicU64::new(0),
            absolute: KeyStore::default(),
            suppressed: KeyStore::default(),
            stats: Counters::default(),
            healthy: AtomicBool::new(true),
            script_loaded: AtomicBool::new(false),
            started: AtomicBool::new(false),
            max_pending_buckets,
            lease_ttl_ms: (10 * sync_ms).max(200),
            cycle_lock: tokio::sync::Mutex::new(()),
            core,
            clock,
        }
    }

    /// Now on the limiter's clock and on the server's.
    #[inline]
    pub(crate) fn now(&self) -> Now {
        let local = self.clock.now_ms();
        let server = match &self.test_clock {
            None => (local as i64).saturating_add(self.offset_ms.load(Ordering::Relaxed)) as u64,
            Some(clock) => clock.now_ms(),
        };
        Now { local, server }
    }

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
        let period = Duration::from_millis(self.core.sync_interval_ms.get());
        handle.spawn(run(weak, period));
    }

    /// One flush-and-refresh of every dirty key.
    pub(crate) async fn cycle(&self) {
        let _one_at_a_time = self.cycle_lock.lock().await;
        let now = self.now();
        let geo = self.core.settings.grid;
        let mut jobs: Vec<(CompactString, Strategy, Job<Usage>)> = Vec::new();
        let mut held = 0usize;
        let mut expired = 0u64;
        let next_seq = || self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.absolute.for_each(|_, state| {
            expired += state.drop_expired(&geo, now.server);
            held += state.held_buckets();
        });
        self.suppressed.for_each(|_, state| {
            expired += state.drop_expired(&geo, now.server);
            held += state.held_buckets();
        });
        if held > self.max_pending_buckets {
            let dropped = self.enforce_bound(held);
            held -= dropped.0;
            self.stats
                .units_dropped
                .fetch_add(dropped.1, Ordering::Relaxed);
            tracing::warn!(
                buckets = dropped.0,
                units = dropped.1,
                bound = self.max_pending_buckets,
                "sluicegate hybrid: pending increments over the memory bound; oldest dropped"
            );
        }
        self.stats
            .units_expired
            .fetch_add(expired, Ordering::Relaxed);
        self.stats
            .pending_buckets
            .store(held as u64, Ordering::Relaxed);
        self.absolute.for_each(|key, state| {
            if state.is_dirty() {
                let job = state.job(now.local, next_seq);
                jobs.push((key.clone(), Strategy::Absolute, widen(job)));
            }
        });
        self.suppressed.for_each(|key, state| {
            if state.is_dirty() {
                let job = state.job(now.local, next_seq);
                jobs.push((key.clone(), Strategy::Suppressed, job));
            }
        });
        if jobs.is_empty() {
            return;
        }
        let chunks = jobs.chunks(MAX_KEYS_PER_PIPELINE);
        let replies = futures_util::future::join_all(
            chunks.clone().map(|chunk| self.send(chunk, now.server)),
        )
        .await;
        let received = self.clock.now_ms();
        let mut ok = true;
        for (chunk, reply) in chunks.zip(replies) {
            match reply {
                Ok(values) => ok &= self.apply(chunk, &values, now.local, received),
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

    /// Drops the oldest held buckets until the bound holds; (buckets, units) dropped.
    fn enforce_bound(&self, mut held: usize) -> (usize, u64) {
        let (mut buckets, mut units) = (0usize, 0u64);
        while held > self.max_pending_buckets {
            let before = buckets;
            let bound = self.max_pending_buckets;
            // One bucket from each key in turn, stopping as soon as the bound holds.
            let mut drop_one = |dropped: Option<u64>| {
                if let Some(u) = dropped {
                    (held, buckets, units) = (held - 1, buckets + 1, units + u);
                }
                if held > bound {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            };
            if self
                .absolute
                .try_for_each(|_, state| drop_one(state.drop_oldest()))
                .is_continue()
            {
                let _ = self
                    .suppressed
                    .try_for_each(|_, state| drop_one(state.drop_oldest()));
            }
            if buckets == before {
                break;
            }
        }
        (buckets, units)
    }

    /// One chunk's round trip: a pipeline on a single server; on a cluster (where a
    /// pipeline must stay in one slot) the keys' calls go out at once, each to its node.
    async fn send(
        &self,
        chunk: &[(CompactString, Strategy, Job<Usage>)],
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
            pipe.add_command(self.command(key, *strategy, job, server_now));
        }
        let reply = self.core.conn.pipeline::<Vec<Value>>(&pipe).await;
        match &reply {
            Ok(_) => self.script_loaded.store(true, Ordering::Relaxed),
            Err(_) => self.script_loaded.store(false, Ordering::Relaxed),
        }
        reply.map(|values| values.into_iter().map(Ok).collect())
    }

    async fn send_each(
        &self,
        chunk: &[(CompactString, Strategy, Job<Usage>)],
        server_now: u64,
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        if !self.script_loaded.load(Ordering::Relaxed) {
            let mut load = ::redis::cmd("SCRIPT");
            load.arg("LOAD").arg(SCRIPT_SOURCE);
            self.core.conn.query::<Value>(&load).await?;
            self.script_loaded.store(true, Ordering::Relaxed);
        }
        let commands: Vec<Cmd> = chunk
            .iter()
            .map(|(key, strategy, job)| self.command(key, *strategy, job, server_now))
            .collect();
        let replies =
            futures_util::future::join_all(commands.iter().map(|c| self.core.conn.query(c))).await;
        if replies.iter().any(Result::is_err) {
            // A node may have restarted without the script: load it again next time.
            self.script_loaded.store(false, Ordering::Relaxed);
        }
        Ok(replies)
    }

    fn command(&self, key: &str, strategy: Strategy, job: &Job<Usage>, server_now: u64) -> Cmd {
        let names = match RedisKey::try_from(key) {
            Ok(k) => self.core.keys.names(&k, strategy),
            // Keys are checked before they are stored.
            Err(_) => KeyNames {
                buckets: String::new(),
                hash: String::new(),
            },
        };
        let mut lease = names.hash.clone();
        lease.pop();
        lease.push('l');
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(SCRIPT.get_hash())
            .arg(3)
            .arg(&names.buckets)
            .arg(&names.hash)
            .arg(&lease);
        match &self.core.time {
            TimeSource::Server => cmd.arg(""),
            TimeSource::TestClock(_) => cmd.arg(server_now),
        };
        cmd.arg(self.core.settings.grid.window_seconds())
            .arg(self.core.settings.grid.group_ms())
            .arg(match strategy {
                Strategy::Absolute => "a",
                Strategy::Suppressed => "s",
            })
            .arg(&self.instance)
            .arg(job.seq)
            .arg(self.lease_ttl_ms)
            .arg(job.rate)
            .arg(job.cap)
            .arg(job.wanted)
            .arg(job.held)
            .arg(self.core.settings.suppression.hard_limit_factor)
            .arg(job.buckets.len());
        for bucket in &job.buckets {
            let Usage { accepted, observed } = bucket.counts;
            match strategy {
                Strategy::Absolute => cmd.arg(bucket.id).arg(accepted),
                Strategy::Suppressed => cmd
                    .arg(bucket.id)
                    .arg(observed)
                    .arg(observed.saturating_sub(accepted)),
            };
        }
        cmd
    }

    /// Applies a chunk's replies; returns whether every key's reply was good.
    fn apply(
        &self,
        chunk: &[(CompactString, Strategy, Job<Usage>)],
        values: &[Result<Value, Error>],
        sent: u64,
        received: u64,
    ) -> bool {
        let mut all_good = true;
        for ((key, strategy, job), value) in chunk.iter().zip(values) {
            let mut parsed = match value
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|v| parse(v).map_err(|e| e.to_string()))
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
            match strategy {
                Strategy::Absolute => {
                    self.absolute
                        .peek(key.as_str(), |s| s.refreshed(job.seq, refresh));
                }
                Strategy::Suppressed => {
                    self.suppressed
                        .peek(key.as_str(), |s| s.refreshed(job.seq, refresh));
                }
            }
        }
        all_good
    }

    /// Drops idle keys; returns how many.
    pub(crate) fn cleanup(&self) -> usize {
        let now = self.now();
        let geo = self.core.settings.grid;
        self.absolute.retain(|s| !s.idle(&geo, now))
            + self.suppressed.retain(|s| !s.idle(&geo, now))
    }
}

const SCRIPT_SOURCE: &str = concat!(
    include_str!("../redis/lua/head.lua"),
    include_str!("../redis/lua/window.lua"),
    include_str!("lua/hybrid.lua")
);

fn widen(job: Job<u64>) -> Job<Usage> {
    Job {
        seq: job.seq,
        buckets: job
            .buckets
            .into_iter()
            .map(|b| crate::window::Bucket {
                id: b.id,
                counts: Usage {
                    accepted: b.counts,
                    observed: b.counts,
                },
            })
            .collect(),
        rate: job.rate,
        cap: job.cap,
        wanted: job.wanted,
        held: job.held,
    }
}

/// An id no other live instance has: host-independent random bits and the process id.
fn instance_id() -> String {
    format!("{:x}{:08x}", fastrand::u64(..), std::process::id())
}

async fn run(weak: Weak<Shared>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        shared.cycle().await;
    }
}

struct Parsed {
    server_now: i64,
    applied: bool,
    expired: u64,
    lease: f64,
    used: u64,
    holders: u64,
    observed: u64,
    recent: u64,
    oldest: Vec<Bucket<u64>>,
}

fn parse(value: &Value) -> Result<Parsed, Error> {
    let unexpected = || Error::UnexpectedReply(format!("hybrid flush script answered {value:?}"));
    let Value::Array(items) = value else {
        return Err(unexpected());
    };
    let int = |i: usize| match items.get(i) {
        Some(Value::Int(v)) => Ok(*v),
        _ => Err(unexpected()),
    };
    let real = |i: usize| {
        let text = match items.get(i) {
            Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok(),
            Some(Value::SimpleString(text)) => Some(text.as_str()),
            _ => None,
        };
        text.and_then(|t| t.parse::<f64>().ok())
            .ok_or_else(unexpected)
    };
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Parsed {
        server_now: int(0)?,
        applied: int(1)? == 1,
        expired: unsigned(int(2)?),
        lease: real(3)?.max(0.0),
        used: unsigned(int(4)?),
        holders: unsigned(int(5)?).max(1),
        observed: unsigned(int(6)?),
        recent: unsigned(int(7)?),
        oldest: match items.get(8) {
            Some(Value::Array(flat)) => flat
                .chunks_exact(2)
                .map(|pair| match pair {
                    [Value::Int(id), Value::Int(units)] => Ok(Bucket {
                        id: unsigned(*id),
                        counts: unsigned(*units),
                    }),
                    _ => Err(unexpected()),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(unexpected()),
        },
    })
}
