//! The limit types: a quota, a named limit, and a set of limits decided together.

use std::fmt;

use crate::config::{HardLimitFactor, RateGroupSizeMs, RateLimit, WindowSizeSeconds};
use crate::{Error, Strategy};

/// The most live buckets one key holds for one limit: a limit's group is never finer than
/// `window / MAX_BUCKETS_PER_WINDOW`, so a day-long window costs at most this many buckets
/// (16 bytes each) per key, whatever the traffic.
pub const MAX_BUCKETS_PER_WINDOW: u64 = 1000;

/// The most limits in one [`LimitSet`]: work per decision stays bounded.
pub const MAX_LIMITS: usize = 8;

/// The longest [`LimitName`], in bytes.
const MAX_NAME_LEN: usize = 64;

/// How many buckets a limit's window is cut into when no group is given.
const DEFAULT_BUCKETS_PER_WINDOW: u64 = 100;

/// A count of requests per window: `10 per 1 s`, `1000 per 3600 s`.
///
/// The capacity is the count itself, a real number of at least 1 (`2.5 per second` is fine);
/// the rate is `count / window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    count: f64,
    window: WindowSizeSeconds,
}

impl Quota {
    /// `count` requests per `window_seconds`. The count must be finite and at least 1 (a
    /// window that admits less than one request would refuse every request forever), and at
    /// most [`MAX_CAPACITY`](crate::MAX_CAPACITY) ([`Error::CapacityAboveMax`]), as every
    /// provider's calls are.
    pub fn new(count: f64, window_seconds: u64) -> Result<Self, Error> {
        let window = WindowSizeSeconds::try_from(window_seconds)?;
        if !(count.is_finite() && count >= 1.0) {
            return Err(Error::invalid(
                "Quota",
                count,
                "the count per window must be a finite number of at least 1",
            ));
        }
        if count > crate::MAX_CAPACITY {
            return Err(above_max(count, window_seconds));
        }
        Ok(Quota { count, window })
    }

    /// `count` requests per second.
    pub fn per_second(count: f64) -> Result<Self, Error> {
        Self::new(count, 1)
    }

    /// `count` requests per minute.
    pub fn per_minute(count: f64) -> Result<Self, Error> {
        Self::new(count, 60)
    }

    /// `count` requests per hour.
    pub fn per_hour(count: f64) -> Result<Self, Error> {
        Self::new(count, 3_600)
    }

    /// `count` requests per day.
    pub fn per_day(count: f64) -> Result<Self, Error> {
        Self::new(count, 86_400)
    }

    /// The requests a window admits: the capacity.
    pub fn count(&self) -> f64 {
        self.count
    }

    /// The window, in seconds.
    pub fn window_seconds(&self) -> u64 {
        self.window.get()
    }

    /// The window as the validated newtype.
    pub fn window(&self) -> WindowSizeSeconds {
        self.window
    }

    /// The rate this quota allows on average, per second.
    pub fn rate(&self) -> RateLimit {
        // count ≥ 1 and window ≤ 2^32 - 1 s: the quotient is finite and above zero.
        RateLimit::try_from(self.count / self.window.get() as f64)
            .expect("a quota's rate is finite and positive")
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, WindowText(self.window.get()))
    }
}

/// A count per window above [`MAX_CAPACITY`](crate::MAX_CAPACITY).
fn above_max(count: f64, window_size_seconds: u64) -> Error {
    Error::CapacityAboveMax {
        rate_limit: count / window_size_seconds as f64,
        window_size_seconds,
        capacity: count,
    }
}

/// A window in the notation's shortest unit: `1s`, `10s`, `1m`, `1h`, `2d`.
struct WindowText(u64);

impl fmt::Display for WindowText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        match () {
            _ if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            _ if s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
            _ if s % 60 == 0 => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

/// A limit's name, as it appears in `RateLimit-Policy`, metrics labels and Redis keys:
/// 1 to 64 characters from `A-Z a-z 0-9 _ - . :`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitName(String);

impl LimitName {
    /// Checks a name.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(valid_char) {
            return Err(Error::invalid(
                "LimitName",
                format!("{name:?}"),
                "must be 1 to 64 characters from A-Z a-z 0-9 _ - . :",
            ));
        }
        Ok(LimitName(name))
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The default name for a window: `1s`, `10s`, `1m`, `1h`, `1d`.
    pub(crate) fn for_window(window_seconds: u64) -> Self {
        LimitName(WindowText(window_seconds).to_string())
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for LimitName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One limit: a name, a quota and a strategy, with the grouping of its window.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    name: LimitName,
    quota: Quota,
    strategy: Strategy,
    hard_limit_factor: HardLimitFactor,
    group_ms: u64,
}

impl Limit {
    /// An absolute limit: at most `quota` per window. Its window is cut into 100 groups
    /// (at least 1 ms each) unless [`group`](Self::group) says otherwise.
    pub fn new(name: LimitName, quota: Quota) -> Self {
        let window_ms = quota.window_seconds() * 1000;
        Limit {
            name,
            quota,
            strategy: Strategy::Absolute,
            hard_limit_factor: HardLimitFactor::default(),
            group_ms: (window_ms / DEFAULT_BUCKETS_PER_WINDOW).max(1),
        }
    }

    /// An absolute limit named after its window (`1s`, `1m`, `1h`, ...).
    pub fn unnamed(quota: Quota) -> Self {
        Self::new(LimitName::for_window(quota.window_seconds()), quota)
    }

    /// This limit sheds load probabilistically between its quota and `quota × hard_limit_factor`
    /// instead of refusing at the quota.
    pub fn suppressed(mut self, hard_limit_factor: HardLimitFactor) -> Self {
        self.strategy = Strategy::Suppressed;
        self.hard_limit_factor = hard_limit_factor;
        self
    }

    /// The width of this limit's buckets. It must not exceed the window, and must not cut
    /// the window into more than [`MAX_BUCKETS_PER_WINDOW`] groups.
    pub fn group(mut self, group: RateGroupSizeMs) -> Result<Self, Error> {
        let window_ms = self.quota.window_seconds() * 1000;
        if group.get() > window_ms {
            return Err(Error::invalid(
                "RateGroupSizeMs",
                group.get(),
                "must not exceed the limit's window",
            ));
        }
        if window_ms.div_ceil(group.get()) > MAX_BUCKETS_PER_WINDOW {
            return Err(Error::invalid(
                "RateGroupSizeMs",
                group.get(),
                "cuts the limit's window into more than MAX_BUCKETS_PER_WINDOW (1000) groups; \
                 use a group of at least window_ms / 1000",
            ));
        }
        self.group_ms = group.get();
        Ok(self)
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The limit's name as the validated newtype.
    pub fn limit_name(&self) -> &LimitName {
        &self.name
    }

    /// The limit's quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The limit's strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The suppressed strategy's hard factor (1 for an absolute limit).
    pub fn hard_limit_factor(&self) -> HardLimitFactor {
        self.hard_limit_factor
    }

    /// The width of the limit's buckets, in milliseconds.
    pub fn group_ms(&self) -> u64 {
        self.group_ms
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}", self.name, self.quota)?;
        if self.strategy == Strategy::Suppressed {
            write!(f, " (suppressed, hard factor {})", self.hard_limit_factor)?;
        }
        Ok(())
    }
}

/// One to [`MAX_LIMITS`] limits with distinct names, decided together: a request is
/// admitted iff every limit admits it.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSet {
    limits: Vec<Limit>,
}

impl LimitSet {
    /// Checks that the set is not empty, not over [`MAX_LIMITS`], and that its names differ.
    pub fn new(limits: impl IntoIterator<Item = Limit>) -> Result<Self, Error> {
        let limits: Vec<Limit> = limits.into_iter().collect();
        if limits.is_empty() {
            return Err(Error::invalid(
                "LimitSet",
                "[]",
                "a limit set needs at least one limit",
            ));
        }
        if limits.len() > MAX_LIMITS {
            return Err(Error::invalid(
                "LimitSet",
                format!("{} limits", limits.len()),
                "a limit set holds at most MAX_LIMITS (8) limits",
            ));
        }
        for (i, limit) in limits.iter().enumerate() {
            if limits[..i].iter().any(|l| l.name == limit.name) {
                return Err(Error::invalid(
                    "LimitSet",
                    format!("{:?} twice", limit.name()),
                    "the limits of a set need distinct names (name them: \"burst = 10/s; \
                     minute = 100/m\")",
                ));
            }
        }
        Ok(LimitSet { limits })
    }

    /// The limits, in the order given.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// How many limits the set holds (at least 1).
    pub fn len(&self) -> usize {
        self.limits.len()
    }

    /// Always false: a set holds at least one limit.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The limits, in the order given.
    pub fn iter(&self) -> std::slice::Iter<'_, Limit> {
        self.limits.iter()
    }

    /// Checks that a call gives one key per limit (`keys` of them), as `inc_each` and
    /// `inc_with` take them on every provider.
    pub(crate) fn check_keys(&self, keys: usize) -> Result<(), Error> {
        if keys == self.limits.len() {
            Ok(())
        } else {
            Err(Error::invalid(
                "keys",
                keys,
                "give one key per limit of the set, in the set's order",
            ))
        }
    }

    /// Checks one call's quota counts (see [`LocalPolicy::inc_with`](crate::policy::LocalPolicy::inc_with)):
    /// one per limit, each finite and at least 1, as [`Quota::new`] checks a count. A count
    /// below 1 is [`Error::CapacityBelowOne`], as the seeds' `try_inc` answers a rate whose
    /// window holds less than one request.
    pub(crate) fn check_counts(&self, counts: &[f64]) -> Result<(), Error> {
        if counts.len() != self.limits.len() {
            return Err(Error::invalid(
                "counts",
                counts.len(),
                "give one quota count per limit of the set, in the set's order",
            ));
        }
        for (limit, &count) in self.limits.iter().zip(counts) {
            if !count.is_finite() {
                return Err(Error::invalid(
                    "quota count",
                    count,
                    "a limit's quota count per window must be a finite number of at least 1",
                ));
            }
            if count < 1.0 {
                let window_size_seconds = limit.quota().window_seconds();
                return Err(Error::CapacityBelowOne {
                    rate_limit: count / window_size_seconds as f64,
                    window_size_seconds,
                    capacity: count,
                });
            }
            if count > crate::MAX_CAPACITY {
                return Err(above_max(count, limit.quota().window_seconds()));
            }
        }
        Ok(())
    }
}

impl From<Limit> for LimitSet {
    fn from(limit: Limit) -> Self {
        LimitSet {
            limits: vec![limit],
        }
    }
}

impl<'a> IntoIterator for &'a LimitSet {
    type Item = &'a Limit;
    type IntoIter = std::slice::Iter<'a, Limit>;
    fn into_iter(self) -> Self::IntoIter {
        self.limits.iter()
    }
}

impl fmt::Display for LimitSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, limit) in self.limits.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} = {}", limit.name, limit.quota)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_checks_count_and_window() {
        for bad in [0.0, 0.99, -1.0, f64::NAN, f64::INFINITY] {
            let err = Quota::new(bad, 10).unwrap_err().to_string();
            assert!(err.contains("Quota") && err.contains("at least 1"), "{err}");
        }
        assert!(
            Quota::new(5.0, 0)
                .unwrap_err()
                .to_string()
                .contains("WindowSizeSeconds")
        );
        assert!(matches!(
            Quota::new(crate::MAX_CAPACITY * 2.0, 10),
            Err(Error::CapacityAboveMax { .. })
        ));
        assert!(Quota::new(crate::MAX_CAPACITY, 10).is_ok());
        let q = Quota::new(2.5, 10).unwrap();
        assert_eq!((q.count(), q.window_seconds()), (2.5, 10));
        assert_eq!(q.rate().get(), 0.25);
        assert_eq!(Quota::per_hour(1000.0).unwrap().window_seconds(), 3600);
        assert_eq!(Quota::per_day(1.0).unwrap().window_seconds(), 86_400);
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a b", "naïve", "x\"y", &"n".repeat(65)] {
            assert!(LimitName::new(bad).is_err(), "{bad:?}");
        }
        for good in ["burst", "per-ip", "api.v1:minute", &"n".repeat(64)] {
            assert_eq!(LimitName::new(good).unwrap().as_str(), good);
        }
        assert_eq!(LimitName::for_window(1).as_str(), "1s");
        assert_eq!(LimitName::for_window(90).as_str(), "90s");
        assert_eq!(LimitName::for_window(120).as_str(), "2m");
        assert_eq!(LimitName::for_window(7_200).as_str(), "2h");
        assert_eq!(LimitName::for_window(86_400).as_str(), "1d");
    }

    #[test]
    fn groups_default_to_a_hundredth_and_are_bounded() {
        let day = Limit::unnamed(Quota::per_day(10_000.0).unwrap());
        assert_eq!(day.group_ms(), 864_000);
        assert_eq!(
            Limit::unnamed(Quota::per_second(5.0).unwrap()).group_ms(),
            10
        );
        let err = day
            .clone()
            .group(RateGroupSizeMs::try_from(100).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("(1000) groups"), "{err}");
        // The finest allowed group: exactly 1000 buckets.
        assert_eq!(
            day.clone()
                .group(RateGroupSizeMs::try_from(86_400).unwrap())
                .unwrap()
                .group_ms(),
            86_400
        );
        assert!(
            day.clone()
                .group(RateGroupSizeMs::try_from(86_399).unwrap())
                .is_err()
        );
        let second = Limit::unnamed(Quota::per_second(5.0).unwrap());
        assert!(
            second
                .group(RateGroupSizeMs::try_from(1_001).unwrap())
                .is_err()
        );
    }

    #[test]
    fn sets_need_one_to_eight_distinct_names() {
        let l = |name: &str, n: f64| {
            Limit::new(LimitName::new(name).unwrap(), Quota::per_second(n).unwrap())
        };
        assert!(
            LimitSet::new([])
                .unwrap_err()
                .to_string()
                .contains("at least one")
        );
        let err = LimitSet::new([l("a", 1.0), l("a", 2.0)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"a\" twice"), "{err}");
        let nine: Vec<_> = (0..9).map(|i| l(&format!("l{i}"), 1.0)).collect();
        assert!(LimitSet::new(nine.clone()).is_err());
        assert_eq!(LimitSet::new(nine[..8].to_vec()).unwrap().len(), 8);
        let set = LimitSet::new([l("burst", 3.0), l("x", 10.0)]).unwrap();
        assert_eq!(set.to_string(), "burst = 3/1s; x = 10/1s");
    }
}
