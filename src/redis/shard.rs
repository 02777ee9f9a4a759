//! A breaker per Redis Cluster shard (issue 13: "requests for keys on healthy shards are
//! not held up" while one master is dead).
//!
//! Why: redis-rs sends a call whose master is down to another node of the shard (or any
//! node), which answers `MOVED`; each `MOVED` starts a slot refresh, and while a refresh
//! runs redis-rs's cluster connection dispatches nothing, for any shard. A steady stream of
//! calls for the dead shard (a busy hybrid committer's flushes) keeps it refreshing, and
//! calls for healthy shards waited out their deadline until the promotion.
//!
//! So calls for a shard known to give no answer fail at once, before they reach redis-rs,
//! except one call every [`SHARD_PROBE_EVERY`] that goes through as a probe: the first
//! that gets an answer (after the promotion, when redis-rs has learned the new slot map)
//! closes the breaker. A shard counts as giving no answer when a call for it fails for want
//! of a connection, or when it has had calls outstanding and no answer for a quarter of the
//! deadline. Shards are told apart by their master's address, from `CLUSTER SLOTS` (asked
//! in the background when a call fails, at most every [`MAP_REFRESH_EVERY`]); until that
//! map is known each slot is its own shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionLike;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{ErrorKind, RedisError, RedisFuture, RedisResult, Value};
use parking_lot::Mutex;

use super::breaker::is_connection_error;

/// How often one call goes through to a shard known to give no answer.
pub(crate) const SHARD_PROBE_EVERY: Duration = Duration::from_millis(100);

/// The least time between two `CLUSTER SLOTS` queries.
const MAP_REFRESH_EVERY: Duration = Duration::from_millis(500);

/// The most calls one shard has on their way through redis-rs at once; more wait their
/// turn (within their deadline). A dead master's calls are retried inside redis-rs, each
/// retry a slot refresh that holds every shard's calls: this bounds how many do that.
const IN_FLIGHT_PER_SHARD: usize = 8;

/// Redis Cluster's slot count.
const SLOTS: u16 = 16384;

/// The slot of a key: CRC16 (XMODEM) of its hash tag (the part between the first `{` and
/// the next `}`, when not empty) or of the whole key, modulo 16384.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|b| *b == b'}')
            .filter(|close| *close > 0)
            .map(|close| &rest[..close])
    });
    crc16_xmodem(tagged.unwrap_or(key)) % SLOTS
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The breakers of one cluster connection (shared by its clones).
pub(crate) struct Shards {
    state: Mutex<State>,
    /// Calls outstanding with no answer for this long: the shard gives no answer.
    stall: Duration,
}

#[derive(Default)]
struct State {
    /// Slot ranges and their master's address, from `CLUSTER SLOTS`, sorted by start.
    owners: Vec<(u16, u16, Arc<str>)>,
    map_asked: Option<Instant>,
    shards: HashMap<Shard, ShardState>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Shard {
    Master(Arc<str>),
    Slot(u16),
}

#[derive(Debug)]
struct ShardState {
    /// Calls on their way to redis-rs, at most [`IN_FLIGHT_PER_SHARD`].
    permits: Arc<tokio::sync::Semaphore>,
    outstanding: u32,
    /// The latest answer, or when calls began to be outstanding after none were.
    quiet_since: Instant,
    down: bool,
    next_probe: Instant,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        let down = state.shards.values().filter(|s| s.down).count();
        f.debug_struct("Shards")
            .field("known", &state.shards.len())
            .field("down", &down)
            .finish()
    }
}

impl Shards {
    pub(crate) fn new(deadline: Duration) -> Arc<Self> {
        Arc::new(Shards {
            state: Mutex::new(State::default()),
            stall: deadline / 4,
        })
    }

    /// Sends a call for `slot` through `send`, or fails it at once when its shard is down.
    pub(crate) fn call<'a, T: Send + 'a>(
        self: &Arc<Self>,
        slot: u16,
        conn: &ClusterConnection,
        send: impl FnOnce() -> RedisFuture<'a, T> + Send + 'a,
    ) -> RedisFuture<'a, T> {
        let now = Instant::now();
        if self.state.lock().map_asked.is_none() {
            // The first call: learn which slots share a master, before any fails.
            self.state.lock().map_asked = Some(now);
            self.refresh_map(conn);
        }
        let Some((shard, permits)) = self.admit(slot, now) else {
            return Box::pin(async { Err(shard_down()) });
        };
        let ticket = Ticket {
            shards: Arc::clone(self),
            shard,
            conn: conn.clone(),
            settled: false,
        };
        Box::pin(async move {
            let mut ticket = ticket;
            let _permit = permits.acquire_owned().await;
            let reply = send().await;
            ticket.settle(&reply);
            reply
        })
    }

    /// The shard a call for `slot` goes to (and its permits), or `None` when it must fail
    /// at once.
    fn admit(&self, slot: u16, now: Instant) -> Option<(Shard, Arc<tokio::sync::Semaphore>)> {
        let mut state = self.state.lock();
        let shard = state.shard_of(slot);
        let entry = state
            .shards
            .entry(shard.clone())
            .or_insert_with(|| ShardState {
                permits: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_PER_SHARD)),
                outstanding: 0,
                quiet_since: now,
                down: false,
                next_probe: now,
            });
        if !entry.down
            && entry.outstanding > 0
            && now.saturating_duration_since(entry.quiet_since) > self.stall
        {
            entry.down = true;
            entry.next_probe = now + SHARD_PROBE_EVERY;
        }
        if entry.down {
            if now < entry.next_probe {
                return None;
            }
            entry.next_probe = now + SHARD_PROBE_EVERY;
        } else if entry.outstanding == 0 {
            entry.quiet_since = now;
        }
        entry.outstanding += 1;
        Some((shard, entry.permits.clone()))
    }

    /// A call for `shard` ended: answered or not. Returns whether the slot map should be
    /// asked for again.
    fn settle(&self, shard: &Shard, answered: bool, now: Instant) -> bool {
        let mut state = self.state.lock();
        let Some(entry) = state.shards.get_mut(shard) else {
            return false;
        };
        entry.outstanding = entry.outstanding.saturating_sub(1);
        let was_down = entry.down;
        if answered {
            entry.down = false;
            entry.quiet_since = now;
        } else if !entry.down {
            entry.down = true;
            entry.next_probe = now + SHARD_PROBE_EVERY;
        }
        if answered && !was_down {
            return false;
        }
        // A shard went down or came back: the slot map may have changed.
        let due = state
            .map_asked
            .is_none_or(|at| now.saturating_duration_since(at) >= MAP_REFRESH_EVERY);
        if due {
            state.map_asked = Some(now);
        }
        due
    }

    /// Asks a node for `CLUSTER SLOTS` in the background and keeps the masters' ranges.
    fn refresh_map(self: &Arc<Self>, conn: &ClusterConnection) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (this, mut conn) = (Arc::clone(self), conn.clone());
        handle.spawn(async move {
            let mut cmd = ::redis::cmd("CLUSTER");
            cmd.arg("SLOTS");
            let reply = tokio::time::timeout(this.stall, conn.req_packed_command(&cmd)).await;
            let Some(owners) = reply
                .ok()
                .and_then(Result::ok)
                .as_ref()
                .and_then(parse_slots)
            else {
                return;
            };
            {
                let mut state = this.state.lock();
                if state.owners != owners {
                    state.owners = owners;
                    // Calls now name shards by master: forget the per-slot guesses, and
                    // masters that left the map.
                    let masters: Vec<Arc<str>> = state.owners.iter().map(|o| o.2.clone()).collect();
                    state.shards.retain(|shard, _| match shard {
                        Shard::Master(addr) => masters.contains(addr),
                        Shard::Slot(_) => false,
                    });
                }
            }
        });
    }
}

impl State {
    fn shard_of(&self, slot: u16) -> Shard {
        let at = self.owners.partition_point(|(start, _, _)| *start <= slot);
        match at.checked_sub(1).map(|i| &self.owners[i]) {
            Some((_, end, addr)) if slot <= *end => Shard::Master(addr.clone()),
            _ => Shard::Slot(slot),
        }
    }
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, ...], replicas...], ...]`, as sorted ranges
/// with their master's `host:port`.
fn parse_slots(value: &Value) -> Option<Vec<(u16, u16, Arc<str>)>> {
    let Value::Array(ranges) = value else {
        return None;
    };
    let mut owners = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return None;
        };
        owners.push((
            u16::try_from(*start).ok()?,
            u16::try_from(*end).ok()?,
            Arc::from(format!("{host}:{port}")),
        ));
    }
    owners.sort_by_key(|o| o.0);
    Some(owners)
}

/// A call on its way: settled by its reply, or as unanswered when dropped first (its
/// deadline ended it).
struct Ticket {
    shards: Arc<Shards>,
    shard: Shard,
    conn: ClusterConnection,
    settled: bool,
}

impl Ticket {
    fn settle<T>(&mut self, reply: &RedisResult<T>) {
        let answered = match reply {
            Ok(_) => true,
            Err(err) => !gives_no_answer(err),
        };
        self.finish(answered);
    }

    fn finish(&mut self, answered: bool) {
        if self.settled {
            return;
        }
        self.settled = true;
        if self.shards.settle(&self.shard, answered, Instant::now()) {
            self.shards.refresh_map(&self.conn);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// Errors that say the shard did not answer (rather than an answer that was an error).
fn gives_no_answer(err: &RedisError) -> bool {
    err.is_timeout()
        || is_connection_error(err)
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ::redis::ServerErrorKind::ClusterDown
                    | ::redis::ServerErrorKind::TryAgain
                    | ::redis::ServerErrorKind::MasterDown
            )
        )
}

/// The error of a call failed at once: a connection error, so the limiter's fail-open or
/// fail-closed policy applies and the connection's rebuild counts it as no answer.
fn shard_down() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "sluicegate: this key's Redis Cluster shard gives no answer (its master is down?): \
         failing at once while one call in every 100 ms probes it",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Known values (redis-cli CLUSTER KEYSLOT).
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"123456789"), 12739);
        assert_eq!(slot_of(b"p:{user}:a:h"), slot_of(b"user"));
        assert_eq!(slot_of(b"{}x"), slot_of(b"{}x"));
        assert_ne!(
            slot_of(b"{}foo"),
            slot_of(b"foo"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(slot_of(b"a{b}{c}"), slot_of(b"b"));
    }

    #[test]
    fn a_shard_that_fails_refuses_at_once_and_one_probe_closes_it() {
        let shards = Shards::new(Duration::from_millis(1000));
        let t0 = Instant::now();
        let a = shards.admit(1, t0).unwrap().0;
        assert!(shards.settle(&a, false, t0), "a failure asks for the map");
        // Down: refused until the probe time, other shards untouched.
        assert!(shards.admit(1, t0 + Duration::from_millis(10)).is_none());
        assert!(shards.admit(2, t0 + Duration::from_millis(10)).is_some());
        let probe = shards.admit(1, t0 + SHARD_PROBE_EVERY).unwrap().0;
        assert!(
            shards.admit(1, t0 + SHARD_PROBE_EVERY).is_none(),
            "one probe"
        );
        shards.settle(&probe, true, t0 + SHARD_PROBE_EVERY);
        assert!(shards.admit(1, t0 + SHARD_PROBE_EVERY).is_some(), "closed");
    }

    #[test]
    fn calls_outstanding_with_no_answer_for_a_quarter_deadline_open_it() {
        let shards = Shards::new(Duration::from_millis(1000));
        let t0 = Instant::now();
        let _hanging = shards.admit(7, t0).unwrap();
        assert!(shards.admit(7, t0 + Duration::from_millis(200)).is_some());
        assert!(shards.admit(7, t0 + Duration::from_millis(251)).is_none());
    }

    #[test]
    fn the_map_groups_slots_by_master() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                Value::Array(vec![
                    Value::BulkString(b"127.0.0.1".to_vec()),
                    Value::Int(7000),
                ]),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                Value::Array(vec![
                    Value::BulkString(b"127.0.0.1".to_vec()),
                    Value::Int(7001),
                ]),
            ]),
        ]);
        let owners = parse_slots(&reply).unwrap();
        let shards = Shards::new(Duration::from_millis(1000));
        shards.state.lock().owners = owners;
        let t0 = Instant::now();
        let a = shards.admit(5, t0).unwrap().0;
        shards.settle(&a, false, t0);
        assert!(shards.admit(8000, t0).is_none(), "same master");
        assert!(shards.admit(9000, t0).is_some(), "the other master");
        assert!(parse_slots(&Value::Int(3)).is_none());
    }
}
