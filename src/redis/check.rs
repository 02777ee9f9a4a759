//! The start-up check: [`RateLimiter::check_redis`](crate::RateLimiter::check_redis).

use std::time::{Duration, Instant};

use ::redis::FromRedisValue;

use super::Core;
use super::breaker::is_authentication_error;
use crate::Error;

/// What [`RateLimiter::check_redis`](crate::RateLimiter::check_redis) found on a server that
/// answers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisCheck {
    /// How long the `PING` took.
    pub ping: Duration,
    /// The server's `maxmemory-policy`; `None` when it could not be read (an ACL user
    /// without `CONFIG`, a managed Redis that renames the command, a cluster through
    /// redis-rs's connection). On a cluster through
    /// [`RedisConnection::cluster_nodes`](super::RedisConnection::cluster_nodes), every
    /// master's is read: the first one other than `noeviction`, else `noeviction`.
    pub maxmemory_policy: Option<String>,
    /// Everything worth a look, each also logged with `tracing::warn!`. Empty on a server
    /// set up as sluicegate wants it.
    pub warnings: Vec<String>,
}

impl RedisCheck {
    /// Whether the check found nothing to warn about.
    pub fn is_clean(&self) -> bool {
        self.warnings.is_empty()
    }
}

/// The warning for a server whose policy evicts limiter keys.
fn evicting(server: &str, policy: &str) -> String {
    format!(
        "{server}'s maxmemory-policy is `{policy}`: once Redis reaches maxmemory it evicts \
         limiter keys (every sluicegate key has a TTL, so `volatile-*` evicts them too) and an \
         evicted key starts a fresh window; set `maxmemory-policy noeviction` (writes then \
         fail at maxmemory instead, and the layer applies its ProviderErrorPolicy)"
    )
}

/// The warning for a server whose policy could not be read.
fn unreadable(server: &str, err: &str) -> String {
    format!(
        "could not read {server}'s maxmemory-policy ({err}): make sure it is `noeviction`, or \
         the server may evict limiter keys and hand out fresh windows"
    )
}

/// `PING`, then `CONFIG GET maxmemory-policy`, each under the limiter's deadline and past
/// the circuit breaker (the check must try Redis, not hear that it was down).
pub(crate) async fn check(core: &Core) -> Result<RedisCheck, Error> {
    let started = Instant::now();
    let ping: Result<String, Error> = core.conn.query_unguarded(&::redis::cmd("PING")).await;
    match ping {
        Ok(_) => {}
        Err(Error::Redis(err)) if is_authentication_error(&err) => {
            return Err(Error::RedisAuthentication {
                detail: err.to_string(),
            });
        }
        Err(err) => return Err(err),
    }
    let ping = started.elapsed();
    let mut warnings = Vec::new();
    let mut config_get = ::redis::cmd("CONFIG");
    config_get.arg("GET").arg("maxmemory-policy");
    let maxmemory_policy = if let Some(nodes) = core.conn.cluster_nodes() {
        let mut found: Option<String> = None;
        for (address, reply) in nodes
            .on_every_master(&config_get, core.conn.timeout())
            .await
        {
            let server = format!("the cluster master {address}");
            match reply.and_then(|v| Vec::<String>::from_redis_value(v).map_err(Into::into)) {
                Ok(pair) => {
                    if let Some(policy) = pair.into_iter().nth(1) {
                        if policy != "noeviction" {
                            warnings.push(evicting(&server, &policy));
                        }
                        if found.as_deref().is_none_or(|f| f == "noeviction") {
                            found = Some(policy);
                        }
                    }
                }
                Err(err) => warnings.push(unreadable(&server, &err.to_string())),
            }
        }
        found
    } else if core.conn.is_cluster() {
        None
    } else {
        match core.conn.query_unguarded::<Vec<String>>(&config_get).await {
            Ok(pair) => {
                let policy = pair.into_iter().nth(1);
                if let Some(policy) = policy.as_deref()
                    && policy != "noeviction"
                {
                    warnings.push(evicting("the server", policy));
                }
                policy
            }
            Err(err) => {
                warnings.push(unreadable("the server", &err.to_string()));
                None
            }
        }
    };
    for warning in &warnings {
        tracing::warn!("sluicegate: {warning}");
    }
    Ok(RedisCheck {
        ping,
        maxmemory_policy,
        warnings,
    })
}
