//! The conformance table, run against the local provider and against Redis (a server of
//! our own, or `SLUICEGATE_REDIS_URL`): the same calls must get the same decisions.
#![cfg(feature = "redis-tokio")]

mod support;

use support::conformance::{Provider, run_table};

#[tokio::test]
async fn local_provider_passes_the_table() {
    run_table(&Provider::Local).await;
}

#[tokio::test]
async fn redis_provider_passes_the_table() {
    let redis = support::TestRedis::get();
    let conn = redis.manager().await;
    run_table(&Provider::Redis(conn.into())).await;
}
