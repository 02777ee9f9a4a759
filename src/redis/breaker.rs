//! The circuit breaker around a single-server connection: once Redis is known to be down,
//! calls fail at once instead of each waiting out the deadline, and one background probe
//! (`PING`, one at a time) finds out when it is back.
//!
//! When is Redis "known down"?
//! - a call fails with a connection error (refused, reset, dropped, closed): at once;
//! - calls keep timing out with no success in between for [`STALL_OPENS_AFTER`] (a server
//!   that accepts connections but does not answer: paused, blocked, blackholed). A single
//!   slow spell shorter than that (a `CLIENT PAUSE`, a failover's pause) is waited out at the
//!   deadline as before, so a briefly slow server is not reported as down.
//!
//! While the breaker is open the probe sends `PING` through the same connection (so a
//! success means the connection itself works again), bounded by the limiter's deadline, and
//! waits [`PROBE_INTERVAL`] after each failure. The first answer closes the breaker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::connection::{Link, RedisConnection};
use crate::Error;

/// How long calls must keep timing out, with no success, before a server that still
/// accepts connections counts as down.
pub const STALL_OPENS_AFTER: Duration = Duration::from_secs(2);

/// The wait between two probes while Redis is down.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// The error inside [`Error::Redis`] of a call the breaker failed at once: Redis is known to
/// be down, and a background probe is waiting for it to come back.
///
/// Find it with [`Error::is_redis_unavailable`].
#[derive(Debug, Clone)]
pub struct RedisUnavailable {
    cause: Arc<str>,
}

impl RedisUnavailable {
    /// The failure that marked Redis down (or the probe's latest one).
    pub fn cause(&self) -> &str {
        &self.cause
    }
}

impl std::fmt::Display for RedisUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Redis is unavailable, so this call failed at once instead of waiting for the \
             deadline (last failure: {}); a background PING checks every {} ms and calls go \
             to Redis again as soon as it answers. Check that the server is up and reachable \
             at the connection's address",
            self.cause,
            PROBE_INTERVAL.as_millis()
        )
    }
}

impl std::error::Error for RedisUnavailable {}

/// The breaker's state, shared by every clone of a connection.
pub(crate) struct Breaker {
    conn: RedisConnection,
    timeout: Duration,
    open: AtomicBool,
    probing: AtomicBool,
    /// Milliseconds since `epoch` (plus one) of the first timeout since the latest success;
    /// 0 for none.
    timing_out_since: AtomicU64,
    epoch: Instant,
    cause: Mutex<Arc<str>>,
    /// Whether the connection's own response timeout was reported (once).
    pub(crate) warned_short_timeout: AtomicBool,
    /// Whether an authentication failure was reported (once).
    pub(crate) warned_auth: AtomicBool,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Breaker {
    pub(crate) fn new(conn: RedisConnection, timeout: Duration) -> Arc<Self> {
        Arc::new(Breaker {
            conn,
            timeout,
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            timing_out_since: AtomicU64::new(0),
            epoch: Instant::now(),
            cause: Mutex::new(Arc::from("")),
            warned_short_timeout: AtomicBool::new(false),
            warned_auth: AtomicBool::new(false),
        })
    }

    /// The connection the calls go through.
    pub(crate) fn conn(&self) -> &RedisConnection {
        &self.conn
    }

    /// Whether calls fail at once.
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The error of a call failed at once.
    pub(crate) fn unavailable(&self) -> Error {
        let cause = self.cause.lock().clone();
        let io = std::io::Error::new(std::io::ErrorKind::NotConnected, RedisUnavailable { cause });
        Error::Redis(::redis::RedisError::from(io))
    }

    /// A call was answered.
    #[inline]
    pub(crate) fn on_success(&self) {
        if self.timing_out_since.load(Ordering::Relaxed) != 0 {
            self.timing_out_since.store(0, Ordering::Relaxed);
        }
    }

    /// A call timed out: after [`STALL_OPENS_AFTER`] of nothing but timeouts, Redis is down.
    pub(crate) fn on_timeout(self: &Arc<Self>) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        match self
            .timing_out_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => {}
            Err(since) if now.saturating_sub(since) >= STALL_OPENS_AFTER.as_millis() as u64 => {
                self.open_with(format!(
                    "no answer within the {} ms deadline for {} ms",
                    self.timeout.as_millis(),
                    now - since
                ));
            }
            Err(_) => {}
        }
    }

    /// A call failed to reach Redis: it is down until the probe hears from it.
    pub(crate) fn open_with(self: &Arc<Self>, cause: String) {
        // Without a runtime to probe on, the breaker would never close: stay closed.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *self.cause.lock() = Arc::from(cause.as_str());
        if !self.open.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                cause = %cause,
                "sluicegate: Redis is unavailable; Redis calls fail at once until a background PING answers"
            );
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            handle.spawn(probe(Arc::downgrade(self)));
        }
    }

    fn close(&self) {
        self.timing_out_since.store(0, Ordering::Relaxed);
        // Probing off first: a call that opens the breaker after this starts a new probe.
        self.probing.store(false, Ordering::Release);
        if self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("sluicegate: Redis answers again; Redis calls resume");
        }
    }
}

/// The one probe: `PING` until Redis answers, then close. Ends with the connection.
async fn probe(weak: Weak<Breaker>) {
    loop {
        let Some(breaker) = weak.upgrade() else {
            return;
        };
        let mut link = Link::new(breaker.conn.clone());
        let ping = ::redis::cmd("PING");
        let reply: Result<::redis::RedisResult<::redis::Value>, _> =
            tokio::time::timeout(breaker.timeout, ping.query_async(&mut link)).await;
        match reply {
            Ok(Ok(_)) => {
                breaker.close();
                return;
            }
            Ok(Err(err)) => *breaker.cause.lock() = Arc::from(err.to_string().as_str()),
            Err(_) => {
                *breaker.cause.lock() = Arc::from(
                    format!(
                        "PING got no answer within {} ms",
                        breaker.timeout.as_millis()
                    )
                    .as_str(),
                )
            }
        }
        drop(breaker);
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Whether an error means the server could not be reached (as opposed to an answer, even
/// an error one, or a slow answer).
pub(crate) fn is_connection_error(err: &::redis::RedisError) -> bool {
    if err.is_timeout() {
        return false;
    }
    err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_io_error()
        || err.kind() == ::redis::ErrorKind::ClusterConnectionNotFound
}

/// Whether the server refused the call for want of (the right) credentials.
pub(crate) fn is_authentication_error(err: &::redis::RedisError) -> bool {
    err.kind() == ::redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
        || {
            let text = err.to_string();
            text.contains("NOAUTH") || text.contains("WRONGPASS")
        }
}
