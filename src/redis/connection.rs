//! The connection a Redis provider talks through, and the deadline around every call.

use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{FromRedisValue, ScriptInvocation};

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

    /// Runs a script invocation (EVALSHA, with SCRIPT LOAD and one retry on NOSCRIPT), or
    /// gives up with [`Error::RedisTimeout`] once the deadline passes.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let call = async {
            match self.conn.clone() {
                RedisConnection::Single(mut manager) => invocation.invoke_async(&mut manager).await,
                RedisConnection::Cluster(mut cluster) => {
                    invocation.invoke_async(&mut cluster).await
                }
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(Error::RedisTimeout {
                timeout_ms: self.timeout.as_millis().try_into().unwrap_or(u64::MAX),
            }),
        }
    }

    /// Whether this is a Redis Cluster connection (where a pipeline must stay in one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.conn, RedisConnection::Cluster(_))
    }

    /// Sends one command (routed by its first key on a cluster; `SCRIPT LOAD` to every
    /// node), under the same deadline.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &::redis::Cmd) -> Result<T, Error> {
        let call = async {
            match self.conn.clone() {
                RedisConnection::Single(mut manager) => cmd.query_async(&mut manager).await,
                RedisConnection::Cluster(mut cluster) => cmd.query_async(&mut cluster).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(Error::RedisTimeout {
                timeout_ms: self.timeout.as_millis().try_into().unwrap_or(u64::MAX),
            }),
        }
    }

    /// Sends a pipeline in one round trip (the hybrid provider's flush), under the same
    /// deadline.
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &self,
        pipeline: &::redis::Pipeline,
    ) -> Result<T, Error> {
        let call = async {
            match self.conn.clone() {
                RedisConnection::Single(mut manager) => pipeline.query_async(&mut manager).await,
                RedisConnection::Cluster(mut cluster) => pipeline.query_async(&mut cluster).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(Error::RedisTimeout {
                timeout_ms: self.timeout.as_millis().try_into().unwrap_or(u64::MAX),
            }),
        }
    }
}
