//! The connection a Redis provider talks through, and the deadline around every call.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::aio::ConnectionLike;
use ::redis::aio::ConnectionManager;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{FromRedisValue, RedisFuture, RedisResult, ScriptInvocation, Value};

use super::breaker::{Breaker, is_authentication_error, is_connection_error};
use crate::Error;

/// The deadline around each Redis call unless [`RateLimiterBuilder::redis_timeout`] says
/// otherwise.
///
/// [`RateLimiterBuilder::redis_timeout`]: crate::RateLimiterBuilder::redis_timeout
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(1000);

/// The `ConnectionManagerConfig` a limiter with deadline `deadline` wants, for a
/// `ConnectionManager` you build yourself
/// (`client.get_connection_manager_with_config(connection_manager_config(deadline))`);
/// [`RateLimiterBuilder::redis_client`](crate::RateLimiterBuilder::redis_client) uses it.
///
/// - no response timeout of the connection's own: redis-rs's default (500 ms) would end
///   every call at 500 ms whatever the limiter's deadline, which then bounds every call
///   alone;
/// - each connection attempt bounded by the deadline (redis-rs: 1 s);
/// - at most 100 ms between reconnection attempts and 2 retries per reconnection (redis-rs:
///   exponential up to seconds, 6 retries): a restarted server is noticed within about
///   100 ms, and a first connection to a down server fails in a few hundred milliseconds
///   instead of 9.5 s. The next call (or the breaker's probe) starts a new reconnection.
pub fn connection_manager_config(deadline: Duration) -> ::redis::aio::ConnectionManagerConfig {
    ::redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(deadline))
        .set_max_delay(Duration::from_millis(100))
        .set_number_of_retries(2)
}

/// A connection to a single Redis server or to a Redis Cluster. Both reconnect by
/// themselves, are multiplexed (one socket serves every concurrent call) and cheap to clone.
#[derive(Clone)]
pub enum RedisConnection {
    /// A single server (or a primary with replicas) through a [`ConnectionManager`].
    Single(ConnectionManager),
    /// A Redis Cluster through the redis crate's `cluster_async` connection. Every Redis
    /// key of one limiter key carries the same hash tag, so each call goes to one node.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConnection::Single(manager) => f.debug_tuple("Single").field(manager).finish(),
            RedisConnection::Cluster(_) => f.write_str("Cluster(..)"),
        }
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(manager: ConnectionManager) -> Self {
        RedisConnection::Single(manager)
    }
}

impl From<ClusterConnection> for RedisConnection {
    fn from(cluster: ClusterConnection) -> Self {
        RedisConnection::Cluster(cluster)
    }
}

/// A connection with its per-call deadline and, on a single server, its circuit breaker
/// (see `breaker.rs`). Clones share the breaker.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    shared: Arc<Breaker>,
    timeout: Duration,
    /// The breaker guards single-server connections only: on a cluster one node down must
    /// not fail the calls for keys on the others.
    guarded: bool,
}

impl Connection {
    pub(crate) fn new(conn: RedisConnection, timeout: Duration) -> Self {
        let guarded = matches!(conn, RedisConnection::Single(_));
        Connection {
            shared: Breaker::new(conn, timeout),
            timeout,
            guarded,
        }
    }

    /// The deadline of every call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn link(&self) -> Link {
        Link(self.shared.conn().clone())
    }

    /// Runs a script invocation (EVALSHA, with SCRIPT LOAD and one retry on NOSCRIPT).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let mut link = self.link();
        self.bounded(invocation.invoke_async(&mut link)).await
    }

    /// Whether this is a Redis Cluster connection (where a pipeline must stay in one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.shared.conn(), RedisConnection::Cluster(_))
    }

    /// Sends one command (routed by its first key on a cluster; `SCRIPT LOAD` to every
    /// node).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &::redis::Cmd) -> Result<T, Error> {
        let mut link = self.link();
        self.bounded(cmd.query_async(&mut link)).await
    }

    /// Sends one command under the deadline, past the breaker (the start-up check).
    pub(crate) async fn query_unguarded<T: FromRedisValue>(
        &self,
        cmd: &::redis::Cmd,
    ) -> Result<T, Error> {
        let mut link = self.link();
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut link)).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Sends a pipeline in one round trip (the hybrid provider's flush).
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &self,
        pipeline: &::redis::Pipeline,
    ) -> Result<T, Error> {
        let mut link = self.link();
        self.bounded(pipeline.query_async(&mut link)).await
    }

    fn timed_out(&self) -> Error {
        Error::RedisTimeout {
            timeout_ms: self.timeout.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }

    /// The deadline around every call: past it, [`Error::RedisTimeout`]. With the breaker
    /// open, the call fails at once (see `breaker.rs`).
    async fn bounded<T>(&self, call: impl Future<Output = RedisResult<T>>) -> Result<T, Error> {
        if !self.guarded {
            return match tokio::time::timeout(self.timeout, call).await {
                Ok(reply) => Ok(reply?),
                Err(_) => Err(self.timed_out()),
            };
        }
        let breaker = &self.shared;
        if breaker.is_open() {
            return Err(breaker.unavailable());
        }
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                breaker.on_success();
                Ok(value)
            }
            Ok(Err(err)) => {
                if err.is_timeout() {
                    self.warn_short_timeout(started.elapsed());
                    breaker.on_timeout();
                } else if is_connection_error(&err) {
                    breaker.open_with(err.to_string());
                } else if is_authentication_error(&err)
                    && !breaker.warned_auth.swap(true, Ordering::Relaxed)
                {
                    tracing::error!(
                        %err,
                        "sluicegate: Redis refuses the limiter's calls for want of \
                         authentication: give the password (and ACL user) in the URL, \
                         redis://user:password@host:port/; `RateLimiter::check_redis` checks \
                         this at start-up"
                    );
                }
                Err(err.into())
            }
            Err(_) => {
                breaker.on_timeout();
                Err(self.timed_out())
            }
        }
    }

    /// The connection's own response timeout (redis-rs's `ConnectionManager` default:
    /// 500 ms) ended a call before the limiter's deadline: say how to fix it, once.
    fn warn_short_timeout(&self, took: Duration) {
        if took + Duration::from_millis(20) < self.timeout
            && !self
                .shared
                .warned_short_timeout
                .swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                deadline_ms = self.timeout.as_millis() as u64,
                "sluicegate: the Redis connection timed out a call before the limiter's \
                 deadline: build the ConnectionManager with a response timeout of at least the \
                 deadline (`sluicegate::redis::connection_manager_config(deadline)`), or pass a \
                 `redis::Client` to `RateLimiterBuilder::redis_client`"
            );
        }
    }
}

/// Either connection, as the one `ConnectionLike` every call above runs on: the only place
/// that tells the two apart.
pub(crate) struct Link(pub(crate) RedisConnection);

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a ::redis::Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            RedisConnection::Single(manager) => manager.req_packed_command(cmd),
            RedisConnection::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            RedisConnection::Single(manager) => {
                manager.req_packed_commands(pipeline, offset, count)
            }
            RedisConnection::Cluster(cluster) => {
                cluster.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            RedisConnection::Single(manager) => manager.get_db(),
            RedisConnection::Cluster(cluster) => cluster.get_db(),
        }
    }
}
