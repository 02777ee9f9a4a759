//! Validated Redis keys and the names of the Redis keys a limiter key uses.

use crate::Error;

/// The separator between the parts of a Redis key name: `prefix:{key}:strategy:part`.
pub(crate) const SEPARATOR: char = ':';

/// The longest key, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 255;

/// The prefix used when [`RedisRateLimiterOptions::prefix`](super::RedisRateLimiterOptions)
/// is `None`.
pub(crate) const DEFAULT_PREFIX: &str = "sluicegate";

/// A key (or prefix) checked for use in Redis key names: not empty, at most 255 bytes, and
/// free of `:` (the separator) and of `{` / `}` (which would break the hash tag that keeps
/// all of one key's Redis keys on one Redis Cluster slot).
///
/// ```
/// use sluicegate::redis::RedisKey;
/// # fn main() -> Result<(), sluicegate::Error> {
/// let key = RedisKey::try_from("user_123".to_string())?;
/// assert_eq!(key.as_str(), "user_123");
/// assert!(RedisKey::try_from("user:123").is_err());
/// assert!(RedisKey::try_from("").is_err());
/// assert!(RedisKey::try_from("a".repeat(256)).is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RedisKey(String);

impl RedisKey {
    /// The key as given.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn check(value: &str) -> Result<(), Error> {
        let reason = if value.is_empty() {
            "must not be empty"
        } else if value.len() > MAX_KEY_BYTES {
            "must be at most 255 bytes"
        } else if value.contains(SEPARATOR) {
            "must not contain ':', the separator of sluicegate's Redis key names"
        } else if value.contains(['{', '}']) {
            "must not contain '{' or '}': they would break the hash tag that keeps one key's \
             Redis keys on one Redis Cluster slot"
        } else {
            return Ok(());
        };
        Err(Error::InvalidKey {
            key: value.chars().take(64).collect(),
            reason,
        })
    }
}

impl TryFrom<String> for RedisKey {
    type Error = Error;

    fn try_from(value: String) -> Result<Self, Error> {
        Self::check(&value)?;
        Ok(RedisKey(value))
    }
}

impl TryFrom<&str> for RedisKey {
    type Error = Error;

    fn try_from(value: &str) -> Result<Self, Error> {
        Self::check(value)?;
        Ok(RedisKey(value.to_owned()))
    }
}

impl std::str::FromStr for RedisKey {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        Self::try_from(value)
    }
}

impl AsRef<str> for RedisKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RedisKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which strategy's state a Redis key holds (its tag in the key names): the strategies
/// never share state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrategyTag {
    Absolute,
    Suppressed,
}

impl StrategyTag {
    /// The tag in the key names, also the hybrid flush script's mode.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            StrategyTag::Absolute => "a",
            StrategyTag::Suppressed => "s",
        }
    }
}

/// The last part of the name of each Redis key a limiter key uses.
const BUCKETS: char = 'b';
const HASH: char = 'h';
const LEASES: char = 'l';

/// Names the Redis keys of limiter keys under one prefix.
///
/// A limiter key `k` under strategy `s` uses two Redis keys, both with the hash tag `{k}`:
/// `prefix:{k}:s:b`, the list of its closed buckets (id and counts) oldest first, and
/// `prefix:{k}:s:h`, a small hash of the open bucket's id and counts, the running totals,
/// the oldest bucket id and the key's latest rate (see `lua/head.lua` and `lua/window.lua`).
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    prefix: String,
}

/// The Redis keys of one limiter key under one strategy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyNames {
    /// The list of live bucket ids, oldest first.
    pub(crate) buckets: String,
    /// The hash of counts, totals and settings.
    pub(crate) hash: String,
}

impl KeySpace {
    pub(crate) fn new(prefix: Option<&RedisKey>) -> Self {
        KeySpace {
            prefix: prefix.map_or(DEFAULT_PREFIX, RedisKey::as_str).to_owned(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn names(&self, key: &RedisKey, strategy: StrategyTag) -> KeyNames {
        let stem = self.stem(key, strategy);
        let mut buckets = String::with_capacity(stem.len() + 1);
        buckets.push_str(&stem);
        buckets.push(BUCKETS);
        let mut hash = stem;
        hash.push(HASH);
        KeyNames { buckets, hash }
    }

    /// The key's lease hash under `strategy` (the hybrid provider's), beside its state.
    pub(crate) fn lease(&self, key: &RedisKey, strategy: StrategyTag) -> String {
        let mut lease = self.stem(key, strategy);
        lease.push(LEASES);
        lease
    }

    /// The Redis keys of `key` under one limit of a set: `prefix:{key}:p:name:b` and `:h`.
    /// Every limit of `key` shares the hash tag `{key}`, so a set on one key is one slot.
    pub(crate) fn limit_names(&self, key: &RedisKey, limit: &str) -> KeyNames {
        let stem = format!("{}:{{{}}}:p:{}:", self.prefix, key.as_str(), limit);
        KeyNames {
            buckets: format!("{stem}{BUCKETS}"),
            hash: format!("{stem}{HASH}"),
        }
    }

    /// The lease hash of `key` under one limit of a set (the hybrid provider's):
    /// `prefix:{key}:p:name:l`, beside the limit's state.
    pub(crate) fn limit_lease(&self, key: &RedisKey, limit: &str) -> String {
        format!("{}:{{{}}}:p:{}:{LEASES}", self.prefix, key.as_str(), limit)
    }

    /// `prefix:{key}:tag:`, what every Redis key of `key` starts with.
    fn stem(&self, key: &RedisKey, strategy: StrategyTag) -> String {
        format!("{}:{{{}}}:{}:", self.prefix, key.as_str(), strategy.tag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(value: &str) -> &'static str {
        match RedisKey::try_from(value).unwrap_err() {
            Error::InvalidKey { reason, .. } => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_empty_long_separator_and_braces() {
        assert!(reason("").contains("empty"));
        assert!(reason(&"x".repeat(256)).contains("255"));
        assert!(reason("user:1").contains("':'"));
        assert!(reason("}x").contains("hash tag"));
        assert!(reason("a{b").contains("hash tag"));
        assert!(RedisKey::try_from("x".repeat(255)).is_ok());
        assert!(RedisKey::try_from("user_1.é").is_ok());
        let long = "é".repeat(200); // 400 bytes
        match RedisKey::try_from(long).unwrap_err() {
            Error::InvalidKey { key, .. } => assert_eq!(key.chars().count(), 64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_share_a_hash_tag_and_the_prefix() {
        let space = KeySpace::new(Some(&RedisKey::try_from("app1").unwrap()));
        let names = space.names(&RedisKey::try_from("u7").unwrap(), StrategyTag::Suppressed);
        assert_eq!(names.buckets, "app1:{u7}:s:b");
        assert_eq!(names.hash, "app1:{u7}:s:h");
        assert_eq!(
            space.lease(&RedisKey::try_from("u7").unwrap(), StrategyTag::Suppressed),
            "app1:{u7}:s:l"
        );
        let plain =
            KeySpace::new(None).names(&RedisKey::try_from("u7").unwrap(), StrategyTag::Absolute);
        assert_eq!(plain.hash, "sluicegate:{u7}:a:h");
        let u7 = RedisKey::try_from("u7").unwrap();
        assert_eq!(space.limit_names(&u7, "burst").hash, "app1:{u7}:p:burst:h");
        assert_eq!(space.limit_lease(&u7, "burst"), "app1:{u7}:p:burst:l");
    }
}
