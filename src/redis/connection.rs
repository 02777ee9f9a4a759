//! The connection a Redis provider talks through, and the deadline around every call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionLike;
use ::redis::aio::ConnectionManager;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{
    ErrorKind, FromRedisValue, IntoConnectionInfo, RedisFuture, RedisResult, ScriptInvocation,
    ServerErrorKind, Value,
};

use super::breaker::{Breaker, is_authentication_error, is_connection_error};
use super::cluster::{ClusterNodes, slot_of_command};
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
    ///
    /// Prefer [`RedisConnection::cluster`]: a connection given alone cannot be replaced if
    /// it wedges after a master failover (see [`ClusterReconnecting`]).
    Cluster(ClusterConnection),
    /// A Redis Cluster through connections the limiter makes from a `ClusterClient`, and
    /// makes again when the current one stops answering: see [`RedisConnection::cluster`].
    ClusterClient(ClusterReconnecting),
    /// The master of a Sentinel-managed set, found through the sentinels, and found again
    /// when it stops answering (after a failover): see [`RedisConnection::sentinel`].
    Sentinel(ClusterReconnecting),
    /// A Redis Cluster the limiter routes itself, one connection per node: see
    /// [`RedisConnection::cluster_nodes`]. The one to use for Redis Cluster.
    ClusterNodes(ClusterNodes),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConnection::Single(manager) => f.debug_tuple("Single").field(manager).finish(),
            RedisConnection::Cluster(_) => f.write_str("Cluster(..)"),
            RedisConnection::ClusterClient(_) => f.write_str("ClusterClient(..)"),
            RedisConnection::Sentinel(_) => f.write_str("Sentinel(..)"),
            RedisConnection::ClusterNodes(nodes) => {
                f.debug_tuple("ClusterNodes").field(nodes).finish()
            }
        }
    }
}

impl RedisConnection {
    /// A Redis Cluster that the limiter routes itself: it learns the slot map from the
    /// first of `nodes` that answers `CLUSTER SLOTS` (waiting for it), then sends each call
    /// to its slot's master over a connection of that master's own.
    ///
    /// Every node is reached with the first node's user, password and TLS settings, at the
    /// address the cluster gives for it. Use `rediss://` URLs for TLS (feature `redis-tls`).
    ///
    /// Prefer it to [`RedisConnection::cluster`]: when a master dies, redis-rs's cluster
    /// connection holds the calls for every shard while it refreshes its slot map, up to
    /// the deadline under load. Here only the dead master's slots fail (at once when its
    /// port refuses), the map is asked for again in the background at most every
    /// [`CLUSTER_REFRESH_GAP`](super::CLUSTER_REFRESH_GAP) while calls fail, and calls go to
    /// the promoted replica as soon as a live node reports the promotion. Calls follow
    /// `MOVED` and `ASK` redirections (a resharded slot).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sluicegate::Error> {
    /// let nodes = ["redis://127.0.0.1:7000/", "redis://127.0.0.1:7001/"];
    /// let connection = sluicegate::redis::RedisConnection::cluster_nodes(nodes).await?;
    /// # let _ = connection; Ok(()) }
    /// ```
    pub async fn cluster_nodes<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, Error> {
        let infos = nodes
            .into_iter()
            .map(IntoConnectionInfo::into_connection_info)
            .collect::<RedisResult<Vec<_>>>()?;
        Ok(RedisConnection::ClusterNodes(
            ClusterNodes::connect(infos).await?,
        ))
    }

    /// A Redis Cluster connection made from `client` (waits for the first connection),
    /// which the limiter replaces with a fresh one from the same client whenever calls
    /// have done nothing but fail or time out for [`CLUSTER_REBUILD_AFTER`].
    ///
    /// [`RedisConnection::cluster_nodes`] is better: this one still holds the calls for
    /// keys on healthy shards while redis-rs refreshes its slot map after a master dies.
    ///
    /// Why the rebuild: after a master failover under load, redis-rs's cluster connection can stop
    /// answering every call, on every shard, for good (seen with a few hundred busy keys:
    /// its slot refresh never completes behind the calls retried against the dead master),
    /// while a new connection from the same client works at once. With this constructor
    /// the limiter recovers within about a second of the promotion instead of never.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sluicegate::Error> {
    /// let client = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7000/"])?;
    /// let connection = sluicegate::redis::RedisConnection::cluster(client).await?;
    /// # let _ = connection; Ok(()) }
    /// ```
    pub async fn cluster(client: ::redis::cluster::ClusterClient) -> Result<Self, Error> {
        let current = client.get_async_connection().await?;
        Ok(RedisConnection::ClusterClient(ClusterReconnecting::new(
            Source::Cluster(client),
            RedisConnection::Cluster(current),
        )))
    }

    /// The master of the set a `SentinelClient` (built with `SentinelServerType::Master`)
    /// names, through a `ConnectionManager` configured by [`connection_manager_config`].
    /// Waits until the sentinels name a master and it answers.
    ///
    /// When calls have done nothing but fail for [`CLUSTER_REBUILD_AFTER`] (the master
    /// died, or a demoted one answers `READONLY`), the limiter asks the sentinels again and
    /// connects to the master they name then: decisions continue on the promoted replica
    /// about a second after the sentinels promote it.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sluicegate::Error> {
    /// use redis::sentinel::{SentinelClient, SentinelServerType};
    /// let sentinels = vec!["redis://127.0.0.1:26379/", "redis://127.0.0.1:26380/"];
    /// // A `String`: with `redis-tls` redis-rs takes `impl AsRef<str>` here, without it `String`.
    /// let name = String::from("mymaster");
    /// let client = SentinelClient::build(sentinels, name, None, SentinelServerType::Master)?;
    /// let connection = sluicegate::redis::RedisConnection::sentinel(client).await?;
    /// # let _ = connection; Ok(()) }
    /// ```
    pub async fn sentinel(mut client: ::redis::sentinel::SentinelClient) -> Result<Self, Error> {
        let current = sentinel_master(&mut client, DEFAULT_REDIS_TIMEOUT).await?;
        Ok(RedisConnection::Sentinel(ClusterReconnecting::new(
            Source::Sentinel(tokio::sync::Mutex::new(client)),
            RedisConnection::Single(current),
        )))
    }

    /// The connection a call goes through now (a reconnecting one's current connection).
    fn current(&self) -> RedisConnection {
        match self {
            RedisConnection::ClusterClient(r) | RedisConnection::Sentinel(r) => {
                r.inner.current.read().clone()
            }
            other => other.clone(),
        }
    }
}

/// The master the sentinels name now, through a fresh `ConnectionManager`.
async fn sentinel_master(
    client: &mut ::redis::sentinel::SentinelClient,
    deadline: Duration,
) -> Result<ConnectionManager, Error> {
    let master = client.async_get_client().await?;
    let manager = tokio::time::timeout(
        deadline,
        master.get_connection_manager_with_config(connection_manager_config(deadline)),
    )
    .await
    .map_err(|_| Error::RedisTimeout {
        timeout_ms: deadline.as_millis().try_into().unwrap_or(u64::MAX),
    })??;
    Ok(manager)
}

/// Where a reconnecting connection makes its next connection from.
enum Source {
    Cluster(::redis::cluster::ClusterClient),
    Sentinel(tokio::sync::Mutex<::redis::sentinel::SentinelClient>),
}

impl Source {
    async fn connect(&self, deadline: Duration) -> Result<RedisConnection, Error> {
        match self {
            Source::Cluster(client) => {
                match tokio::time::timeout(deadline, client.get_async_connection()).await {
                    Ok(conn) => Ok(RedisConnection::Cluster(conn?)),
                    Err(_) => Err(Error::RedisTimeout {
                        timeout_ms: deadline.as_millis().try_into().unwrap_or(u64::MAX),
                    }),
                }
            }
            Source::Sentinel(client) => {
                let mut client = client.lock().await;
                Ok(RedisConnection::Single(
                    sentinel_master(&mut client, deadline).await?,
                ))
            }
        }
    }
}

/// How long calls through a [`RedisConnection::cluster`] connection must do nothing but
/// fail or time out, with no answer in between, before the limiter makes a new connection.
pub const CLUSTER_REBUILD_AFTER: Duration = Duration::from_millis(1000);

/// A connection the limiter makes again when it stops answering: from its `ClusterClient`
/// ([`RedisConnection::cluster`]) or through the sentinels
/// ([`RedisConnection::sentinel`]). Clones share it.
#[derive(Clone)]
pub struct ClusterReconnecting {
    inner: Arc<Reconnecting>,
}

impl ClusterReconnecting {
    fn new(source: Source, current: RedisConnection) -> Self {
        ClusterReconnecting {
            inner: Arc::new(Reconnecting {
                source,
                current: parking_lot::RwLock::new(current),
                rebuilding: AtomicBool::new(false),
                failing_since: AtomicU64::new(0),
                epoch: Instant::now(),
                rebuilds: AtomicU64::new(0),
            }),
        }
    }

    /// How many times the connection was made again.
    pub fn rebuilds(&self) -> u64 {
        self.inner.rebuilds.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for ClusterReconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterReconnecting")
            .field("rebuilds", &self.rebuilds.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Reconnecting {
    source: Source,
    /// A `Single` or `Cluster` connection, never a reconnecting one.
    current: parking_lot::RwLock<RedisConnection>,
    rebuilding: AtomicBool,
    /// Milliseconds since `epoch` (plus one) of the first failure since the latest answer;
    /// 0 for none.
    failing_since: AtomicU64,
    epoch: Instant,
    rebuilds: AtomicU64,
}

impl Reconnecting {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    #[inline]
    fn on_answer(&self) {
        if self.failing_since.load(Ordering::Relaxed) != 0 {
            self.failing_since.store(0, Ordering::Relaxed);
        }
    }

    /// A call failed to get an answer: after [`CLUSTER_REBUILD_AFTER`] of nothing else, make
    /// a new connection in the background (one at a time).
    fn on_failure(self: &Arc<Self>, deadline: Duration) {
        let now = self.now();
        let since =
            match self
                .failing_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(since) => since,
            };
        if now.saturating_sub(since) < CLUSTER_REBUILD_AFTER.as_millis() as u64
            || self.rebuilding.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.rebuilding.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        handle.spawn(async move {
            match this.source.connect(deadline).await {
                Ok(conn) => {
                    *this.current.write() = conn;
                    this.rebuilds.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        failing_ms = this.now().saturating_sub(since),
                        "sluicegate: the Redis connection gave no answer; made a new one"
                    );
                }
                Err(err) => {
                    tracing::warn!(%err, "sluicegate: a new Redis connection failed; trying again")
                }
            }
            // Another full period of failures before the next attempt.
            this.failing_since.store(this.now(), Ordering::Relaxed);
            this.rebuilding.store(false, Ordering::Release);
        });
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
    /// A cluster connection made again when it stops answering.
    reconnecting: Option<Arc<Reconnecting>>,
}

impl Connection {
    pub(crate) fn new(conn: RedisConnection, timeout: Duration) -> Self {
        let guarded = matches!(conn, RedisConnection::Single(_));
        let reconnecting = match &conn {
            RedisConnection::ClusterClient(r) | RedisConnection::Sentinel(r) => {
                Some(r.inner.clone())
            }
            _ => None,
        };
        Connection {
            shared: Breaker::new(conn, timeout),
            timeout,
            guarded,
            reconnecting,
        }
    }

    /// The deadline of every call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn link(&self) -> Link {
        Link::new(self.shared.conn().current())
    }

    /// Runs a script invocation (EVALSHA, with SCRIPT LOAD and one retry on NOSCRIPT).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let mut link = self.link();
        self.bounded(invocation.invoke_async(&mut link)).await
    }

    /// The limiter's own cluster routing, if this is one.
    pub(crate) fn cluster_nodes(&self) -> Option<&ClusterNodes> {
        match self.shared.conn() {
            RedisConnection::ClusterNodes(nodes) => Some(nodes),
            _ => None,
        }
    }

    /// Whether this is a Redis Cluster connection (where a pipeline must stay in one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(
            self.shared.conn(),
            RedisConnection::Cluster(_)
                | RedisConnection::ClusterClient(_)
                | RedisConnection::ClusterNodes(_)
        )
    }

    /// Sends one command (routed by its first key on a cluster). Unused since the hybrid
    /// flush loads scripts with [`evalsha`](Self::evalsha); kept for single commands.
    #[allow(dead_code)]
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

    /// Sends `evalsha`, an `EVALSHA` of the script `source`; on `NOSCRIPT` loads the script
    /// where `evalsha` runs (on a cluster: the master of its first key's slot, see [`Link`])
    /// and sends it again, all under one deadline.
    pub(crate) async fn evalsha<T: FromRedisValue>(
        &self,
        evalsha: &::redis::Cmd,
        source: &str,
    ) -> Result<T, Error> {
        let mut link = self.link();
        self.bounded(async move {
            match evalsha.query_async::<Value>(&mut link).await {
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    let mut load = ::redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(source);
                    load.query_async::<Value>(&mut link).await?;
                    evalsha.query_async(&mut link).await
                }
                Err(err) => Err(err),
                Ok(value) => T::from_redis_value(value).map_err(Into::into),
            }
        })
        .await
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
            let reply = tokio::time::timeout(self.timeout, call).await;
            if let Some(reconnecting) = &self.reconnecting {
                match &reply {
                    Ok(Ok(_)) => reconnecting.on_answer(),
                    // A demoted master answers writes with READONLY: not an answer.
                    Ok(Err(err))
                        if !err.is_timeout()
                            && !is_connection_error(err)
                            && err.kind() != ErrorKind::Server(ServerErrorKind::ReadOnly) =>
                    {
                        reconnecting.on_answer()
                    }
                    _ => reconnecting.on_failure(self.timeout),
                }
            }
            return match reply {
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
///
/// On a cluster it remembers where the latest `EVALSHA` went (the master of its first key's
/// slot) and sends a `SCRIPT LOAD` that follows it (redis-rs's `Script` on `NOSCRIPT`, or
/// [`Connection::evalsha`]) to that master alone. redis-rs would send it to every node and
/// need every answer: after a master failover the dead master stays in that list, so each
/// load waited out the deadline and failed, and a promoted replica (which never got the
/// script) answered nothing but `NOSCRIPT` to every call until the process restarted.
pub(crate) struct Link {
    conn: RedisConnection,
    /// The slot of the latest `EVALSHA` sent through this link (cluster only).
    script_slot: Option<u16>,
}

impl Link {
    /// A link through `conn`'s current connection.
    pub(crate) fn new(conn: RedisConnection) -> Self {
        Link {
            conn: conn.current(),
            script_slot: None,
        }
    }
}

/// A link never holds a [`RedisConnection::ClusterClient`] (`Link::new` resolves it): an
/// error rather than a panic if that ever changed.
fn unreachable_link<'a, T: Send + 'a>() -> RedisFuture<'a, T> {
    Box::pin(async {
        Err(::redis::RedisError::from((
            ::redis::ErrorKind::Client,
            "sluicegate: internal error: a link without a current cluster connection",
        )))
    })
}

/// `EVALSHA sha numkeys key ...`: its first key's slot; `SCRIPT LOAD`: `None` and `true`.
fn script_routing(cmd: &::redis::Cmd) -> (Option<u16>, bool) {
    let mut args = cmd.args_iter().map(|arg| match arg {
        ::redis::Arg::Simple(bytes) => bytes,
        _ => &b""[..],
    });
    match args.next() {
        Some(name) if name.eq_ignore_ascii_case(b"EVALSHA") => (slot_of_command(cmd), false),
        Some(name) if name.eq_ignore_ascii_case(b"SCRIPT") => (
            None,
            args.next()
                .is_some_and(|sub| sub.eq_ignore_ascii_case(b"LOAD")),
        ),
        _ => (None, false),
    }
}

/// A command through a cluster link, as the script routing sees it.
enum ScriptCall {
    /// An `EVALSHA` with keys, and its first key's slot.
    Evalsha(u16),
    /// A `SCRIPT LOAD` after an `EVALSHA`: the slot of that `EVALSHA`.
    LoadAfter(u16),
    /// Anything else.
    Other,
}

/// What `cmd` is to the script routing, remembering an `EVALSHA`'s slot in `latest`.
fn follow_scripts(latest: &mut Option<u16>, cmd: &::redis::Cmd) -> ScriptCall {
    match script_routing(cmd) {
        (Some(slot), _) => {
            *latest = Some(slot);
            ScriptCall::Evalsha(slot)
        }
        (None, true) => latest.map_or(ScriptCall::Other, ScriptCall::LoadAfter),
        (None, false) => ScriptCall::Other,
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a ::redis::Cmd) -> RedisFuture<'a, Value> {
        match &mut self.conn {
            RedisConnection::Single(manager) => manager.req_packed_command(cmd),
            // `Link::new` takes the current connection of a reconnecting one.
            RedisConnection::ClusterClient(_) | RedisConnection::Sentinel(_) => unreachable_link(),
            RedisConnection::Cluster(cluster) => match follow_scripts(&mut self.script_slot, cmd) {
                ScriptCall::LoadAfter(slot) => {
                    let route = Route::new(slot, SlotAddr::Master);
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    Box::pin(cluster.route_command(cmd.clone(), routing))
                }
                ScriptCall::Evalsha(_) | ScriptCall::Other => cluster.req_packed_command(cmd),
            },
            RedisConnection::ClusterNodes(nodes) => {
                let slot = match follow_scripts(&mut self.script_slot, cmd) {
                    ScriptCall::Evalsha(slot) | ScriptCall::LoadAfter(slot) => Some(slot),
                    ScriptCall::Other => slot_of_command(cmd),
                };
                nodes.command(cmd, slot)
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.conn {
            RedisConnection::Single(manager) => {
                manager.req_packed_commands(pipeline, offset, count)
            }
            RedisConnection::Cluster(cluster) => {
                cluster.req_packed_commands(pipeline, offset, count)
            }
            RedisConnection::ClusterNodes(nodes) => nodes.pipeline(pipeline, offset, count),
            RedisConnection::ClusterClient(_) | RedisConnection::Sentinel(_) => unreachable_link(),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            RedisConnection::Single(manager) => manager.get_db(),
            RedisConnection::Cluster(cluster) => cluster.get_db(),
            RedisConnection::ClusterClient(_)
            | RedisConnection::Sentinel(_)
            | RedisConnection::ClusterNodes(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_load_follows_the_latest_evalsha_to_its_slot() {
        let mut evalsha = ::redis::cmd("EVALSHA");
        evalsha
            .arg("abc")
            .arg(2)
            .arg("p:{user}:a:b")
            .arg("p:{user}:a:h")
            .arg(7);
        // The slot redis-rs's own routing computes for the key.
        let route = |routing: (Option<u16>, bool)| {
            (
                routing.0.map(|slot| Route::new(slot, SlotAddr::Master)),
                routing.1,
            )
        };
        assert_eq!(
            route(script_routing(&evalsha)),
            (
                Some(Route::with_key("p:{user}:a:b", SlotAddr::Master)),
                false
            )
        );
        let mut lower = ::redis::cmd("evalsha");
        lower.arg("abc").arg(1).arg("k");
        assert_eq!(
            route(script_routing(&lower)),
            (Some(Route::with_key("k", SlotAddr::Master)), false)
        );
        for key in ["a", "123456789", "{x}y", "sg:{alice}:a:h", "no{}tag"] {
            let mut call = ::redis::cmd("EVALSHA");
            call.arg("abc").arg(1).arg(key);
            assert_eq!(
                route(script_routing(&call)).0,
                Some(Route::with_key(key, SlotAddr::Master)),
                "{key}"
            );
        }
        let mut load = ::redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        assert_eq!(script_routing(&load), (None, true));
        let mut flush = ::redis::cmd("script");
        flush.arg("flush");
        assert_eq!(script_routing(&flush), (None, false));
        let mut keyless = ::redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0);
        assert_eq!(script_routing(&keyless), (None, false));
        let mut get = ::redis::cmd("GET");
        get.arg("k");
        assert_eq!(script_routing(&get), (None, false));
    }
}
