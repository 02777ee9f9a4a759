//! Test support: our own `redis-server` processes on free loopback ports (single server,
//! kill and restart, a 3-master cluster), and the conformance table every provider runs.
//!
//! Single-server tests use `SLUICEGATE_REDIS_URL` when it is set (keys go under a fresh
//! prefix each run) and start their own `redis-server` otherwise. With neither, they fail
//! and say how to install Redis: a Redis test never passes without Redis.
#![allow(dead_code)]

pub mod conformance;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisKey, RedisSettings};
use sluicegate::{Error, RateLimitDecision};

/// Whether a networked provider's call admitted the request; a Redis error fails the test.
/// `admitted(rl.redis().absolute().inc(&key, &rate, 1)).await`
pub async fn admitted(call: impl Future<Output = Result<RateLimitDecision, Error>>) -> bool {
    call.await.expect("the provider answered").is_allowed()
}

/// Redis settings matching `local`'s window, groups, hard limit and cache, under `prefix`.
pub fn redis_settings(
    local: &LocalRateLimiterOptions,
    prefix: &RedisKey,
    sync_interval_ms: SyncIntervalMs,
) -> RedisSettings {
    RedisSettings {
        prefix: Some(prefix.clone()),
        window_size_seconds: local.window_size_seconds,
        rate_group_size_ms: local.rate_group_size_ms,
        hard_limit_factor: local.hard_limit_factor,
        suppression_factor_cache_ms: local.suppression_factor_cache_ms,
        sync_interval_ms,
    }
}

/// The variable that points single-server tests at an external Redis.
pub const URL_VARIABLE: &str = "SLUICEGATE_REDIS_URL";

const INSTALL_HINT: &str = "Redis tests need a Redis server: install one \
    (Debian/Ubuntu: `sudo apt-get install redis-server`; macOS: `brew install redis`) so that \
    `redis-server` and `redis-cli` are on PATH, or set SLUICEGATE_REDIS_URL=redis://127.0.0.1:6379/ \
    to use a running server (single-server tests only)";

/// A name no other test or run uses: process id, time and a counter.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{tag}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A prefix no other test or run uses.
pub fn unique_prefix(tag: &str) -> RedisKey {
    RedisKey::try_from(unique(tag)).unwrap()
}

fn binary(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| panic!("`{name}` not found on PATH. {INSTALL_HINT}"))
}

/// A loopback port that is free now, and whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server` of ours: loopback only, no persistence, killed when dropped. Its log
/// is kept in its directory and printed when the test fails (the value is dropped while
/// the test panics), so a CI failure shows what the server saw.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

/// Why a `redis-server` of ours did not come up.
enum SpawnError {
    /// It exited (on a port taken since `free_port` freed it, most often).
    Exited(String),
    /// Another process answers on the port: not ours, so no test may use it.
    NotOurs { pid: u32, ours: u32 },
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("sluicegate_redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        // `free_port` frees the port before redis-server binds it, so another test may take
        // it in between: then our server exits (or another answers), and we try another port.
        for attempt in 1.. {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(why) if attempt < 5 => {
                    eprintln!(
                        "redis-server on port {}: {}; trying another port",
                        server.port,
                        why.text()
                    );
                    server.kill();
                }
                Err(why) => panic!(
                    "redis-server did not start on 5 ports; last: {}\n{}",
                    why.text(),
                    server.log()
                ),
            }
        }
        unreachable!()
    }

    /// Starts a server on `port` exactly, or says why it is not ours (to test the check).
    pub fn try_start_on(port: u16) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(unique("sluicegate_redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            dir,
            extra: Vec::new(),
            child: None,
        };
        match server.spawn() {
            Ok(()) => Ok(server),
            Err(why) => Err(why.text()),
        }
    }

    /// The process id of whatever Redis answers on this server's port.
    pub fn answering_pid(&self) -> Option<u32> {
        server_pid(self.port)
    }

    fn spawn(&mut self) -> Result<(), SpawnError> {
        let child = Command::new(binary("redis-server"))
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(["--logfile", self.log_path().to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}. {INSTALL_HINT}"));
        self.child = Some(child);
        self.wait_until_up()
    }

    /// Waits until the server answers on its port, and checks that the one answering is
    /// our child (its `INFO server` `process_id`), not another test's server.
    fn wait_until_up(&mut self) -> Result<(), SpawnError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ours = self.child.as_ref().unwrap().id();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(SpawnError::Exited(status.to_string()));
            }
            match server_pid(self.port) {
                Some(pid) if pid == ours => return Ok(()),
                // Another server holds the port; ours exits once it fails to bind.
                Some(pid) => return Err(SpawnError::NotOurs { pid, ours }),
                None => {}
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer INFO within 10 s\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The server's log so far (every start of it), for failure messages.
    pub fn log(&self) -> String {
        match std::fs::read_to_string(self.log_path()) {
            Ok(log) => format!(
                "--- redis-server log ({}) ---\n{log}--- end of log ---",
                self.log_path().display()
            ),
            Err(e) => format!(
                "(no redis-server log at {}: {e})",
                self.log_path().display()
            ),
        }
    }

    /// The process id of the server we started, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty. Fails the test if another test's
    /// server took the port while ours was down.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.spawn() {
            self.kill();
            panic!(
                "redis-server did not restart on port {}: {}\n{}",
                self.port,
                why.text(),
                self.log()
            );
        }
    }
}

impl SpawnError {
    fn text(&self) -> String {
        match self {
            SpawnError::Exited(status) => format!("it exited ({status})"),
            SpawnError::NotOurs { pid, ours } => format!(
                "the server answering is process {pid}, not ours ({ours}): the port was taken"
            ),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // The test failed: show the log, and keep it.
            eprintln!(
                "redis-server on port {} (the test failed):\n{}",
                self.port,
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `process_id` in `INFO server` of whatever answers on `port`, if a Redis does.
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{BufRead, BufReader, Read, Write};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    // `$<len>\r\n<len bytes>\r\n`; an error (`-LOADING ...`) means not ready yet.
    let len: usize = header.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// Where single-server tests find Redis: `SLUICEGATE_REDIS_URL`, or a server of our own
/// (kept alive as long as this value).
pub struct TestRedis {
    url: String,
    _server: Option<RedisServer>,
}

impl TestRedis {
    pub fn get() -> Self {
        match std::env::var(URL_VARIABLE) {
            Ok(url) if !url.is_empty() => TestRedis { url, _server: None },
            _ => {
                let server = RedisServer::start();
                TestRedis {
                    url: server.url(),
                    _server: Some(server),
                }
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url.as_str()).unwrap()
    }

    pub async fn manager(&self) -> redis::aio::ConnectionManager {
        self.client()
            .get_connection_manager()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}. {INSTALL_HINT}", self.url))
    }
}

/// A 3-master Redis Cluster of our own on loopback ports, killed when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new(binary("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}. {INSTALL_HINT}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok();
        cluster
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            let client = redis::Client::open(node.url()).unwrap();
            let mut conn = client.get_connection().unwrap();
            loop {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster on port {} not ok within 20 s:\n{info}",
                    node.port()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }
}

/// A Redis Cluster with replicas, for failover tests: `masters` masters with one replica
/// each, a short `cluster-node-timeout` (a dead master is failed over about a second after
/// it dies) and `cluster-require-full-coverage no` (the healthy shards keep answering while
/// one is down, as an operator running for availability sets it).
pub struct ReplicatedCluster {
    nodes: Vec<RedisServer>,
    node_timeout_ms: u64,
}

impl ReplicatedCluster {
    pub fn start(masters: usize, node_timeout_ms: u64) -> Self {
        let timeout = node_timeout_ms.to_string();
        let nodes: Vec<RedisServer> = (0..masters * 2)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new(binary("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}. {INSTALL_HINT}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = ReplicatedCluster {
            nodes,
            node_timeout_ms,
        };
        cluster.wait_until_replicated(masters);
        cluster
    }

    /// Waits until every node says `cluster_state:ok` and `masters` replicas have their
    /// link to their master up.
    fn wait_until_replicated(&self, masters: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().all(|n| {
                self.query_node(n.port(), &["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            let linked = self
                .nodes
                .iter()
                .filter(|n| {
                    self.query_node(n.port(), &["INFO", "replication"])
                        .is_some_and(|i| i.contains("master_link_status:up"))
                })
                .count();
            if ok && linked == masters {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicated cluster not ready within 30 s ({linked} replicas linked)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One command to the node on `port`, as text; `None` if it does not answer.
    pub fn query_node(&self, port: u16, args: &[&str]) -> Option<String> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(300))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_millis(1000)))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let value: redis::Value = cmd.query(&mut conn).ok()?;
        Some(match value {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            redis::Value::SimpleString(s) => s,
            redis::Value::Int(i) => i.to_string(),
            other => format!("{other:?}"),
        })
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    pub fn node_timeout(&self) -> Duration {
        Duration::from_millis(self.node_timeout_ms)
    }

    /// The hash slot of a key (its hash tag's), as the cluster computes it.
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.alive_port().expect("a node answers");
        self.query_node(port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.parse().ok())
            .expect("CLUSTER KEYSLOT answers")
    }

    /// A port whose node answers.
    fn alive_port(&self) -> Option<u16> {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(RedisServer::port)
            .find(|p| self.query_node(*p, &["PING"]).is_some())
    }

    /// The port of the master serving `slot` now, and of its replica, from `CLUSTER NODES`
    /// as a live node sees it.
    pub fn master_and_replica_of(&self, slot: u16) -> (u16, Option<u16>) {
        self.try_master_and_replica_of(slot)
            .expect("a master serves the slot")
    }

    /// As [`master_and_replica_of`](Self::master_and_replica_of); `None` while no live
    /// master serves the slot (during a failover).
    pub fn try_master_and_replica_of(&self, slot: u16) -> Option<(u16, Option<u16>)> {
        let port = self.alive_port()?;
        let nodes = self.query_node(port, &["CLUSTER", "NODES"])?;
        let mut master: Option<(String, u16)> = None;
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|range| {
                let mut ends = range.split('-');
                let lo: u16 = ends.next().and_then(|s| s.parse().ok()).unwrap_or(u16::MAX);
                let hi: u16 = ends.next().and_then(|s| s.parse().ok()).unwrap_or(lo);
                (lo..=hi).contains(&slot)
            });
            if serves {
                master = Some((f[0].to_owned(), port_of(f[1])));
            }
        }
        let (id, master_port) = master?;
        let replica = nodes.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 3 && f[3] == id && !f[2].contains("fail")).then(|| port_of(f[1]))
        });
        Some((master_port, replica))
    }

    /// Kills (SIGKILL) the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port() == port).unwrap();
        node.kill();
    }

    /// Whether the node on `port` answers `ROLE` as a master.
    pub fn is_master(&self, port: u16) -> bool {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(300)) else {
            return false;
        };
        let role: Result<Vec<redis::Value>, _> = redis::cmd("ROLE").query(&mut conn);
        matches!(role.as_deref(), Ok([redis::Value::BulkString(r), ..]) if r == b"master")
    }

    /// Waits until the replica on `port` runs as a master and the live nodes agree that it
    /// serves `slot`; the instant it was first seen so.
    pub fn wait_for_promotion(&self, port: u16, slot: u16, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if self.is_master(port)
                && self
                    .try_master_and_replica_of(slot)
                    .is_some_and(|(master, _)| master == port)
            {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "the replica on {port} was not promoted within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The limiter's connection: made from a client, so the limiter can make it again.
    pub async fn limiter_connection(&self) -> sluicegate::redis::RedisConnection {
        sluicegate::redis::RedisConnection::cluster_nodes(self.urls())
            .await
            .unwrap()
    }

    /// A cluster connection as an application would build it.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }
}

/// The port of a `CLUSTER NODES` address, `127.0.0.1:port@bus`.
fn port_of(address: &str) -> u16 {
    address
        .split('@')
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

impl RedisServer {
    /// A server replicating the one on `master_port`.
    pub fn start_replica_of(master_port: u16) -> Self {
        Self::start_with(&["--replicaof", "127.0.0.1", &master_port.to_string()])
    }
}

/// A `redis-server --sentinel` of ours monitoring the master on `master_port` as
/// `mymaster` (quorum 2, a master is down after 1 s), on a free loopback port; killed when
/// dropped, its log printed if the test fails.
pub struct SentinelServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl SentinelServer {
    pub const MASTER_NAME: &'static str = "mymaster";

    pub fn start(master_port: u16) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(unique("sluicegate_sentinel"));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                     sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 5000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = dir.display(),
                    log = dir.join("sentinel.log").display(),
                    name = Self::MASTER_NAME,
                ),
            )
            .unwrap();
            let child = Command::new(binary("redis-server"))
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start redis-server --sentinel: {e}. {INSTALL_HINT}")
                });
            let mut sentinel = SentinelServer {
                port,
                dir,
                child: Some(child),
            };
            let ours = sentinel.child.as_ref().unwrap().id();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if sentinel
                    .child
                    .as_mut()
                    .unwrap()
                    .try_wait()
                    .unwrap()
                    .is_some()
                {
                    break;
                }
                match server_pid(port) {
                    Some(pid) if pid == ours => return sentinel,
                    Some(_) => break,
                    None if Instant::now() > deadline => break,
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            eprintln!("sentinel on port {port} did not come up; trying another port");
        }
        panic!("no sentinel came up on 5 ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The sentinel's view: `SENTINEL MASTER mymaster` as field/value pairs.
    pub fn master_info(&self) -> Vec<(String, String)> {
        let client = redis::Client::open(self.url()).unwrap();
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(300)) else {
            return Vec::new();
        };
        let flat: Vec<String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(Self::MASTER_NAME)
            .query(&mut conn)
            .unwrap_or_default();
        flat.chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect()
    }

    /// The port of the master this sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(300))
            .ok()?;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(Self::MASTER_NAME)
            .query(&mut conn)
            .ok()?;
        addr.get(1)?.parse().ok()
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default();
            eprintln!("sentinel on port {} (the test failed):\n{log}", self.port);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
