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
