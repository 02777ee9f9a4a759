//! The cleanup loop: a plain thread (no async runtime needed) that drops stale keys, and
//! ends as soon as its limiter is dropped.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::RateLimiter;

/// The limiter's end of the loop: dropping it (with the limiter) wakes and ends the thread.
#[derive(Debug, Default)]
pub(crate) struct CleanupHandle {
    stop: Mutex<Option<Sender<()>>>,
}

/// The default period: half a window, between 1 s and 60 s.
pub(crate) fn default_period(window_seconds: u64) -> Duration {
    Duration::from_millis((window_seconds * 500).clamp(1_000, 60_000))
}

/// Starts the loop unless one runs already; `None` if it was running or could not start.
pub(crate) fn spawn(limiter: &Arc<RateLimiter>, period: Duration) -> Option<JoinHandle<()>> {
    let mut stop = limiter.cleanup.stop.lock();
    if stop.is_some() {
        return None;
    }
    let (tx, rx) = mpsc::channel::<()>();
    let weak: Weak<RateLimiter> = Arc::downgrade(limiter);
    let spawned = std::thread::Builder::new()
        .name("sluicegate-cleanup".into())
        .spawn(move || {
            // Only a timeout means "run again": a disconnect means the limiter is gone.
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(period) {
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                let removed = limiter.cleanup();
                tracing::trace!(removed, "sluicegate cleanup pass");
            }
        });
    match spawned {
        Ok(handle) => {
            *stop = Some(tx);
            Some(handle)
        }
        Err(err) => {
            tracing::error!(%err, "sluicegate: could not start the cleanup thread; stale keys stay in memory");
            None
        }
    }
}
