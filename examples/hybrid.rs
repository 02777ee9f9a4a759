//! The seed's hybrid quickstart, with `sluicegate` for `trypema` and the server address
//! from `SLUICEGATE_REDIS_URL` (default `redis://127.0.0.1:6379/`).
//!
//! ```sh
//! redis-server --port 6379 --save "" --appendonly no &
//! cargo run --example hybrid --features redis-tokio
//! ```

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisKey, RedisRateLimiterOptions};
use sluicegate::{
    HardLimitFactor, RateGroupSizeMs, RateLimit, RateLimitDecision, RateLimiter,
    RateLimiterOptions, SuppressionFactorCacheMs, WindowSizeSeconds,
};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), sluicegate::TrypemaError> {
    let url = std::env::var("SLUICEGATE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string());
    let client = redis::Client::open(url.as_str()).unwrap();
    let connection_manager = client.get_connection_manager().await.unwrap();
    let window_size_seconds = WindowSizeSeconds::try_from(60).unwrap();
    let rate_group_size_ms = RateGroupSizeMs::try_from(10).unwrap();
    let hard_limit_factor = HardLimitFactor::try_from(1.5).unwrap();
    let suppression_factor_cache_ms = SuppressionFactorCacheMs::default();
    let sync_interval_ms = SyncIntervalMs::try_from(10).unwrap(); // flush every 10ms
    let rl = Arc::new(RateLimiter::new(RateLimiterOptions {
        local: LocalRateLimiterOptions {
            window_size_seconds,
            rate_group_size_ms,
            hard_limit_factor,
            suppression_factor_cache_ms,
        },
        redis: RedisRateLimiterOptions {
            connection_manager,
            prefix: None,
            window_size_seconds,
            rate_group_size_ms,
            hard_limit_factor,
            suppression_factor_cache_ms,
            sync_interval_ms,
        },
    }));
    rl.run_cleanup_loop();
    let key = RedisKey::try_from("user_123".to_string())?;
    let rate = RateLimit::try_from(10.0)?;
    // Absolute strategy — same API as Redis, but served from local state.
    match rl.hybrid().absolute().inc(&key, &rate, 1).await? {
        RateLimitDecision::Allowed => println!("Allowed"),
        RateLimitDecision::Rejected { retry_after_ms, .. } => {
            println!("Rejected. Retry in ~{}ms.", retry_after_ms);
        }
        RateLimitDecision::Suppressed { .. } => unreachable!(),
    }
    // Suppressed strategy — probabilistic admission from local state.
    match rl.hybrid().suppressed().inc(&key, &rate, 1).await? {
        RateLimitDecision::Allowed => println!("Allowed (below capacity)"),
        RateLimitDecision::Suppressed {
            is_allowed,
            suppression_factor,
        } => {
            if is_allowed {
                println!(
                    "Allowed (suppression at {:.0}%)",
                    suppression_factor * 100.0
                );
            } else {
                println!("Denied (suppression at {:.0}%)", suppression_factor * 100.0);
            }
        }
        RateLimitDecision::Rejected { .. } => unreachable!(),
    }
    // Query suppression factor for observability.
    let factor = rl
        .hybrid()
        .suppressed()
        .get_suppression_factor(&key)
        .await?;
    println!("Current suppression factor: {:.3}", factor);
    Ok(())
}
