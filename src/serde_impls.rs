//! `serde::Deserialize` for the configuration types (feature `serde`): every value is
//! checked as its constructor checks it, so a config file cannot hold an invalid limit.
//!
//! - The newtypes ([`RateLimit`], [`WindowSizeSeconds`], ...) from their number.
//! - [`LimitSet`] from the notation (`"burst = 3/s; minute = 10/m"`) or a list of limits.
//! - [`Limit`] from the notation (`"burst = 3/s"`) or a table:
//!   `{ name = "burst", quota = "3/s", strategy = "suppressed", hard_limit_factor = 1.5,
//!   group_ms = 100 }` (all but `quota` optional).
//! - [`Quota`] from the notation (`"10 per minute"`) or `{ count = 10, window_seconds = 60 }`.

use serde::de::{self, Deserialize, Deserializer};

use crate::Strategy;
use crate::config::{
    HardLimitFactor, RateGroupSizeMs, RateLimit, SuppressionFactorCacheMs, WindowSizeSeconds,
};
use crate::policy::{Limit, LimitName, LimitSet, Quota};

macro_rules! via_try_from {
    ($($name:ident($ty:ty)),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = <$ty>::deserialize(d)?;
                $name::try_from(raw).map_err(de::Error::custom)
            }
        }
    )*};
}

via_try_from!(
    RateLimit(f64),
    WindowSizeSeconds(u64),
    RateGroupSizeMs(u64),
    HardLimitFactor(f64),
    SuppressionFactorCacheMs(u64),
);

impl<'de> Deserialize<'de> for LimitName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LimitName::new(String::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.to_ascii_lowercase().as_str() {
            "absolute" => Ok(Strategy::Absolute),
            "suppressed" => Ok(Strategy::Suppressed),
            _ => Err(de::Error::custom(format!(
                "unknown strategy {text:?}: use \"absolute\" or \"suppressed\""
            ))),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum QuotaForm {
    Text(String),
    Table { count: f64, window_seconds: u64 },
}

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match QuotaForm::deserialize(d)? {
            QuotaForm::Text(text) => text.parse().map_err(de::Error::custom),
            QuotaForm::Table {
                count,
                window_seconds,
            } => Quota::new(count, window_seconds).map_err(de::Error::custom),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitTable {
    name: Option<LimitName>,
    quota: Quota,
    #[serde(default)]
    strategy: Option<Strategy>,
    hard_limit_factor: Option<HardLimitFactor>,
    group_ms: Option<RateGroupSizeMs>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum LimitForm {
    Text(String),
    Table(LimitTable),
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = match LimitForm::deserialize(d)? {
            LimitForm::Text(text) => return text.parse().map_err(de::Error::custom),
            LimitForm::Table(table) => table,
        };
        let mut limit = match table.name {
            Some(name) => Limit::new(name, table.quota),
            None => Limit::unnamed(table.quota),
        };
        match (table.strategy.unwrap_or_default(), table.hard_limit_factor) {
            (Strategy::Suppressed, factor) => limit = limit.suppressed(factor.unwrap_or_default()),
            (Strategy::Absolute, Some(_)) => {
                return Err(de::Error::custom(
                    "hard_limit_factor applies to the suppressed strategy only: add \
                     strategy = \"suppressed\" or remove it",
                ));
            }
            (Strategy::Absolute, None) => {}
        }
        if let Some(group) = table.group_ms {
            limit = limit.group(group).map_err(de::Error::custom)?;
        }
        Ok(limit)
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum SetForm {
    Text(String),
    List(Vec<Limit>),
}

impl<'de> Deserialize<'de> for LimitSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match SetForm::deserialize(d)? {
            SetForm::Text(text) => text.parse().map_err(de::Error::custom),
            SetForm::List(limits) => LimitSet::new(limits).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn newtypes_are_checked() {
        assert_eq!(from::<RateLimit>("2.5").unwrap().get(), 2.5);
        let err = from::<RateLimit>("-1").unwrap_err();
        assert!(err.contains("RateLimit"), "{err}");
        assert!(from::<WindowSizeSeconds>("0").is_err());
        assert!(from::<HardLimitFactor>("0.5").is_err());
        assert_eq!(from::<SuppressionFactorCacheMs>("0").unwrap().get(), 0);
    }

    #[test]
    fn sets_from_notation_or_lists() {
        let a: LimitSet = from(r#""burst = 3/s; minute = 10/m""#).unwrap();
        let b: LimitSet = from(
            r#"[{"name": "burst", "quota": "3/s"},
                {"name": "minute", "quota": {"count": 10, "window_seconds": 60}}]"#,
        )
        .unwrap();
        assert_eq!(a, b);
        let err = from::<LimitSet>(r#""10/s; 5 per fortnight""#).unwrap_err();
        assert!(err.contains("fortnight") && err.contains('^'), "{err}");
        assert!(from::<LimitSet>("[]").unwrap_err().contains("at least one"));
    }

    #[test]
    fn limit_tables() {
        let l: Limit = from(
            r#"{"name": "feed", "quota": "50/10s", "strategy": "suppressed",
                "hard_limit_factor": 1.5, "group_ms": 100}"#,
        )
        .unwrap();
        assert_eq!(l.strategy(), Strategy::Suppressed);
        assert_eq!(l.hard_limit_factor().get(), 1.5);
        assert_eq!(l.group_ms(), 100);
        assert_eq!(l.quota().window_seconds(), 10);
        let err = from::<Limit>(r#"{"quota": "5/s", "hard_limit_factor": 2}"#).unwrap_err();
        assert!(err.contains("suppressed strategy only"), "{err}");
        assert!(from::<Limit>(r#"{"quota": "5/s", "strategy": "fancy"}"#).is_err());
        assert!(from::<Limit>(r#"{"quota": "5/d", "group_ms": 10}"#).is_err());
        assert!(from::<Limit>(r#"{"quota": "5/s", "colour": 1}"#).is_err());
    }
}
