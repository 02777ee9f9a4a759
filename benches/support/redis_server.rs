//! A redis-server of the bench's own on a free loopback port (killed on drop), or the one
//! `SLUICEGATE_REDIS_URL` names. Included by path by the benches that talk to Redis.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server, and its URL.
pub struct Server(Option<Child>, pub String);

impl Server {
    pub fn get() -> Server {
        if let Ok(url) = std::env::var("SLUICEGATE_REDIS_URL") {
            return Server(None, url);
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (or set SLUICEGATE_REDIS_URL)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server(Some(child), format!("redis://127.0.0.1:{port}/"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
