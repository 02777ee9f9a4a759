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

/// One `redis-server` of ours: loopback only, no persistence, killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("sluicegate_redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(binary("redis-server"))
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}. {INSTALL_HINT}"));
        self.child = Some(child);
        self.wait_until_up();
    }

    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            if ping(self.port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether something on `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
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
