//! The Redis provider on a 3-master Redis Cluster started by the test: the conformance
//! table runs through `redis::cluster_async` and through the limiter's own routing
//! (`RedisConnection::cluster_nodes`), keys spread over the masters, and a slot resharded
//! under the limiter is followed through `ASK` and `MOVED` with its counts kept.
#![cfg(feature = "redis-tokio")]

mod support;

use redis::AsyncCommands;
use redis::cluster_routing::{Route, SlotAddr};
use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisConnection, RedisKey};
use sluicegate::{RateLimit, RateLimiter, RateLimiterBuilder};
use support::conformance::{Provider, run_table};

/// A limiter on `conn`: a window of `window_s` seconds in 100 ms groups, hard limit factor
/// `hard`, keys under `prefix`.
fn limiter(conn: RedisConnection, window_s: u64, hard: f64, prefix: &RedisKey) -> RateLimiter {
    let local = LocalRateLimiterOptions {
        window_size_seconds: window_s.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: hard.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    RateLimiterBuilder::new(local)
        .redis_connection(
            conn,
            support::redis_settings(&local, prefix, SyncIntervalMs::default()),
        )
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_and_ttls_through_a_three_master_cluster() {
    let cluster = support::RedisCluster::start();
    let conn = cluster.connection().await;
    run_table(&Provider::Redis(conn.clone().into())).await;
    let routed = RedisConnection::cluster_nodes(cluster.urls())
        .await
        .unwrap();
    run_table(&Provider::Redis(routed)).await;

    // Many keys: each decision is one script on one node (one hash tag), and the keys
    // land on every master.
    let prefix = support::unique_prefix("cluster");
    let rl = limiter(conn.into(), 10, 1.5, &prefix);
    let rate = RateLimit::try_from(0.5).unwrap(); // 5 a window
    for k in 0..30 {
        let key = RedisKey::try_from(format!("user{k}")).unwrap();
        for _ in 0..5 {
            assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
            assert!(support::admitted(rl.redis().suppressed().inc(&key, &rate, 1)).await);
        }
        assert!(!support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    }
    let mut masters_with_keys = 0;
    for url in cluster.urls() {
        let mut node = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = node.keys(format!("{prefix}:*")).await.unwrap();
        for name in &keys {
            let ttl: i64 = node.pttl(name).await.unwrap();
            assert!(ttl > 0 && ttl <= 10_100, "{name}: TTL {ttl}");
        }
        masters_with_keys += usize::from(!keys.is_empty());
    }
    assert_eq!(
        masters_with_keys, 3,
        "30 hash tags spread over all three masters"
    );
}

/// The node ID and the sync connection of every master, and which of them serves `slot`.
struct Masters {
    nodes: Vec<(String, u16, redis::Connection)>,
}

impl Masters {
    fn of(cluster: &support::RedisCluster) -> Self {
        let nodes = cluster
            .urls()
            .into_iter()
            .map(|url| {
                let mut conn = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut conn).unwrap();
                let port = url
                    .trim_end_matches('/')
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                (id, port, conn)
            })
            .collect();
        Masters { nodes }
    }

    /// The index of the master that serves the key `{tag}` (the others answer `MOVED`).
    fn owner_of(&mut self, tag: &str) -> usize {
        let owners: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                redis::cmd("EXISTS")
                    .arg(format!("{{{tag}}}"))
                    .query::<i64>(&mut self.nodes[i].2)
                    .is_ok()
            })
            .collect();
        assert_eq!(owners.len(), 1, "one master serves {{{tag}}}");
        owners[0]
    }

    fn run(&mut self, i: usize, args: &[&str]) -> redis::Value {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.nodes[i].2)
            .unwrap_or_else(|e| panic!("{args:?} on master {i}: {e}"))
    }
}

/// A key whose slot is `slot`, other than `not`.
fn another_key_in(slot: u16, not: &str) -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| {
            k != not && Route::with_key(k, SlotAddr::Master) == Route::new(slot, SlotAddr::Master)
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharded_slot_is_followed_through_ask_and_moved_and_keeps_its_counts() {
    let cluster = support::RedisCluster::start();
    let conn = RedisConnection::cluster_nodes(cluster.urls())
        .await
        .unwrap();
    let RedisConnection::ClusterNodes(nodes) = &conn else {
        panic!("cluster_nodes gives a ClusterNodes connection");
    };
    let nodes = nodes.clone();
    let prefix = support::unique_prefix("reshard");
    let rl = limiter(conn, 60, 1.0, &prefix);
    let rate = RateLimit::try_from(10.0 / 60.0).unwrap(); // 10 a window
    let inc = |key: &str| {
        let key = RedisKey::try_from(key).unwrap();
        let rl = &rl;
        async move { rl.redis().absolute().inc(&key, &rate, 1).await.unwrap() }
    };
    // Every master has served a call, so each holds the script (an ASK target that answers
    // NOSCRIPT would have it loaded on the slot's old master instead).
    for k in 0..30 {
        inc(&format!("warm{k}")).await;
    }

    let moving = "moving";
    let slot = redis::cluster_routing::Route::with_key(moving, SlotAddr::Master);
    let slot = (0..16384u16)
        .find(|&s| Route::new(s, SlotAddr::Master) == slot)
        .unwrap();
    let mut masters = Masters::of(&cluster);
    let from = masters.owner_of(moving);
    let to = (from + 1) % 3;
    let (from_id, to_id) = (masters.nodes[from].0.clone(), masters.nodes[to].0.clone());
    let to_port = masters.nodes[to].1;
    let before = nodes.master_of(slot).unwrap();
    // Learned once at the start; every master named, each by its address.
    assert_eq!(nodes.refreshes(), 1);
    let shown = format!("{nodes:?}");
    for (_, port, _) in &masters.nodes {
        assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    }
    assert!(shown.contains("refreshes: 1"), "{shown}");
    assert_eq!(redis::aio::ConnectionLike::get_db(&nodes), 0);
    assert!(
        before.ends_with(&format!(":{}", masters.nodes[from].1)),
        "{before}"
    );

    for _ in 0..4 {
        assert!(inc(moving).await.is_allowed());
    }

    // The migration starts: keys of the slot not on the old master are asked of the new one.
    let asked = another_key_in(slot, moving);
    let slot_arg = slot.to_string();
    masters.run(
        to,
        &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
    );
    masters.run(
        from,
        &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
    );
    // A one-key command on a key the old master does not hold is asked of the new one.
    let mut routed = nodes.clone();
    let asked_data = format!("{{{asked}}}:data");
    let _: () = redis::cmd("SET")
        .arg(&asked_data)
        .arg("here")
        .query_async(&mut routed)
        .await
        .unwrap();
    let read: String = redis::cmd("GET")
        .arg(&asked_data)
        .query_async(&mut routed)
        .await
        .unwrap();
    assert_eq!(read, "here", "ASK followed for the read too");
    // The limiter's script names several keys: on a migrating slot Redis answers TRYAGAIN
    // unless they are all on one side (retried for 150 ms, then the error).
    let started = std::time::Instant::now();
    let tried = rl
        .redis()
        .absolute()
        .inc(&RedisKey::try_from(asked.as_str()).unwrap(), &rate, 1)
        .await;
    assert!(
        matches!(&tried, Err(sluicegate::Error::Redis(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)),
        "{tried:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    assert_eq!(
        nodes.master_of(slot).unwrap(),
        before,
        "ASK is for one call: the map is unchanged"
    );
    let on_new: i64 = match masters.run(to, &["CLUSTER", "COUNTKEYSINSLOT", &slot_arg]) {
        redis::Value::Int(n) => n,
        other => panic!("{other:?}"),
    };
    assert!(on_new > 0, "the asked key's data is on the new master");

    // The old master's keys move, and the slot is the new master's.
    let keys: Vec<String> = match masters.run(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"])
    {
        redis::Value::Array(keys) => keys
            .into_iter()
            .map(|k| redis::from_redis_value(k).unwrap())
            .collect(),
        other => panic!("{other:?}"),
    };
    assert!(!keys.is_empty());
    let port = to_port.to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().map(String::as_str));
    masters.run(from, &migrate);
    for i in 0..3 {
        masters.run(i, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
    }

    // The limiter's map still names the old master: its first call is MOVED, and follows.
    for _ in 0..6 {
        assert!(
            inc(moving).await.is_allowed(),
            "the moved key keeps its 4 of 10"
        );
    }
    assert!(!inc(moving).await.is_allowed(), "the 11th in the window");
    let read: String = redis::cmd("GET")
        .arg(&asked_data)
        .query_async(&mut routed)
        .await
        .unwrap();
    assert_eq!(read, "here", "the asked key's data moved with the slot");
    // The MOVED asked for a new map in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while nodes.master_of(slot).unwrap() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the map never learned the move"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        nodes
            .master_of(slot)
            .unwrap()
            .ends_with(&format!(":{to_port}"))
    );
    assert!(nodes.refreshes() >= 2, "the MOVED's refresh is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_check_reads_every_masters_maxmemory_policy() {
    let cluster = support::RedisCluster::start();
    let prefix = support::unique_prefix("clustercheck");
    let limiter = || async {
        limiter(
            RedisConnection::cluster_nodes(cluster.urls())
                .await
                .unwrap(),
            10,
            1.0,
            &prefix,
        )
    };
    let check = limiter().await.check_redis().await.unwrap();
    assert_eq!(check.maxmemory_policy.as_deref(), Some("noeviction"));
    assert!(check.is_clean(), "{:?}", check.warnings);

    let mut masters = Masters::of(&cluster);
    let evicting_port = masters.nodes[1].1;
    masters.run(1, &["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
    let check = limiter().await.check_redis().await.unwrap();
    assert_eq!(check.maxmemory_policy.as_deref(), Some("volatile-lru"));
    assert_eq!(check.warnings.len(), 1, "{:?}", check.warnings);
    let warning = &check.warnings[0];
    assert!(
        warning.contains(&format!(":{evicting_port}")) && warning.contains("volatile-lru"),
        "the warning names the master: {warning}"
    );
}

#[tokio::test]
async fn cluster_nodes_refuses_no_node_a_unix_socket_and_a_cluster_that_does_not_answer() {
    let none: [&str; 0] = [];
    let err = RedisConnection::cluster_nodes(none).await.unwrap_err();
    assert!(err.to_string().contains("at least one node"), "{err}");
    let err = RedisConnection::cluster_nodes(["unix:///tmp/no-such.sock"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("over TCP"), "{err}");
    // A port nobody listens on (bound, then let go): refused at once, well within a second.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let err = RedisConnection::cluster_nodes([format!("redis://127.0.0.1:{port}/")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CLUSTER SLOTS"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_a_password_is_reached_with_the_first_nodes_credentials() {
    let cluster = support::RedisCluster::start();
    let mut masters = Masters::of(&cluster);
    for i in 0..3 {
        masters.run(i, &["CONFIG", "SET", "requirepass", "s3cret"]);
    }
    // Without the password: an authentication error when the connection is made.
    let err = RedisConnection::cluster_nodes(cluster.urls())
        .await
        .unwrap_err();
    assert!(
        matches!(err, sluicegate::Error::RedisAuthentication { .. }),
        "{err:?}"
    );
    // With it on the first URL only: every master is reached with it.
    let mut urls: Vec<String> = cluster.urls();
    urls.truncate(1);
    urls[0] = urls[0].replace("redis://", "redis://:s3cret@");
    let prefix = support::unique_prefix("clusterauth");
    let rl = limiter(
        RedisConnection::cluster_nodes(urls).await.unwrap(),
        10,
        1.0,
        &prefix,
    );
    assert!(rl.check_redis().await.unwrap().is_clean());
    let rate = RateLimit::try_from(0.2).unwrap(); // 2 a window
    let mut owners = std::collections::HashSet::new();
    for k in 0..12 {
        let name = format!("auth{k}");
        owners.insert(masters.owner_of(&name));
        let key = RedisKey::try_from(name).unwrap();
        for _ in 0..2 {
            assert!(support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
        }
        assert!(!support::admitted(rl.redis().absolute().inc(&key, &rate, 1)).await);
    }
    assert_eq!(owners.len(), 3, "the keys were on every master");
}
