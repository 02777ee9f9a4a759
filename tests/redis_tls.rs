//! TLS to Redis (`rediss://`, feature `redis-tls`; issue 13, "Security of the setup").
//!
//! Each test makes its own certificate authority and a server certificate for 127.0.0.1
//! with the `openssl` CLI, starts a `redis-server` that listens on a TLS port only
//! (`--port 0`) and knows one ACL user with a password, and builds the limiter over
//! `rediss://user:password@127.0.0.1:PORT` trusting that CA. With no plaintext port, every
//! decision that reaches Redis went over TLS. A certificate from another CA must fail the
//! start-up check and every call, naming the certificate: never a silent fail-open.
#![cfg(feature = "redis-tls")]

mod support;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::RedisKey;
use sluicegate::{Error, RateLimit, RateLimitDecision, RateLimiter, RateLimiterBuilder};

const USER: &str = "limiter";
const PASSWORD: &str = "tls-secret";

/// Runs `openssl` with `args` in `dir`; fails the test with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the openssl CLI: {e} (install openssl)"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (P-256 key, self-signed, `CA:TRUE`) written as `<name>.pem` / `<name>.key` in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=sluicegate test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &key,
            "-out",
            &cert,
        ],
    );
    dir.join(cert)
}

/// A server certificate for 127.0.0.1 (and `localhost`) signed by the CA `ca` in `dir`.
fn make_server_cert(dir: &Path, ca: &str) -> (PathBuf, PathBuf) {
    make_leaf(
        dir,
        ca,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
}

/// A client certificate (`clientAuth`) for the limiter, signed by the CA `ca` in `dir`.
fn make_client_cert(dir: &Path, ca: &str) -> (PathBuf, PathBuf) {
    make_leaf(
        dir,
        ca,
        "client",
        "/CN=sluicegate limiter",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    )
}

/// A P-256 key and a certificate `<name>.pem` / `<name>.key` with subject `subject` and the
/// extensions `ext`, signed by the CA `ca` in `dir`.
fn make_leaf(dir: &Path, ca: &str, name: &str, subject: &str, ext: &str) -> (PathBuf, PathBuf) {
    let (ext_file, csr) = (format!("{name}.ext"), format!("{name}.csr"));
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    std::fs::write(dir.join(&ext_file), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &cert,
        ],
    );
    (dir.join(cert), dir.join(key))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// A `redis-server` with TLS on a loopback port and no plaintext port, an ACL user
/// `limiter` with a password and the default user off; killed (and its files removed
/// unless the test failed) when dropped.
struct TlsRedis {
    dir: PathBuf,
    port: u16,
    ca: Vec<u8>,
    other_ca: Vec<u8>,
    /// With `--tls-auth-clients yes`: the client certificate and key (PEM) the test made,
    /// which [`client`](Self::client) presents.
    client_cert: Option<redis::ClientTlsConfig>,
    child: Child,
}

impl TlsRedis {
    /// Server authentication only: clients prove who they are with the ACL user.
    fn start() -> Self {
        Self::start_with(false)
    }

    /// `mutual`: the server also asks every client for a certificate from its CA
    /// (`--tls-auth-clients yes`), and the test makes one for the limiter.
    fn start_with(mutual: bool) -> Self {
        let dir = std::env::temp_dir().join(support::unique("sluicegate_tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = std::fs::read(make_ca(&dir, "ca")).unwrap();
        // A second CA that signed nothing this server has: trusting it must fail.
        let other_ca = std::fs::read(make_ca(&dir, "other-ca")).unwrap();
        let (cert, key) = make_server_cert(&dir, "ca");
        let client_cert = mutual.then(|| {
            let (cert, key) = make_client_cert(&dir, "ca");
            redis::ClientTlsConfig {
                client_cert: std::fs::read(cert).unwrap(),
                client_key: std::fs::read(key).unwrap(),
            }
        });
        for attempt in 1..=5 {
            let port = free_port();
            let mut server = TlsRedis {
                child: Self::spawn(&dir, port, &cert, &key, mutual),
                dir: dir.clone(),
                port,
                ca: ca.clone(),
                other_ca: other_ca.clone(),
                client_cert: client_cert.clone(),
            };
            match server.wait_until_up() {
                Ok(()) => return server,
                // The port was taken between `free_port` and the bind: try another.
                Err(why) if attempt < 5 => {
                    eprintln!("TLS redis-server on port {port}: {why}; trying another port")
                }
                Err(why) => panic!("TLS redis-server did not start: {why}\n{}", server.log()),
            }
        }
        unreachable!()
    }

    fn spawn(dir: &Path, port: u16, cert: &Path, key: &Path, mutual: bool) -> Child {
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        Command::new("redis-server")
            .args(["--port", "0"])
            .args(["--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &path(cert)])
            .args(["--tls-key-file", &path(key)])
            .args(["--tls-ca-cert-file", &path(&dir.join("ca.pem"))])
            .args(["--tls-auth-clients", if mutual { "yes" } else { "no" }])
            .args(["--user", USER, "on", &format!(">{PASSWORD}"), "~*", "+@all"])
            .args(["--user", "default", "off"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &path(dir)])
            .args(["--logfile", &path(&dir.join("redis.log"))])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e} (install redis-server)"))
    }

    /// Waits until our child answers `PING` over TLS as the ACL user.
    fn wait_until_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = self.client(&self.ca.clone(), PASSWORD);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("it exited ({status})"));
            }
            let answer = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match answer {
                Ok(pong) if pong == "PONG" => return Ok(()),
                _ if Instant::now() > deadline => {
                    return Err(format!("no PONG over TLS within 10 s: {answer:?}"));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn url(&self, password: &str) -> String {
        format!("rediss://{USER}:{password}@127.0.0.1:{}/", self.port)
    }

    /// A client for this server trusting only the CA `root` (PEM), as the ACL user, with
    /// the client certificate when the server asks for one.
    fn client(&self, root: &[u8], password: &str) -> redis::Client {
        self.client_presenting(root, password, self.client_cert.clone())
    }

    fn client_presenting(
        &self,
        root: &[u8],
        password: &str,
        client_tls: Option<redis::ClientTlsConfig>,
    ) -> redis::Client {
        redis::Client::build_with_tls(
            self.url(password),
            redis::TlsCertificates {
                client_tls,
                root_cert: Some(root.to_vec()),
            },
        )
        .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "TLS redis-server on port {} (the test failed), files in {}:\n{}",
                self.port,
                self.dir.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn limiter(client: redis::Client, prefix: &RedisKey) -> RateLimiter {
    let local = LocalRateLimiterOptions {
        window_size_seconds: 10.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    RateLimiterBuilder::new(local)
        .redis_client(
            client,
            support::redis_settings(&local, prefix, SyncIntervalMs::try_from(20).unwrap()),
        )
        .redis_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_hybrid_decide_over_tls_as_an_acl_user() {
    let server = TlsRedis::start();
    let prefix = support::unique_prefix("tls");
    let rl = limiter(server.client(&server.ca, PASSWORD), &prefix);

    let check = rl.check_redis().await.unwrap();
    assert!(check.warnings.is_empty(), "{:?}", check.warnings);

    // The Redis provider: 0.5/s over a 10 s window admits 5 of 8.
    let key = RedisKey::try_from("tls-redis").unwrap();
    let rate = RateLimit::try_from(0.5).unwrap();
    let mut admitted = 0;
    for _ in 0..8 {
        if support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "the Redis provider over TLS");
    let mut suppressed = 0;
    for _ in 0..5 {
        if support::admitted(rl.redis().suppressed().inc(&key, &rate, 1)).await {
            suppressed += 1;
        }
    }
    assert_eq!(suppressed, 5, "the suppressed strategy has its own totals");

    // The hybrid: exactly the capacity (20) of 60 calls with flushes between, every
    // admission counted in Redis, so the Redis provider then sees the window full.
    let hybrid_key = RedisKey::try_from("tls-hybrid").unwrap();
    let rate = RateLimit::try_from(2.0).unwrap();
    let mut admitted = 0;
    for i in 0..60 {
        if support::admitted(rl.hybrid().absolute().inc(&hybrid_key, &rate, 1)).await {
            admitted += 1;
        }
        if i % 5 == 0 {
            rl.hybrid().flush().await.unwrap();
        }
    }
    rl.hybrid().flush().await.unwrap();
    assert_eq!(
        admitted, 20,
        "the hybrid over TLS admits exactly the capacity"
    );
    let stats = rl.hybrid().stats();
    assert_eq!(stats.flush_errors, 0, "{stats:?}");
    match rl
        .redis()
        .absolute()
        .inc(&hybrid_key, &rate, 1)
        .await
        .unwrap()
    {
        RateLimitDecision::Rejected { retry_after_ms, .. } => {
            assert!(retry_after_ms <= 10_100, "{retry_after_ms}")
        }
        other => panic!("the hybrid's admissions did not reach Redis: {other:?}"),
    }

    // A plain `redis://` client gets nowhere: the server has no plaintext port, and its
    // TLS port does not speak plaintext.
    let plain = redis::Client::open(format!(
        "redis://{USER}:{PASSWORD}@127.0.0.1:{}/",
        server.port
    ))
    .unwrap();
    let plain = plain
        .get_connection_with_timeout(Duration::from_secs(2))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(plain.is_err(), "plaintext reached the TLS port: {plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_fails_the_check_and_every_call() {
    let server = TlsRedis::start();
    let prefix = support::unique_prefix("tls_wrong_ca");
    let rl = limiter(server.client(&server.other_ca, PASSWORD), &prefix);

    let err = rl.check_redis().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("certificate") && text.contains("UnknownIssuer"),
        "the check should name the untrusted certificate: {text} / {err:?}"
    );
    let key = RedisKey::try_from("tls-wrong-ca").unwrap();
    let rate = RateLimit::try_from(0.5).unwrap();
    let call = rl.redis().absolute().inc(&key, &rate, 1).await;
    assert!(call.is_err(), "a call decided without Redis: {call:?}");

    // The right CA with a wrong password: TLS is fine, the user is refused.
    let rl = limiter(server.client(&server.ca, "wrong"), &prefix);
    let err = rl.check_redis().await.unwrap_err();
    assert!(matches!(err, Error::RedisAuthentication { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_a_client_certificate_decides_and_none_fails_clearly() {
    let server = TlsRedis::start_with(true);
    let prefix = support::unique_prefix("mtls");

    // With the certificate the test made (signed by the server's CA): decisions as usual.
    let rl = limiter(server.client(&server.ca, PASSWORD), &prefix);
    let check = rl.check_redis().await.unwrap();
    assert!(check.warnings.is_empty(), "{:?}", check.warnings);
    let key = RedisKey::try_from("mtls-redis").unwrap();
    let rate = RateLimit::try_from(0.5).unwrap();
    let mut admitted = 0;
    for _ in 0..8 {
        if support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "the Redis provider over mutual TLS");
    let hybrid_key = RedisKey::try_from("mtls-hybrid").unwrap();
    let mut admitted = 0;
    for _ in 0..10 {
        if support::admitted(rl.hybrid().absolute().inc(&hybrid_key, &rate, 1)).await {
            admitted += 1;
        }
        rl.hybrid().flush().await.unwrap();
    }
    assert_eq!(
        admitted, 5,
        "the hybrid over mutual TLS admits exactly the capacity"
    );
    assert_eq!(rl.hybrid().stats().flush_errors, 0);

    // Without one (the right CA and password otherwise): the server ends the handshake, the
    // check fails naming the TLS failure, and a call is an error, never a fail-open.
    let rl = limiter(
        server.client_presenting(&server.ca, PASSWORD, None),
        &prefix,
    );
    let err = rl.check_redis().await.unwrap_err();
    let text = err.to_string();
    eprintln!("no client certificate: {text} / {err:?}");
    assert!(
        text.to_lowercase().contains("certificate"),
        "the check should say a client certificate is missing: {text} / {err:?}"
    );
    let call = rl.redis().absolute().inc(&key, &rate, 1).await;
    assert!(call.is_err(), "a call decided without Redis: {call:?}");
}
