//! The Redis connection every Redis example opens: the server at `SLUICEGATE_REDIS_URL`
//! (default `redis://127.0.0.1:6379/`), or a message that says how to start one.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// A connection manager on the examples' Redis (and its URL), built with the limiter's connection
/// settings for a 1 s deadline, after one plain connection that fails fast with the reason
/// (a connection manager retries a refused connection before it gives up).
pub async fn connect() -> Result<(ConnectionManager, String), String> {
    let url = std::env::var("SLUICEGATE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string());
    let unreachable = |why: String| {
        format!(
            "cannot reach Redis at {url}: {why}. Start one (redis-server --port 6379 --save \"\" \
             --appendonly no) or point SLUICEGATE_REDIS_URL at one."
        )
    };
    let client = redis::Client::open(url.as_str()).map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| unreachable("no answer within 2 s".to_owned()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let config = sluicegate::redis::connection_manager_config(Duration::from_secs(1));
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| unreachable("no answer within 5 s".to_owned()))?
    .map_err(|e| unreachable(e.to_string()))
    .map(|manager| (manager, url.clone()))
}
