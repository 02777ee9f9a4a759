//! What goes over the wire to the Lua scripts and back, encoded and parsed in one place:
//! the head every script reads (`lua/head.lua`), each script's own arguments, and each
//! script's reply. The Redis provider and the hybrid committer both call these.

use ::redis::{Cmd, ScriptInvocation, ToRedisArgs, Value};

use super::key::StrategyTag;
use crate::settings::SuppressionParams;
use crate::window::{Bucket, Usage, WindowGrid};
use crate::{Error, RateLimitDecision};

/// Mode of the absolute script: record an increment.
pub(crate) const ABSOLUTE_INC: &str = "i";
/// Mode of the absolute script: check one unit, record nothing.
pub(crate) const ABSOLUTE_CHECK: &str = "c";
/// Mode of the suppressed script: record an increment.
pub(crate) const SUPPRESSED_INC: &str = "i";
/// Mode of the suppressed script: the factor now, record nothing.
pub(crate) const SUPPRESSED_FACTOR: &str = "f";

/// Where a script's keys and arguments go: a [`ScriptInvocation`] (the Redis provider) or
/// an `EVALSHA` [`Cmd`] being built (the hybrid committer's pipeline).
pub(crate) trait ScriptArgs {
    /// The script's keys, all at once (an `EVALSHA` counts them first).
    fn keys(&mut self, keys: &[&str]);
    /// The next argument.
    fn arg<T: ToRedisArgs>(&mut self, value: T);
}

impl ScriptArgs for ScriptInvocation<'_> {
    fn keys(&mut self, keys: &[&str]) {
        for key in keys {
            self.key(*key);
        }
    }
    fn arg<T: ToRedisArgs>(&mut self, value: T) {
        ScriptInvocation::arg(self, value);
    }
}

impl ScriptArgs for Cmd {
    fn keys(&mut self, keys: &[&str]) {
        Cmd::arg(self, keys.len());
        for key in keys {
            Cmd::arg(self, *key);
        }
    }
    fn arg<T: ToRedisArgs>(&mut self, value: T) {
        Cmd::arg(self, value);
    }
}

/// KEYS and ARGV[1..4], what `head.lua` reads: "now" (empty: the server's `TIME`; else a
/// test clock's ms), the window in seconds, the group in ms and the mode.
pub(crate) fn head(
    args: &mut impl ScriptArgs,
    keys: &[&str],
    now_ms: Option<u64>,
    grid: &WindowGrid,
    mode: &str,
) {
    args.keys(keys);
    match now_ms {
        None => args.arg(""),
        Some(now) => args.arg(now),
    }
    args.arg(grid.window_seconds());
    args.arg(grid.group_ms());
    args.arg(mode);
}

/// The absolute script's increment: ARGV[5..7].
pub(crate) fn absolute_inc(args: &mut impl ScriptArgs, rate: f64, count: u64, cap: f64) {
    args.arg(rate);
    args.arg(count);
    args.arg(cap);
}

/// The suppressed script's knobs, ARGV[5..6], sent with every call.
pub(crate) fn suppressed_params(args: &mut impl ScriptArgs, params: &SuppressionParams) {
    args.arg(params.hard_limit_factor);
    args.arg(params.cache_ms);
}

/// The suppressed script's increment after its knobs: ARGV[7..10].
pub(crate) fn suppressed_inc(
    args: &mut impl ScriptArgs,
    rate: f64,
    count: u64,
    cap: f64,
    draw: f64,
) {
    args.arg(rate);
    args.arg(count);
    args.arg(cap);
    args.arg(draw);
}

/// One key's flush-and-refresh (`hybrid/lua/hybrid.lua`), ARGV[5..].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flush<'a> {
    pub(crate) tag: StrategyTag,
    pub(crate) instance: &'a str,
    /// 0 when there is nothing to flush.
    pub(crate) seq: u64,
    pub(crate) lease_ttl_ms: u64,
    pub(crate) rate: f64,
    pub(crate) cap: f64,
    pub(crate) wanted: u64,
    pub(crate) held: f64,
    pub(crate) hard_limit_factor: f64,
    pub(crate) buckets: &'a [Bucket<Usage>],
}

/// The flush script's arguments after the head: each bucket as its id and its counts
/// (absolute: accepted; suppressed: observed and declined).
pub(crate) fn flush(args: &mut impl ScriptArgs, flush: &Flush<'_>) {
    args.arg(flush.instance);
    args.arg(flush.seq);
    args.arg(flush.lease_ttl_ms);
    args.arg(flush.rate);
    args.arg(flush.cap);
    args.arg(flush.wanted);
    args.arg(flush.held);
    args.arg(flush.hard_limit_factor);
    args.arg(flush.buckets.len());
    for bucket in flush.buckets {
        let Usage { accepted, observed } = bucket.counts;
        args.arg(bucket.id);
        match flush.tag {
            StrategyTag::Absolute => args.arg(accepted),
            StrategyTag::Suppressed => {
                args.arg(observed);
                args.arg(observed.saturating_sub(accepted));
            }
        }
    }
}

/// The absolute script's answer: `{0}` or `{1, retry_after_ms, remaining_after_waiting}`
/// (an admitted increment adds its usage: see [`absolute_reply_with_usage`]).
pub(crate) fn absolute_reply(
    reply: &[Value],
    window_size_seconds: u64,
) -> Result<RateLimitDecision, Error> {
    absolute_reply_with_usage(reply, window_size_seconds).map(|(decision, _)| decision)
}

/// `{used, reset_ms}` after an admitted call, as the scripts send them (a reset past the
/// window, which the open bucket's group may add, is the window).
fn usage_of(used: &Value, reset: &Value, window_size_seconds: u64) -> Option<(u64, u64)> {
    match (used, reset) {
        (Value::Int(used), Value::Int(reset)) => Some((
            u64::try_from(*used).unwrap_or(0),
            u64::try_from(*reset)
                .unwrap_or(0)
                .min(window_size_seconds.saturating_mul(1000)),
        )),
        _ => None,
    }
}

fn unexpected_reply(script: &str, reply: &[Value]) -> Error {
    Error::UnexpectedReply(format!("{script} script answered {reply:?}"))
}

/// The absolute script's answer with the key's `(used, reset_ms)` when an increment was
/// admitted: `{0, used, reset_ms}`, `{0}` (a check) or `{1, retry_after_ms,
/// remaining_after_waiting}`.
pub(crate) fn absolute_reply_with_usage(
    reply: &[Value],
    window_size_seconds: u64,
) -> Result<(RateLimitDecision, Option<(u64, u64)>), Error> {
    match reply {
        [Value::Int(0)] => Ok((RateLimitDecision::Allowed, None)),
        [Value::Int(0), used, reset] => usage_of(used, reset, window_size_seconds)
            .map(|usage| (RateLimitDecision::Allowed, Some(usage)))
            .ok_or_else(|| unexpected_reply("absolute", reply)),
        [Value::Int(1), Value::Int(wait), Value::Int(left)] => Ok((
            RateLimitDecision::Rejected {
                window_size_seconds,
                retry_after_ms: u64::try_from(*wait).unwrap_or(u64::MAX),
                remaining_after_waiting: u64::try_from(*left).unwrap_or(0),
            },
            None,
        )),
        other => Err(unexpected_reply("absolute", other)),
    }
}

/// The suppressed script's answer to an increment, with the key's `(used, reset_ms)`
/// (accepted usage after the call): `{0, used, reset_ms}` or `{1, is_allowed, factor, used,
/// reset_ms}`.
pub(crate) fn suppressed_reply_with_usage(
    reply: &[Value],
    window_size_seconds: u64,
) -> Result<(RateLimitDecision, (u64, u64)), Error> {
    let usage = |used, reset| {
        usage_of(used, reset, window_size_seconds)
            .ok_or_else(|| unexpected_reply("suppressed", reply))
    };
    match reply {
        [Value::Int(0), used, reset] => Ok((RateLimitDecision::Allowed, usage(used, reset)?)),
        [Value::Int(1), Value::Int(allowed), factor, used, reset] => Ok((
            RateLimitDecision::Suppressed {
                suppression_factor: factor_reply(factor)?,
                is_allowed: *allowed == 1,
            },
            usage(used, reset)?,
        )),
        other => Err(unexpected_reply("suppressed", other)),
    }
}

/// Mode of the limit-set script: count the request in every limit or in none.
pub(crate) const SET_INC: &str = "i";
/// Mode of the limit-set script: what an increment would answer, recording nothing.
pub(crate) const SET_CHECK: &str = "c";

/// One limit of a set, as the set script reads it (six values after ARGV[7]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SetLimitArgs {
    pub(crate) grid: WindowGrid,
    pub(crate) suppressed: bool,
    pub(crate) cap: f64,
    pub(crate) hard: f64,
    pub(crate) rate: f64,
}

/// The set script's arguments after `head`: ARGV[5] cost, ARGV[6] the draw, ARGV[7] the
/// number of limits, then each limit's window, group, strategy, capacity, hard limit, rate.
pub(crate) fn set_args(args: &mut impl ScriptArgs, cost: u64, draw: f64, limits: &[SetLimitArgs]) {
    args.arg(cost);
    args.arg(draw);
    args.arg(limits.len());
    for limit in limits {
        args.arg(limit.grid.window_seconds());
        args.arg(limit.grid.group_ms());
        args.arg(if limit.suppressed { "s" } else { "a" });
        args.arg(limit.cap);
        args.arg(limit.hard);
        args.arg(limit.rate);
    }
}

/// One limit's part of the set script's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SetLimitReply {
    pub(crate) accepted: u64,
    pub(crate) reset_ms: u64,
    pub(crate) factor: f64,
    pub(crate) refused: bool,
}

/// Parses `{outcome, retry_after_ms, then accepted, reset_ms, factor, refused per limit}`;
/// outcome 0 allowed, 1 rejected, 2 shed; a retry of -1 is never (`u64::MAX`). The hot
/// path's `{0, then accepted, reset_ms per limit}` is an admission with no limit shedding.
pub(crate) fn set_reply(
    reply: &[Value],
    limits: usize,
) -> Result<(u8, u64, Vec<SetLimitReply>), Error> {
    let unexpected = || Error::UnexpectedReply(format!("limit-set script answered {reply:?}"));
    let int = |v: &Value| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    if reply.len() == 1 + 2 * limits && matches!(reply[0], Value::Int(0)) {
        let parts = reply[1..]
            .chunks(2)
            .map(|part| {
                Some(SetLimitReply {
                    accepted: u64::try_from(int(&part[0])?).ok()?,
                    reset_ms: u64::try_from(int(&part[1])?).ok()?,
                    factor: 0.0,
                    refused: false,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(unexpected)?;
        return Ok((0, 0, parts));
    }
    if reply.len() != 2 + 4 * limits {
        return Err(unexpected());
    }
    let outcome = int(&reply[0])
        .filter(|o| (0..=2).contains(o))
        .ok_or_else(unexpected)? as u8;
    let retry = int(&reply[1]).ok_or_else(unexpected)?;
    let retry = u64::try_from(retry).unwrap_or(u64::MAX);
    let parts = reply[2..]
        .chunks(4)
        .map(|part| {
            Some(SetLimitReply {
                accepted: u64::try_from(int(&part[0])?).ok()?,
                reset_ms: u64::try_from(int(&part[1])?).ok()?,
                factor: real(&part[2]).filter(|f| (0.0..=1.0).contains(f))?,
                refused: int(&part[3])? == 1,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(unexpected)?;
    Ok((outcome, retry, parts))
}

/// A suppression factor, sent as a string (Lua numbers lose their fraction as integers).
pub(crate) fn factor_reply(value: &Value) -> Result<f64, Error> {
    real(value)
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| {
            Error::UnexpectedReply(format!("suppressed script answered {value:?} for a factor"))
        })
}

/// A real number the scripts send as a string.
fn real(value: &Value) -> Option<f64> {
    let text = match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text.as_str()),
        _ => None,
    };
    text.and_then(|t| t.parse::<f64>().ok())
}

/// The flush script's answer for one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlushReply {
    pub(crate) server_now: i64,
    /// Whether the batch was applied (not a repeat of one already applied, nor empty).
    pub(crate) applied: bool,
    /// Units of the batch dropped as already out of the window.
    pub(crate) expired: u64,
    pub(crate) lease: f64,
    pub(crate) used: u64,
    pub(crate) holders: u64,
    pub(crate) observed: u64,
    pub(crate) recent: u64,
    /// The key's oldest buckets (absolute, past half the capacity), oldest first.
    pub(crate) oldest: Vec<Bucket<u64>>,
}

/// Parses `{now, applied, expired, lease, used, holders, observed, recent, {id, units, ..}}`.
pub(crate) fn flush_reply(value: &Value) -> Result<FlushReply, Error> {
    let unexpected = || Error::UnexpectedReply(format!("hybrid flush script answered {value:?}"));
    let Value::Array(items) = value else {
        return Err(unexpected());
    };
    let int = |i: usize| match items.get(i) {
        Some(Value::Int(v)) => Ok(*v),
        _ => Err(unexpected()),
    };
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(FlushReply {
        server_now: int(0)?,
        applied: int(1)? == 1,
        expired: unsigned(int(2)?),
        lease: items.get(3).and_then(real).ok_or_else(unexpected)?.max(0.0),
        used: unsigned(int(4)?),
        holders: unsigned(int(5)?).max(1),
        observed: unsigned(int(6)?),
        recent: unsigned(int(7)?),
        oldest: match items.get(8) {
            Some(Value::Array(flat)) => flat
                .chunks_exact(2)
                .map(|pair| match pair {
                    [Value::Int(id), Value::Int(units)] => Ok(Bucket {
                        id: unsigned(*id),
                        counts: unsigned(*units),
                    }),
                    _ => Err(unexpected()),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(unexpected()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> WindowGrid {
        WindowGrid::for_tests(10, 100)
    }

    /// The arguments of a built command after its name, as text.
    fn words(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .skip(1)
            .map(|a| match a {
                ::redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<not a plain argument>".into(),
            })
            .collect()
    }

    #[test]
    fn the_head_counts_the_keys_then_sends_now_window_group_and_mode() {
        let mut cmd = ::redis::cmd("EVALSHA");
        head(&mut cmd, &["b", "h", "l"], None, &grid(), "a");
        assert_eq!(words(&cmd), ["3", "b", "h", "l", "", "10", "100", "a"]);
        let mut cmd = ::redis::cmd("EVALSHA");
        head(&mut cmd, &["b", "h"], Some(1234), &grid(), ABSOLUTE_INC);
        assert_eq!(words(&cmd), ["2", "b", "h", "1234", "10", "100", "i"]);
    }

    #[test]
    fn strategy_arguments_in_the_order_the_scripts_read_them() {
        let mut cmd = ::redis::cmd("EVALSHA");
        absolute_inc(&mut cmd, 0.5, 2, 5.0);
        assert_eq!(words(&cmd), ["0.5", "2", "5.0"]);
        let mut cmd = ::redis::cmd("EVALSHA");
        let params = SuppressionParams {
            hard_limit_factor: 1.5,
            cache_ms: 100,
        };
        suppressed_params(&mut cmd, &params);
        suppressed_inc(&mut cmd, 1.0, 1, 10.0, 0.25);
        assert_eq!(words(&cmd), ["1.5", "100", "1.0", "1", "10.0", "0.25"]);
    }

    #[test]
    fn a_flush_sends_each_bucket_as_its_strategy_counts_it() {
        let buckets = [
            Bucket {
                id: 7,
                counts: Usage {
                    accepted: 2,
                    observed: 5,
                },
            },
            Bucket {
                id: 8,
                counts: Usage {
                    accepted: 1,
                    observed: 1,
                },
            },
        ];
        let mut request = Flush {
            tag: StrategyTag::Suppressed,
            instance: "i1",
            seq: 4,
            lease_ttl_ms: 200,
            rate: 10.0,
            cap: 100.0,
            wanted: 1,
            held: 2.5,
            hard_limit_factor: 1.5,
            buckets: &buckets,
        };
        let mut cmd = ::redis::cmd("EVALSHA");
        flush(&mut cmd, &request);
        let fixed = ["i1", "4", "200", "10.0", "100.0", "1", "2.5", "1.5", "2"];
        // Suppressed: observed and declined (5 observed, 2 accepted: 3 declined).
        assert_eq!(words(&cmd)[..9], fixed);
        assert_eq!(words(&cmd)[9..], ["7", "5", "3", "8", "1", "0"]);
        request.tag = StrategyTag::Absolute;
        let mut cmd = ::redis::cmd("EVALSHA");
        flush(&mut cmd, &request);
        assert_eq!(words(&cmd)[9..], ["7", "2", "8", "1"]);
    }

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn strategy_replies_parse_and_anything_else_is_unexpected() {
        assert_eq!(
            absolute_reply(&[Value::Int(0)], 10).unwrap(),
            RateLimitDecision::Allowed
        );
        assert_eq!(
            absolute_reply(&[Value::Int(1), Value::Int(1500), Value::Int(3)], 10).unwrap(),
            RateLimitDecision::Rejected {
                window_size_seconds: 10,
                retry_after_ms: 1500,
                remaining_after_waiting: 3
            }
        );
        assert!(matches!(
            absolute_reply(&[Value::Int(2)], 10),
            Err(Error::UnexpectedReply(_))
        ));
        // An admitted call carries the key's usage and reset (capped at the window).
        assert_eq!(
            absolute_reply_with_usage(&[Value::Int(0), Value::Int(4), Value::Int(10_100)], 10)
                .unwrap(),
            (RateLimitDecision::Allowed, Some((4, 10_000)))
        );
        assert!(matches!(
            absolute_reply(&[Value::Int(0), Value::Int(4), text("x")], 10),
            Err(Error::UnexpectedReply(_))
        ));
        assert_eq!(
            suppressed_reply_with_usage(
                &[
                    Value::Int(1),
                    Value::Int(0),
                    text("0.75"),
                    Value::Int(9),
                    Value::Int(700)
                ],
                10
            )
            .unwrap(),
            (
                RateLimitDecision::Suppressed {
                    suppression_factor: 0.75,
                    is_allowed: false
                },
                (9, 700)
            )
        );
        assert_eq!(
            suppressed_reply_with_usage(&[Value::Int(0), Value::Int(3), Value::Int(-1)], 10)
                .unwrap(),
            (RateLimitDecision::Allowed, (3, 0))
        );
        assert!(matches!(
            suppressed_reply_with_usage(&[Value::Int(0)], 10),
            Err(Error::UnexpectedReply(_))
        ));
        assert_eq!(factor_reply(&Value::SimpleString("1".into())).unwrap(), 1.0);
        for bad in [text("1.5"), text("x"), Value::Int(0)] {
            assert!(matches!(factor_reply(&bad), Err(Error::UnexpectedReply(_))));
        }
    }

    #[test]
    fn a_flush_reply_parses_with_its_oldest_buckets() {
        let reply = Value::Array(vec![
            Value::Int(1_000_000),
            Value::Int(1),
            Value::Int(2),
            text("3.5"),
            Value::Int(40),
            Value::Int(0),
            Value::Int(-1),
            Value::Int(6),
            Value::Array(vec![
                Value::Int(9),
                Value::Int(10),
                Value::Int(11),
                Value::Int(12),
            ]),
        ]);
        assert_eq!(
            flush_reply(&reply).unwrap(),
            FlushReply {
                server_now: 1_000_000,
                applied: true,
                expired: 2,
                lease: 3.5,
                used: 40,
                // At least one holder: this instance; negatives read as 0.
                holders: 1,
                observed: 0,
                recent: 6,
                oldest: vec![Bucket { id: 9, counts: 10 }, Bucket { id: 11, counts: 12 }],
            }
        );
        let Value::Array(mut items) = reply else {
            unreachable!()
        };
        items[3] = text("-2");
        assert_eq!(
            flush_reply(&Value::Array(items.clone())).unwrap().lease,
            0.0
        );
        items[8] = Value::Array(vec![Value::Int(1), text("2")]);
        assert!(matches!(
            flush_reply(&Value::Array(items)),
            Err(Error::UnexpectedReply(_))
        ));
        assert!(flush_reply(&Value::Int(0)).is_err());
    }

    #[test]
    fn set_arguments_and_replies() {
        let mut cmd = ::redis::cmd("EVALSHA");
        let grid = WindowGrid::for_tests(60, 100);
        let limit = SetLimitArgs {
            grid,
            suppressed: true,
            cap: 10.0,
            hard: 15.0,
            rate: 1.0 / 6.0,
        };
        set_args(&mut cmd, 2, 0.25, &[limit]);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                ::redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(
            args[1..],
            [
                "2",
                "0.25",
                "1",
                "60",
                "100",
                "s",
                "10.0",
                "15.0",
                "0.16666666666666666"
            ]
        );

        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = [
            Value::Int(1),
            Value::Int(-1),
            Value::Int(3),
            Value::Int(900),
            bulk("0"),
            Value::Int(1),
            Value::Int(10),
            Value::Int(60000),
            bulk("0.5"),
            Value::Int(0),
        ];
        let (outcome, retry, limits) = set_reply(&reply, 2).unwrap();
        assert_eq!((outcome, retry), (1, u64::MAX));
        assert_eq!(
            limits[0],
            SetLimitReply {
                accepted: 3,
                reset_ms: 900,
                factor: 0.0,
                refused: true
            }
        );
        assert_eq!(limits[1].factor, 0.5);
        assert!(
            set_reply(&reply, 1).is_err(),
            "a length that does not fit the set"
        );
        let mut bad = reply.clone();
        bad[4] = bulk("1.5");
        assert!(set_reply(&bad, 2).is_err(), "a factor outside [0, 1]");
        bad = reply.clone();
        bad[0] = Value::Int(3);
        assert!(set_reply(&bad, 2).is_err(), "an unknown outcome");

        // The hot path's admission: accepted and reset per limit.
        let hot = [
            Value::Int(0),
            Value::Int(4),
            Value::Int(700),
            Value::Int(9),
            Value::Int(59_000),
        ];
        let (outcome, retry, limits) = set_reply(&hot, 2).unwrap();
        assert_eq!((outcome, retry), (0, 0));
        assert_eq!(
            limits,
            [
                SetLimitReply {
                    accepted: 4,
                    reset_ms: 700,
                    factor: 0.0,
                    refused: false
                },
                SetLimitReply {
                    accepted: 9,
                    reset_ms: 59_000,
                    factor: 0.0,
                    refused: false
                }
            ]
        );
        assert!(
            set_reply(&hot, 1).is_err(),
            "a length that fits neither form"
        );
        let mut bad = hot.clone();
        bad[0] = Value::Int(1);
        assert!(
            set_reply(&bad, 2).is_err(),
            "the short form is only an admission"
        );
        bad = hot.clone();
        bad[2] = Value::Int(-5);
        assert!(set_reply(&bad, 2).is_err(), "a negative reset");
    }
}
