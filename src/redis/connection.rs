//! The connection a Redis provider talks through, and the deadline around every call.

use std::time::Duration;

use ::redis::aio::ConnectionLike;
use ::redis::aio::ConnectionManager;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{FromRedisValue, RedisFuture, RedisResult, ScriptInvocation, Value};

use crate::Error;

/// The deadline around each Redis call unless [`RateLimiterBuilder::redis_timeout`] says
/// otherwise.
///
/// [`RateLimiterBuilder::redis_timeout`]: crate::RateLimiterBuilder::redis_timeout
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(1000);

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

/// A connection with its per-call deadline.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    conn: RedisConnection,
    timeout: Duration,
}

impl Connection {
    pub(crate) fn new(conn: RedisConnection, timeout: Duration) -> Self {
        Connection { conn, timeout }
    }

    /// Runs a script invocation (EVALSHA, with SCRIPT LOAD and one retry on NOSCRIPT).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let mut link = Link(self.conn.clone());
        self.bounded(invocation.invoke_async(&mut link)).await
    }

    /// Whether this is a Redis Cluster connection (where a pipeline must stay in one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.conn, RedisConnection::Cluster(_))
    }

    /// Sends one command (routed by its first key on a cluster; `SCRIPT LOAD` to every
    /// node).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &::redis::Cmd) -> Result<T, Error> {
        let mut link = Link(self.conn.clone());
        self.bounded(cmd.query_async(&mut link)).await
    }

    /// Sends a pipeline in one round trip (the hybrid provider's flush).
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &self,
        pipeline: &::redis::Pipeline,
    ) -> Result<T, Error> {
        let mut link = Link(self.conn.clone());
        self.bounded(pipeline.query_async(&mut link)).await
    }

    /// The deadline around every call: past it, [`Error::RedisTimeout`].
    async fn bounded<T>(&self, call: impl Future<Output = RedisResult<T>>) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(Error::RedisTimeout {
                timeout_ms: self.timeout.as_millis().try_into().unwrap_or(u64::MAX),
            }),
        }
    }
}

/// Either connection, as the one `ConnectionLike` every call above runs on: the only place
/// that tells the two apart.
struct Link(RedisConnection);

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
