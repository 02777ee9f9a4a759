//! A Redis Cluster routed by the limiter itself ([`RedisConnection::cluster_nodes`]): one
//! multiplexed connection per node, and a slot map learned with `CLUSTER SLOTS`.
//!
//! Why not redis-rs's cluster connection: while it refreshes its slot map (after a master
//! died, say) it holds every call, for every shard, until the refresh is done, and the
//! refresh itself tries the dead master's address. Under load a failover held the calls for
//! keys on healthy shards up to the limiter's deadline. Here a call goes straight to its
//! slot's master on that master's own connection, so a dead master fails the calls of its
//! own slots and nobody else's: at once, with one connection attempt every
//! [`CLUSTER_NODE_RETRY_GAP`]. The map is refreshed in the
//! background, at most every [`CLUSTER_REFRESH_GAP`] while calls fail, by asking the nodes
//! that answer; calls follow `MOVED` and `ASK` redirections meanwhile. Decisions go to a
//! promoted replica as soon as a live node reports the promotion.
//!
//! [`RedisConnection::cluster_nodes`]: super::RedisConnection::cluster_nodes

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::{
    Arg, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, RedisError, RedisResult,
    ServerErrorKind, Value,
};

use super::breaker::{is_authentication_error, is_connection_error};
use super::connection::connection_manager_config;
use crate::Error;

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// While calls fail, the slot map is asked for again at most this often.
pub const CLUSTER_REFRESH_GAP: Duration = Duration::from_millis(100);

/// After a node refused or dropped a connection, its calls fail at once for this long; then
/// the next call tries it again.
pub const CLUSTER_NODE_RETRY_GAP: Duration = Duration::from_millis(100);

/// How long a refresh waits for one node's `CLUSTER SLOTS` before asking the next.
const SLOTS_QUERY_TIMEOUT: Duration = Duration::from_millis(250);

/// Redirections followed by one call before its `MOVED`/`ASK` is returned as the error.
const MAX_REDIRECTS: usize = 3;

/// `TRYAGAIN` (a multi-key call on a slot being migrated, with some of its keys moved): the
/// call is sent again after 10, 20, 40, 80 ms, then the error is returned.
const TRY_AGAIN_WAITS_MS: [u64; 4] = [10, 20, 40, 80];

/// The slot of a key: CRC16 (XMODEM) of its hash tag (the first non-empty `{...}`) or of the
/// whole key, modulo 16384, as Redis Cluster computes it.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS as u16
}

/// Commands that name no key: they go to any master.
const KEYLESS: &[&[u8]] = &[
    b"PING",
    b"SCRIPT",
    b"CONFIG",
    b"INFO",
    b"CLUSTER",
    b"TIME",
    b"ECHO",
    b"HELLO",
    b"AUTH",
    b"SELECT",
    b"CLIENT",
    b"COMMAND",
    b"DBSIZE",
    b"FLUSHALL",
    b"FLUSHDB",
    b"FUNCTION",
    b"MEMORY",
    b"SLOWLOG",
    b"LATENCY",
    b"WAIT",
    b"MULTI",
    b"EXEC",
    b"DISCARD",
    b"ASKING",
    b"READONLY",
    b"READWRITE",
];

/// The slot a command's first key is in; `None` for a command without a key.
pub(crate) fn slot_of_command(cmd: &Cmd) -> Option<u16> {
    let mut args = cmd.args_iter().map(|arg| match arg {
        Arg::Simple(bytes) => bytes,
        _ => &b""[..],
    });
    let name = args.next()?;
    let scripted = [
        &b"EVALSHA"[..],
        b"EVAL",
        b"EVALSHA_RO",
        b"EVAL_RO",
        b"FCALL",
    ];
    if scripted.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        let _script = args.next()?;
        let numkeys = args.next()?;
        if numkeys == b"0" {
            return None;
        }
        return args.next().map(slot_of);
    }
    if KEYLESS.iter().any(|k| name.eq_ignore_ascii_case(k)) {
        return None;
    }
    args.next().map(slot_of)
}

/// A Redis Cluster connection that routes each call to its slot's master itself, made by
/// [`RedisConnection::cluster_nodes`]. Clones share it.
///
/// One multiplexed connection per node, and a slot map learned with `CLUSTER SLOTS`. A
/// dead master fails the calls of its own slots and nobody else's: at once, with one
/// connection attempt every [`CLUSTER_NODE_RETRY_GAP`]. While calls fail the map is asked
/// for again in the background, at most every [`CLUSTER_REFRESH_GAP`], from the nodes that
/// answer; calls follow `MOVED` and `ASK` meanwhile, and `TRYAGAIN` is retried for 150 ms.
/// redis-rs's own cluster connection, by contrast, holds every call for every shard while
/// it refreshes its map after a master dies.
///
/// It is also a `redis::aio::ConnectionLike`, for commands of your own on the same
/// routing (each to the master of its first key's slot).
///
/// [`RedisConnection::cluster_nodes`]: super::RedisConnection::cluster_nodes
#[derive(Clone)]
pub struct ClusterNodes {
    inner: Arc<Router>,
}

impl std::fmt::Debug for ClusterNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.inner.map.read().clone();
        f.debug_struct("ClusterNodes")
            .field(
                "masters",
                &map.masters.iter().map(|n| n.address()).collect::<Vec<_>>(),
            )
            .field("refreshes", &self.refreshes())
            .finish()
    }
}

impl ClusterNodes {
    /// Connects through the first of `nodes` that answers `CLUSTER SLOTS` and learns the
    /// slot map; every node is reached with the first node's settings (user, password, TLS)
    /// at the address the cluster gives for it.
    pub(crate) async fn connect(nodes: Vec<ConnectionInfo>) -> Result<Self, Error> {
        let Some(template) = nodes.first().cloned() else {
            return Err(Error::invalid(
                "cluster_nodes",
                "no node",
                "give the address of at least one node of the cluster",
            ));
        };
        let mut seeds = Vec::with_capacity(nodes.len());
        for info in &nodes {
            match info.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    seeds.push((host.clone(), *port))
                }
                other => {
                    return Err(Error::invalid(
                        "cluster_nodes",
                        format!("{other:?}"),
                        "a cluster node is reached over TCP (redis:// or rediss://)",
                    ));
                }
            }
        }
        let router = Router::new(template, seeds);
        router.refresh().await?;
        Ok(ClusterNodes { inner: router })
    }

    /// How many times the slot map was learned (the first time included).
    pub fn refreshes(&self) -> u64 {
        self.inner.refreshes.load(Ordering::Relaxed)
    }

    /// The master the current slot map names for `slot`, as `host:port`.
    pub fn master_of(&self, slot: u16) -> Option<String> {
        self.inner.map.read().owner_of(slot).map(|n| n.address())
    }

    /// Sends `cmd` to every master of the current map at once, each bounded by `deadline`:
    /// each master's address and reply.
    pub(crate) async fn on_every_master(
        &self,
        cmd: &Cmd,
        deadline: Duration,
    ) -> Vec<(String, RedisResult<Value>)> {
        let masters = self.inner.map.read().masters.clone();
        let replies = masters.iter().map(|node| async move {
            let reply = tokio::time::timeout(deadline, async {
                let mut conn = node.connection(self.inner.deadline).await?;
                conn.req_packed_command(cmd).await.and_then(server_error)
            })
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer within the deadline",
                )))
            });
            (node.address(), reply)
        });
        futures_util::future::join_all(replies).await
    }

    /// Sends `cmd` to the master of `slot` (any master for `None`).
    pub(crate) fn command<'a>(
        &self,
        cmd: &'a Cmd,
        slot: Option<u16>,
    ) -> ::redis::RedisFuture<'a, Value> {
        let router = self.inner.clone();
        Box::pin(async move {
            match router.call(slot, Request::One(cmd)).await? {
                Reply::One(value) => Ok(value),
                Reply::Many(_) => Err(internal("a command answered as a pipeline")),
            }
        })
    }

    /// Sends a pipeline to the master of its first key's slot.
    pub(crate) fn pipeline<'a>(
        &self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<Value>> {
        let router = self.inner.clone();
        let slot = pipeline.cmd_iter().find_map(slot_of_command);
        Box::pin(async move {
            match router
                .call(slot, Request::Many(pipeline, offset, count))
                .await?
            {
                Reply::Many(values) => Ok(values),
                Reply::One(_) => Err(internal("a pipeline answered as a command")),
            }
        })
    }
}

/// A command's reply as an error when the server answered one (`MOVED`, `ASK`, ...): the
/// multiplexed connection hands those over as values.
fn server_error(value: Value) -> RedisResult<Value> {
    match value {
        Value::ServerError(err) => Err(err.into()),
        other => Ok(other),
    }
}

/// Your own commands through the limiter's routing: each goes to the master of its first
/// key's slot (a pipeline: of its first command's), any master for a command without a key.
impl ConnectionLike for ClusterNodes {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> ::redis::RedisFuture<'a, Value> {
        self.command(cmd, slot_of_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<Value>> {
        self.pipeline(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        0
    }
}

fn internal(what: &'static str) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "sluicegate: internal error",
        what.to_owned(),
    ))
}

/// What a call sends: one command, or part of a pipeline's replies.
#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a Cmd),
    Many(&'a Pipeline, usize, usize),
}

enum Reply {
    One(Value),
    Many(Vec<Value>),
}

impl Request<'_> {
    async fn send(self, conn: &mut ConnectionManager, asking: bool) -> RedisResult<Reply> {
        match self {
            Request::One(cmd) if asking => {
                // ASKING holds for the next command on the connection: one pipeline, so that
                // no other call's command comes between them on the multiplexed socket.
                let mut pipe = ::redis::pipe();
                pipe.cmd("ASKING").add_command(cmd.clone());
                let mut values = conn.req_packed_commands(&pipe, 1, 1).await?;
                let value = values
                    .pop()
                    .ok_or_else(|| internal("no reply after ASKING"))?;
                server_error(value).map(Reply::One)
            }
            Request::One(cmd) => conn
                .req_packed_command(cmd)
                .await
                .and_then(server_error)
                .map(Reply::One),
            Request::Many(pipeline, offset, count) => conn
                .req_packed_commands(pipeline, offset, count)
                .await
                .map(Reply::Many),
        }
    }
}

struct Router {
    /// The first node given: every node is reached with its settings.
    template: ConnectionInfo,
    /// The nodes given, asked when no node of the map answers.
    seeds: Vec<(String, u16)>,
    /// Bounds a connection attempt to a node.
    deadline: Duration,
    map: parking_lot::RwLock<Arc<SlotMap>>,
    /// Every node the map names or the seeds give, by address: a new map keeps the
    /// connections of the nodes it names again.
    nodes: parking_lot::Mutex<HashMap<(String, u16), Arc<Node>>>,
    refreshing: AtomicBool,
    /// Milliseconds since `epoch` (plus one) when the latest refresh started; 0 for none.
    last_refresh: AtomicU64,
    epoch: Instant,
    refreshes: AtomicU64,
}

/// Which master serves each slot, and which nodes a refresh asks.
struct SlotMap {
    /// Each slot's master as an index into `masters`; `u16::MAX` for a slot nobody serves.
    owner: Box<[u16]>,
    masters: Vec<Arc<Node>>,
    /// The masters, then the replicas, as the latest `CLUSTER SLOTS` named them.
    known: Vec<Arc<Node>>,
}

impl SlotMap {
    fn empty() -> Self {
        SlotMap {
            owner: vec![u16::MAX; SLOTS].into_boxed_slice(),
            masters: Vec::new(),
            known: Vec::new(),
        }
    }

    fn owner_of(&self, slot: u16) -> Option<&Arc<Node>> {
        let index = *self.owner.get(usize::from(slot))?;
        self.masters.get(usize::from(index))
    }

    /// The master of `slot`, or any master for `None` (the first: calls without a key are
    /// rare, `PING` and `CONFIG GET` at start-up).
    fn node_for(&self, slot: Option<u16>) -> Option<Arc<Node>> {
        match slot {
            Some(slot) => self.owner_of(slot).or(self.masters.first()).cloned(),
            None => self.masters.first().cloned(),
        }
    }
}

/// One node: its address and, once a call has needed it, its connection.
struct Node {
    host: String,
    port: u16,
    client: ::redis::Client,
    conn: tokio::sync::OnceCell<ConnectionManager>,
    /// The latest call got no answer (refused, dropped, timed out, cancelled): a refresh
    /// asks it last.
    failing: AtomicBool,
    /// When (the router's milliseconds) a call last found no connection to the node; 0
    /// since it answered.
    unreachable_at: AtomicU64,
}

impl Node {
    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The node's connection, made on first use (again after a first attempt failed).
    async fn connection(&self, deadline: Duration) -> RedisResult<ConnectionManager> {
        self.conn
            .get_or_try_init(|| async {
                // One attempt per reconnection, bounded by `deadline` (the config's
                // connection timeout): the router fails the node's calls at once between
                // attempts (`CLUSTER_NODE_RETRY_GAP`) and refreshes its map.
                let config = connection_manager_config(deadline).set_number_of_retries(0);
                self.client.get_connection_manager_with_config(config).await
            })
            .await
            .cloned()
    }
}

/// Marks a call's node failing and asks for a new map when the call ends without an
/// answer, including when its caller stops waiting (the limiter's deadline).
struct Attempt<'a> {
    router: &'a Arc<Router>,
    node: &'a Node,
    answered: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.node.failing.store(true, Ordering::Relaxed);
            self.router.refresh_soon();
        }
    }
}

/// Whether an error says the map may be wrong or the node gone: worth a new map.
fn points_elsewhere(err: &RedisError) -> bool {
    err.is_timeout()
        || is_connection_error(err)
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        )
}

impl Router {
    /// A router with no map yet.
    fn new(template: ConnectionInfo, seeds: Vec<(String, u16)>) -> Arc<Self> {
        Arc::new(Router {
            template,
            seeds,
            deadline: super::DEFAULT_REDIS_TIMEOUT,
            map: parking_lot::RwLock::new(Arc::new(SlotMap::empty())),
            nodes: parking_lot::Mutex::new(HashMap::new()),
            refreshing: AtomicBool::new(false),
            last_refresh: AtomicU64::new(0),
            epoch: Instant::now(),
            refreshes: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    async fn call(self: &Arc<Self>, slot: Option<u16>, request: Request<'_>) -> RedisResult<Reply> {
        let mut node = self.map.read().node_for(slot);
        let mut asking = false;
        let (mut redirects, mut tries_again) = (0, 0);
        loop {
            let Some(target) = node.take() else {
                self.refresh_soon();
                return Err(RedisError::from((
                    ErrorKind::ClusterConnectionNotFound,
                    "sluicegate: no cluster node serves this slot yet",
                )));
            };
            let unreachable_at = target.unreachable_at.load(Ordering::Relaxed);
            let now = self.now();
            if unreachable_at != 0
                && now.saturating_sub(unreachable_at) < CLUSTER_NODE_RETRY_GAP.as_millis() as u64
            {
                self.refresh_soon();
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!(
                        "sluicegate: cluster node {} gave no connection {} ms ago (tried again \
                         every {} ms)",
                        target.address(),
                        now.saturating_sub(unreachable_at),
                        CLUSTER_NODE_RETRY_GAP.as_millis()
                    ),
                )));
            }
            let mut attempt = Attempt {
                router: self,
                node: &target,
                answered: false,
            };
            let reply = match target.connection(self.deadline).await {
                Ok(mut conn) => request.send(&mut conn, asking).await,
                Err(err) => Err(err),
            };
            let err = match reply {
                Ok(reply) => {
                    attempt.answered = true;
                    target.failing.store(false, Ordering::Relaxed);
                    if unreachable_at != 0 {
                        target.unreachable_at.store(0, Ordering::Relaxed);
                    }
                    return Ok(reply);
                }
                Err(err) => err,
            };
            if is_connection_error(&err) {
                target.unreachable_at.store(self.now(), Ordering::Relaxed);
            } else if unreachable_at != 0 {
                target.unreachable_at.store(0, Ordering::Relaxed);
            }
            // A server's answer, even an error, is an answer.
            attempt.answered = !points_elsewhere(&err);
            drop(attempt);
            if err.kind() == ErrorKind::Server(ServerErrorKind::TryAgain)
                && let Some(&wait) = TRY_AGAIN_WAITS_MS.get(tries_again)
            {
                tries_again += 1;
                tokio::time::sleep(Duration::from_millis(wait)).await;
                node = Some(target);
                continue;
            }
            let redirected = matches!(
                err.kind(),
                ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)
            );
            if !redirected || redirects == MAX_REDIRECTS {
                return Err(err);
            }
            redirects += 1;
            let Some((host, port)) = err.redirect_node().and_then(|(addr, _)| split_addr(addr))
            else {
                return Err(err);
            };
            asking = err.kind() == ErrorKind::Server(ServerErrorKind::Ask);
            if !asking {
                // The slot has moved for good: the whole map is likely stale.
                self.refresh_soon();
            }
            node = self.node(host, port);
        }
    }

    /// Starts a refresh in the background unless one is running or started within
    /// [`CLUSTER_REFRESH_GAP`].
    fn refresh_soon(self: &Arc<Self>) {
        let now = self.now();
        let last = self.last_refresh.load(Ordering::Relaxed);
        if (last != 0 && now < last + CLUSTER_REFRESH_GAP.as_millis() as u64)
            || self.refreshing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        handle.spawn(async move {
            if let Err(err) = this.refresh().await {
                tracing::warn!(%err, "sluicegate: no Redis Cluster node gave its slot map");
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Asks the nodes for the slot map, those answering lately first, and installs the
    /// first answer.
    async fn refresh(self: &Arc<Self>) -> Result<(), Error> {
        self.last_refresh.store(self.now(), Ordering::Relaxed);
        let mut candidates: Vec<Arc<Node>> = self.map.read().known.clone();
        for (host, port) in &self.seeds {
            if let Some(node) = self.node(host.clone(), *port)
                && !candidates.iter().any(|c| Arc::ptr_eq(c, &node))
            {
                candidates.push(node);
            }
        }
        // Stable: masters before replicas before seeds among the answering, then the rest.
        candidates.sort_by_key(|n| n.failing.load(Ordering::Relaxed));
        let (mut last_err, mut refused_auth) = (None, None);
        for node in candidates {
            let query = async {
                let mut conn = node.connection(self.deadline).await?;
                let mut slots = ::redis::cmd("CLUSTER");
                slots.arg("SLOTS");
                conn.req_packed_command(&slots).await.and_then(server_error)
            };
            match tokio::time::timeout(SLOTS_QUERY_TIMEOUT.min(self.deadline), query).await {
                Ok(Ok(reply)) => match parse_slots(&reply, &node.host) {
                    Some(ranges) if !ranges.is_empty() => {
                        node.failing.store(false, Ordering::Relaxed);
                        self.install(&ranges);
                        return Ok(());
                    }
                    _ => last_err = Some(format!("{}: no slot map in {reply:?}", node.address())),
                },
                Ok(Err(err)) => {
                    if points_elsewhere(&err) {
                        node.failing.store(true, Ordering::Relaxed);
                    }
                    if is_authentication_error(&err) {
                        refused_auth = Some(format!("{}: {err}", node.address()));
                    }
                    last_err = Some(format!("{}: {err}", node.address()));
                }
                Err(_) => {
                    node.failing.store(true, Ordering::Relaxed);
                    last_err = Some(format!("{}: CLUSTER SLOTS timed out", node.address()));
                }
            }
        }
        if let Some(detail) = refused_auth {
            return Err(Error::RedisAuthentication { detail });
        }
        Err(Error::Redis(RedisError::from((
            ErrorKind::ClusterConnectionNotFound,
            "sluicegate: no cluster node answered CLUSTER SLOTS",
            last_err.unwrap_or_else(|| "no node to ask".to_owned()),
        ))))
    }

    /// Makes `ranges` the map, keeping the connections of the nodes it names again.
    fn install(&self, ranges: &[SlotRange]) {
        let mut map = SlotMap::empty();
        let mut index_of: HashMap<(String, u16), u16> = HashMap::new();
        for range in ranges {
            let Some(node) = self.node(range.master.0.clone(), range.master.1) else {
                continue;
            };
            let index = *index_of.entry(range.master.clone()).or_insert_with(|| {
                map.masters.push(node);
                (map.masters.len() - 1) as u16
            });
            let (start, end) = (usize::from(range.start), usize::from(range.end));
            if start <= end && end < SLOTS {
                map.owner[start..=end].fill(index);
            }
        }
        map.known = map.masters.clone();
        for range in ranges {
            for (host, port) in &range.replicas {
                if let Some(node) = self.node(host.clone(), *port)
                    && !map.known.iter().any(|k| Arc::ptr_eq(k, &node))
                {
                    map.known.push(node);
                }
            }
        }
        let named: Vec<(String, u16)> = map
            .known
            .iter()
            .map(|n| (n.host.clone(), n.port))
            .chain(self.seeds.iter().cloned())
            .collect();
        self.nodes
            .lock()
            .retain(|address, _| named.contains(address));
        *self.map.write() = Arc::new(map);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }

    /// The node at `host:port`, made (without connecting) if it is new.
    fn node(&self, host: String, port: u16) -> Option<Arc<Node>> {
        let mut nodes = self.nodes.lock();
        if let Some(node) = nodes.get(&(host.clone(), port)) {
            return Some(node.clone());
        }
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.clone(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.clone(), port),
        };
        let client = match ::redis::Client::open(self.template.clone().set_addr(addr)) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(%err, host, port, "sluicegate: cannot reach a cluster node");
                return None;
            }
        };
        let node = Arc::new(Node {
            host: host.clone(),
            port,
            client,
            conn: tokio::sync::OnceCell::new(),
            failing: AtomicBool::new(false),
            unreachable_at: AtomicU64::new(0),
        });
        nodes.insert((host, port), node.clone());
        Some(node)
    }
}

/// `host:port` (an IPv6 host may come bracketed or not: the port is after the last colon).
fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

/// One range of a `CLUSTER SLOTS` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotRange {
    start: u16,
    end: u16,
    master: (String, u16),
    replicas: Vec<(String, u16)>,
}

/// The ranges of a `CLUSTER SLOTS` reply from the node at `asked` (a node whose host is
/// empty or `?` is at that host); `None` if the reply is not one.
fn parse_slots(reply: &Value, asked: &str) -> Option<Vec<SlotRange>> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let node = |v: &Value| {
        let Value::Array(fields) = v else {
            return None;
        };
        let host = text(fields.first()?)?;
        let port = int(fields.get(1)?)?;
        let host = if host.is_empty() || host == "?" {
            asked.to_owned()
        } else {
            host
        };
        Some((host, port))
    };
    entries
        .iter()
        .map(|entry| {
            let Value::Array(fields) = entry else {
                return None;
            };
            Some(SlotRange {
                start: int(fields.first()?)?,
                end: int(fields.get(1)?)?,
                master: node(fields.get(2)?)?,
                replicas: fields.iter().skip(3).filter_map(node).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_redis_cluster_computes() {
        // The examples of the Redis Cluster specification and `CLUSTER KEYSLOT` answers.
        assert_eq!(slot_of(b"123456789"), 12739);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"{user1000}.followers"), slot_of(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot_of(b"foo{}{bar}"), crc_of(b"foo{}{bar}"));
        // Only the first tag counts.
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"sg:{alice}:a:h"), slot_of(b"alice"));
    }

    fn crc_of(key: &[u8]) -> u16 {
        crc16::State::<crc16::XMODEM>::calculate(key) % 16384
    }

    #[test]
    fn a_command_is_routed_by_its_first_key() {
        let mut evalsha = ::redis::cmd("EVALSHA");
        evalsha
            .arg("abc")
            .arg(2)
            .arg("p:{user}:a:b")
            .arg("p:{x}:a:h");
        assert_eq!(slot_of_command(&evalsha), Some(slot_of(b"user")));
        let mut keyless = ::redis::cmd("evalsha");
        keyless.arg("abc").arg(0).arg("argument");
        assert_eq!(slot_of_command(&keyless), None);
        let mut get = ::redis::cmd("HGET");
        get.arg("p:{bob}:a:h").arg("t");
        assert_eq!(slot_of_command(&get), Some(slot_of(b"bob")));
        for keyless in ["PING", "script", "CONFIG"] {
            let mut cmd = ::redis::cmd(keyless);
            cmd.arg("LOAD");
            assert_eq!(slot_of_command(&cmd), None, "{keyless}");
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_cluster_slots_reply_gives_each_range_its_master_and_replicas() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7000), bulk("id0")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7003), bulk("id3")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7001), bulk("id1")]),
            ]),
        ]);
        let ranges = parse_slots(&reply, "10.0.0.9").unwrap();
        assert_eq!(
            ranges,
            vec![
                SlotRange {
                    start: 0,
                    end: 5460,
                    master: ("127.0.0.1".into(), 7000),
                    replicas: vec![("127.0.0.1".into(), 7003)],
                },
                SlotRange {
                    start: 5461,
                    end: 16383,
                    master: ("10.0.0.9".into(), 7001),
                    replicas: vec![],
                },
            ]
        );
        assert_eq!(parse_slots(&Value::Int(1), "h"), None);
        // RESP3 servers may send a host as a simple string; `?` is the asked node's host.
        let simple = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(1),
            Value::Array(vec![
                Value::SimpleString("10.0.0.1".into()),
                Value::Int(7000),
            ]),
            Value::Array(vec![bulk("?"), Value::Int(7001)]),
        ])]);
        assert_eq!(
            parse_slots(&simple, "10.0.0.9").unwrap()[0],
            SlotRange {
                start: 0,
                end: 1,
                master: ("10.0.0.1".into(), 7000),
                replicas: vec![("10.0.0.9".into(), 7001)],
            }
        );
        let bad = Value::Array(vec![Value::Array(vec![Value::Int(0)])]);
        assert_eq!(parse_slots(&bad, "h"), None);
    }

    fn range(start: u16, end: u16, master: u16, replicas: &[u16]) -> SlotRange {
        SlotRange {
            start,
            end,
            master: ("127.0.0.1".into(), master),
            replicas: replicas.iter().map(|&p| ("127.0.0.1".into(), p)).collect(),
        }
    }

    fn ports(nodes: &[Arc<Node>]) -> Vec<u16> {
        nodes.iter().map(|n| n.port).collect()
    }

    #[test]
    fn a_map_names_each_slots_master_asks_masters_then_replicas_and_keeps_connections() {
        use ::redis::IntoConnectionInfo;
        let template = "redis://:pw@127.0.0.1:7000/"
            .into_connection_info()
            .unwrap();
        let router = Router::new(template, vec![("127.0.0.1".into(), 7000)]);
        router.install(&[
            range(0, 5460, 7000, &[7003]),
            range(5461, 10922, 7001, &[7004, 7003]),
            range(10923, 16383, 7002, &[]),
            // A second range of a master already named: one node, not two.
            range(16383, 16383, 7000, &[]),
        ]);
        let map = router.map.read().clone();
        assert_eq!(ports(&map.masters), [7000, 7001, 7002]);
        assert_eq!(
            ports(&map.known),
            [7000, 7001, 7002, 7003, 7004],
            "each node once"
        );
        let owner = |slot| map.owner_of(slot).map(|n| n.port);
        assert_eq!(owner(0), Some(7000));
        assert_eq!(owner(5460), Some(7000));
        assert_eq!(owner(5461), Some(7001));
        assert_eq!(owner(10922), Some(7001));
        assert_eq!(owner(10923), Some(7002));
        assert_eq!(owner(16383), Some(7000), "the later range wins");
        assert_eq!(map.node_for(None).map(|n| n.port), Some(7000));
        assert_eq!(router.refreshes.load(Ordering::Relaxed), 1);
        // Every node is reached with the template's password, at its own address.
        let node = map.known[4].clone();
        let info = node.client.get_connection_info();
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("127.0.0.1".into(), 7004));

        // A new map keeps the nodes it names again (their connections) and forgets the rest,
        // seeds aside.
        router.install(&[range(0, 16383, 7001, &[7005])]);
        let next = router.map.read().clone();
        assert!(Arc::ptr_eq(&next.masters[0], &map.masters[1]));
        assert_eq!(ports(&next.known), [7001, 7005]);
        let mut kept: Vec<u16> = router.nodes.lock().keys().map(|(_, p)| *p).collect();
        kept.sort();
        assert_eq!(kept, [7000, 7001, 7005]);
        assert_eq!(next.owner_of(7000).map(|n| n.port), Some(7001));

        // An empty map serves nothing: a slot's call finds no node.
        assert!(SlotMap::empty().node_for(Some(1)).is_none());
        assert!(SlotMap::empty().node_for(None).is_none());
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn a_tls_template_reaches_every_node_over_tls() {
        use ::redis::IntoConnectionInfo;
        let template = "rediss://127.0.0.1:7000/#insecure"
            .into_connection_info()
            .unwrap();
        let router = Router::new(template, vec![("127.0.0.1".into(), 7000)]);
        let node = router.node("10.0.0.2".into(), 7002).unwrap();
        match node.client.get_connection_info().addr() {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => assert_eq!((host.as_str(), *port, *insecure), ("10.0.0.2", 7002, true)),
            other => panic!("a TLS cluster's node reached without TLS: {other:?}"),
        }
    }

    #[test]
    fn a_redirect_address_splits_at_its_last_colon() {
        assert_eq!(
            split_addr("127.0.0.1:7002"),
            Some(("127.0.0.1".into(), 7002))
        );
        assert_eq!(split_addr("[::1]:7002"), Some(("::1".into(), 7002)));
        assert_eq!(split_addr("::1:7002"), Some(("::1".into(), 7002)));
        assert_eq!(split_addr("nohost"), None);
        assert_eq!(split_addr("h:port"), None);
    }
}
