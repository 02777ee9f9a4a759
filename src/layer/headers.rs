//! The response fields the layer writes, spelled in one place.
//!
//! - `Retry-After`: whole seconds, rounded up, never 0 ([RFC 9110 §10.2.3]), and never
//!   longer than the policy's window.
//! - `RateLimit-Policy: "name";q=<quota>;w=<window s>` and
//!   `RateLimit: "name";r=<remaining>;t=<seconds>`, in the syntax of
//!   [draft-ietf-httpapi-ratelimit-headers-10]: structured-field lists whose items are the
//!   policy name as a string, with integer parameters. `t` is never above `w`.
//! - [`SUPPRESSION_FACTOR`]: the suppressed strategy's factor, three decimals.
//!
//! Values that depend only on the configuration (the policy, `Retry-After: n` and
//! `RateLimit: ..;r=0;t=n` for every `n` up to the window, the factor in steps of 0.001)
//! are built once when the layer is built, so the reject path clones a reference-counted
//! value instead of formatting.
//!
//! [RFC 9110 §10.2.3]: https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3
//! [draft-ietf-httpapi-ratelimit-headers-10]: https://www.ietf.org/archive/id/draft-ietf-httpapi-ratelimit-headers-10.txt

use http::{HeaderName, HeaderValue};

use super::response::ViolatedPolicies;
use crate::Error;

/// `RateLimit-Policy`: the quota and window of the policy that applies to the request.
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what is left of the quota (`r`) and when it is back (`t`, seconds).
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The suppressed strategy's factor in `[0, 1]` (`0.250` = a quarter of the key's
/// requests are being shed); on every 503 it causes and, if configured, on admitted
/// responses while the key is suppressed.
pub const SUPPRESSION_FACTOR: HeaderName = HeaderName::from_static("x-suppression-factor");

/// How many `Retry-After` / `RateLimit` values are pre-built at most.
const PREBUILT_SECONDS: u64 = 3600;

/// `Retry-After` (and `RateLimit`'s `t`) seconds for a wait in milliseconds: rounded up,
/// at least 1, and at most the window. A wait can reach the window plus one group (a
/// bucket counts while any part of it is inside the window); a client told the window
/// may meet one more refusal, with a short wait, but is never told to wait longer than the
/// policy it is shown.
#[inline]
pub(crate) fn retry_after_seconds(wait_ms: u64, window_s: u64) -> u64 {
    wait_ms.div_ceil(1000).min(window_s).max(1)
}

/// `Retry-After` on a shed (`503`) at suppression factor `factor`:
/// - below 1, one second: the factor is re-estimated over the last second of traffic, so
///   a retry a second later meets a new draw;
/// - at 1, the key's observed usage is at or over its hard limit, and every request,
///   shed or not, keeps counting for a whole window. The core reports no time at which
///   the usage falls below the hard limit, so the layer advertises the time until all of
///   the usage seen so far has expired, capped at the window: the window. After it, only
///   what the key's newest group (the last `rate_group_size_ms`) saw can still count.
#[inline]
pub(crate) fn shed_retry_after_seconds(factor: f64, window_s: u64) -> u64 {
    if factor >= 1.0 { window_s.max(1) } else { 1 }
}

/// Checks a policy name: 1 to 64 characters from `A-Z a-z 0-9 _ - .`, so it needs no
/// escaping inside a structured-field string.
pub(crate) fn validate_policy_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "RateLimitLayer policy name",
            name,
            "must be 1 to 64 characters from A-Z, a-z, 0-9, '_', '-', '.'",
        ))
    }
}

/// `"name";q=quota;w=window`.
pub(crate) fn policy_value(name: &str, quota: u64, window_s: u64) -> HeaderValue {
    value(format!("\"{name}\";q={quota};w={window_s}"))
}

/// `"name";r=remaining;t=seconds`.
pub(crate) fn ratelimit_value(name: &str, remaining: u64, reset_s: u64) -> HeaderValue {
    value(format!("\"{name}\";r={remaining};t={reset_s}"))
}

/// The factor with three decimals, `0.000` to `1.000`.
pub(crate) fn factor_value(factor: f64) -> HeaderValue {
    value(format!("{:.3}", factor.clamp(0.0, 1.0)))
}

fn value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("digits, quotes and a validated name are valid header text")
}

/// The quota advertised for a rate over a window: the capacity rounded down.
pub(crate) fn quota(rate: f64, window_s: u64) -> u64 {
    // Relative slack against f64 rounding, the same as the core's capacity check.
    let cap = rate * window_s as f64;
    (cap * (1.0 + 1e-9)).floor() as u64
}

/// The quota advertised for a count per window: the count rounded down, with the same
/// slack against f64 rounding.
pub(crate) fn quota_of_count(count: f64) -> u64 {
    (count * (1.0 + 1e-9)).floor() as u64
}

/// Header values built once per layer.
#[derive(Debug)]
pub(crate) struct Prebuilt {
    pub(crate) name: Box<str>,
    pub(crate) window_s: u64,
    /// `RateLimit-Policy` for the fixed rate, if the rate is fixed.
    pub(crate) policy: Option<HeaderValue>,
    /// `Retry-After: n` at index `n` (index 0 unused).
    retry_after: Vec<HeaderValue>,
    /// `RateLimit: "name";r=0;t=n` at index `n`.
    limited: Vec<HeaderValue>,
    /// The factor at index `round(factor × 1000)`, if the strategy is suppressed.
    factors: Vec<HeaderValue>,
}

impl Prebuilt {
    pub(crate) fn new(name: &str, window_s: u64, fixed_rate: Option<f64>, factors: bool) -> Self {
        // Waits are capped at the window; a window over an hour formats on demand.
        let top = window_s.min(PREBUILT_SECONDS);
        Prebuilt {
            name: name.into(),
            window_s,
            policy: fixed_rate.map(|r| policy_value(name, quota(r, window_s), window_s)),
            retry_after: (0..=top).map(HeaderValue::from).collect(),
            limited: (0..=top).map(|t| ratelimit_value(name, 0, t)).collect(),
            factors: if factors {
                (0..=1000)
                    .map(|i| factor_value(i as f64 / 1000.0))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The one policy, as the policy a rejection violated.
    pub(crate) fn violated(&self) -> ViolatedPolicies<'_> {
        ViolatedPolicies::new(std::slice::from_ref(&self.name), 1)
    }

    /// `Retry-After` for `seconds`.
    pub(crate) fn retry_after(&self, seconds: u64) -> HeaderValue {
        match self.retry_after.get(seconds as usize) {
            Some(v) => v.clone(),
            None => HeaderValue::from(seconds),
        }
    }

    /// `RateLimit` on a limited response: nothing left for `seconds`.
    pub(crate) fn limited(&self, seconds: u64) -> HeaderValue {
        match self.limited.get(seconds as usize) {
            Some(v) => v.clone(),
            None => ratelimit_value(&self.name, 0, seconds),
        }
    }

    /// `RateLimit-Policy` for `rate`: the pre-built value when the rate is the fixed one.
    pub(crate) fn policy_for(&self, rate: f64, fixed: bool) -> HeaderValue {
        match (&self.policy, fixed) {
            (Some(v), true) => v.clone(),
            _ => policy_value(&self.name, quota(rate, self.window_s), self.window_s),
        }
    }

    /// The suppression factor header.
    pub(crate) fn factor(&self, factor: f64) -> HeaderValue {
        let i = (factor.clamp(0.0, 1.0) * 1000.0).round() as usize;
        match self.factors.get(i) {
            Some(v) => v.clone(),
            None => factor_value(factor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_seconds(0, 60), 1);
        assert_eq!(retry_after_seconds(1, 60), 1);
        assert_eq!(retry_after_seconds(1000, 60), 1);
        assert_eq!(retry_after_seconds(1001, 60), 2);
        assert_eq!(retry_after_seconds(59_999, 60), 60);
    }

    #[test]
    fn no_wait_is_longer_than_the_window() {
        // A bucket that began at 0 with 100 ms groups and a 10 s window expires at 10.1 s.
        assert_eq!(retry_after_seconds(10_100, 10), 10);
        assert_eq!(retry_after_seconds(10_000, 10), 10);
        assert_eq!(retry_after_seconds(9_001, 10), 10);
        assert_eq!(retry_after_seconds(u64::MAX, 10), 10);
        assert_eq!(retry_after_seconds(u64::MAX, 1), 1);
    }

    #[test]
    fn a_shed_waits_a_second_below_the_hard_limit_and_the_window_over_it() {
        assert_eq!(shed_retry_after_seconds(0.0, 10), 1);
        assert_eq!(shed_retry_after_seconds(0.999, 10), 1);
        assert_eq!(shed_retry_after_seconds(1.0, 10), 10);
        assert_eq!(shed_retry_after_seconds(1.0, 86_400), 86_400);
    }

    #[test]
    fn ietf_fields_use_the_draft_syntax() {
        assert_eq!(policy_value("default", 100, 60), "\"default\";q=100;w=60");
        assert_eq!(ratelimit_value("default", 7, 3), "\"default\";r=7;t=3");
        let p = Prebuilt::new("api", 10, Some(0.75), true);
        assert_eq!(p.policy.as_ref().unwrap(), "\"api\";q=7;w=10");
        assert_eq!(p.limited(4), "\"api\";r=0;t=4");
        assert_eq!(p.limited(5000), "\"api\";r=0;t=5000");
        assert_eq!(p.retry_after(11), "11");
        assert_eq!(p.retry_after(99_999), "99999");
        assert_eq!(p.policy_for(2.0, false), "\"api\";q=20;w=10");
        assert_eq!(p.factor(0.2504), "0.250");
        assert_eq!(p.factor(1.0), "1.000");
        assert_eq!(p.factor(-3.0), "0.000");
    }

    #[test]
    fn quota_is_the_capacity_rounded_down_without_losing_to_rounding() {
        assert_eq!(quota(0.7, 10), 7);
        assert_eq!(quota(0.7, 15), 10);
        assert_eq!(quota(0.1, 30), 3);
    }

    #[test]
    fn policy_names_are_checked() {
        assert!(validate_policy_name("per-ip_v1.2").is_ok());
        for bad in ["", "a b", "quote\"", &"x".repeat(65)] {
            let err = validate_policy_name(bad).unwrap_err();
            assert!(err.to_string().contains("policy name"), "{err}");
        }
    }
}
