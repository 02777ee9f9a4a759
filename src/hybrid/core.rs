//! What the hybrid provider's callers and its committer share: the keys, the settings a
//! decision reads (copied one pointer hop closer), both clocks, and the health and
//! counters the committer keeps.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use super::absolute::AbsoluteKey;
use super::mode::{Conditions, Now};
use super::policy::PolicyEngine;
use super::stats::Counters;
use super::suppressed::SuppressedKey;
use crate::clock::{Clock, Time};
use crate::local::store::{KeyCount, KeyStore};
use crate::redis::{Core, TimeSource};
use crate::settings::Settings;

/// Everything the hybrid provider shares between callers and its committer.
#[derive(Debug)]
pub(crate) struct HybridCore {
    pub(crate) core: Arc<Core>,
    /// A copy of the limiter's settings, one pointer hop closer than the Redis core's.
    pub(crate) settings: Settings,
    pub(crate) sync_ms: u64,
    /// The test-only clock the scripts read instead of the server's `TIME`.
    test_clock: Option<Arc<dyn Clock>>,
    pub(crate) clock: Time,
    /// Server time minus local time, in ms (0 under a test clock).
    pub(super) offset_ms: AtomicI64,
    pub(super) instance: String,
    pub(super) seq: AtomicU64,
    pub(crate) absolute: KeyStore<AbsoluteKey>,
    pub(crate) suppressed: KeyStore<SuppressedKey>,
    pub(crate) stats: Counters,
    pub(crate) healthy: AtomicBool,
    pub(super) script_loaded: AtomicBool,
    pub(super) started: AtomicBool,
    pub(crate) max_pending_buckets: usize,
    pub(crate) lease_ttl_ms: u64,
    /// One cycle at a time, whether from the task or from `flush()` (written); a refund of
    /// units already taken for a batch reads it, so its script reaches Redis after the
    /// batch's cycle is over and before the next one (`refund.rs`).
    pub(super) cycle_lock: tokio::sync::RwLock<()>,
    /// The limit sets made on this provider, for the committer (`policy.rs`).
    pub(super) policies: Mutex<Vec<Weak<PolicyEngine>>>,
}

impl HybridCore {
    /// Both strategies' keys count in `keys` (the limiter's key budget).
    pub(crate) fn new(
        core: Arc<Core>,
        clock: Time,
        max_pending_buckets: usize,
        keys: &Arc<KeyCount>,
    ) -> Self {
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
        HybridCore {
            settings: core.settings,
            sync_ms,
            test_clock: match &core.time {
                TimeSource::TestClock(clock) => Some(clock.clone()),
                TimeSource::Server => None,
            },
            offset_ms: AtomicI64::new(offset),
            instance: instance_id(),
            seq: AtomicU64::new(0),
            absolute: KeyStore::new(keys.clone(), false),
            suppressed: KeyStore::new(keys.clone(), false),
            stats: Counters::default(),
            healthy: AtomicBool::new(true),
            script_loaded: AtomicBool::new(false),
            started: AtomicBool::new(false),
            max_pending_buckets,
            lease_ttl_ms: (10 * sync_ms).max(200),
            cycle_lock: tokio::sync::RwLock::new(()),
            policies: Mutex::new(Vec::new()),
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

    /// What a decision reads besides the key: the settings and Redis's health.
    #[inline]
    pub(crate) fn conditions(&self) -> Conditions<'_> {
        Conditions {
            grid: &self.settings.grid,
            params: &self.settings.suppression,
            sync_ms: self.sync_ms,
            healthy: self.healthy.load(Ordering::Relaxed),
        }
    }

    /// Drops idle keys; returns how many.
    pub(crate) fn cleanup(&self) -> usize {
        let now = self.now();
        let grid = self.settings.grid;
        self.absolute.retain(|s| !s.idle(&grid, now))
            + self.suppressed.retain(|s| !s.idle(&grid, now))
            + self.cleanup_policies(now)
    }
}

/// An id no other live instance has: host-independent random bits and the process id.
fn instance_id() -> String {
    format!("{:x}{:08x}", fastrand::u64(..), std::process::id())
}
