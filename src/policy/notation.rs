//! The limit notation: `"burst = 10/s; 1000 per hour"`.
//!
//! ```text
//! set   := limit ((";" | ",") limit)* [";" | ","]
//! limit := [name "="] count ("/" | "per") [n] unit
//! unit  := s | sec | second | m | min | minute | h | hr | hour | d | day   (plurals too)
//! ```
//! `count` and `n` are numbers (`n` a whole one); names default to the window (`1s`, `1h`).

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use super::limit::{Limit, LimitName, LimitSet, Quota};
use crate::Error;

/// A limit set or limit that does not parse, with the part of the input at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    input: String,
    span: Range<usize>,
    message: String,
}

impl ParseError {
    fn new(input: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        ParseError {
            input: input.to_owned(),
            span,
            message: message.into(),
        }
    }

    /// The byte range of the input at fault.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// What is wrong there.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = self.input[..self.span.start].chars().count();
        let width = self.input[self.span.clone()].chars().count().max(1);
        write!(
            f,
            "invalid limit {:?}: {}\n    {}\n    {}{}",
            self.input,
            self.message,
            self.input,
            " ".repeat(start),
            "^".repeat(width)
        )
    }
}

impl std::error::Error for ParseError {}

impl FromStr for LimitSet {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, ParseError> {
        let mut limits: Vec<(Limit, Range<usize>)> = Vec::new();
        let mut start = 0;
        for piece in input.split_inclusive([';', ',']) {
            let end = start + piece.len();
            let body = piece.strip_suffix([';', ',']).unwrap_or(piece);
            let is_last = end == input.len();
            if body.trim().is_empty() {
                // A trailing separator is fine; an empty limit between two is not.
                if !is_last || limits.is_empty() {
                    return Err(ParseError::new(
                        input,
                        start..end,
                        "expected a limit such as \"10/s\"",
                    ));
                }
            } else {
                let limit = parse_limit(input, start, body)?;
                let span = trimmed_span(body, start);
                if let Some((first, _)) = limits.iter().find(|(l, _)| l.name() == limit.name()) {
                    return Err(ParseError::new(
                        input,
                        span,
                        format!(
                            "a second limit named {:?} (the first is {first}): name them, as in \
                             \"burst = 10/s; minute = 100/m\"",
                            limit.name()
                        ),
                    ));
                }
                limits.push((limit, span));
            }
            start = end;
        }
        if limits.is_empty() {
            return Err(ParseError::new(
                input,
                0..input.len(),
                "expected a limit such as \"10/s\"",
            ));
        }
        let last = limits
            .last()
            .map(|(_, s)| s.clone())
            .unwrap_or(0..input.len());
        LimitSet::new(limits.into_iter().map(|(l, _)| l))
            .map_err(|err| ParseError::new(input, last, error_text(err)))
    }
}

impl FromStr for Limit {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, ParseError> {
        if let Some(at) = input.find([';', ',']) {
            return Err(ParseError::new(
                input,
                at..at + 1,
                "one limit expected; parse a LimitSet for several",
            ));
        }
        parse_limit(input, 0, input)
    }
}

impl FromStr for Quota {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, ParseError> {
        let limit: Limit = input.parse()?;
        if input.contains('=') {
            return Err(ParseError::new(
                input,
                0..input.len(),
                "a quota has no name",
            ));
        }
        Ok(*limit.quota())
    }
}

/// The message of a validation error, without the crate-level prefix.
fn error_text(err: Error) -> String {
    match err {
        Error::InvalidValue {
            value, expected, ..
        } => format!("{value}: {expected}"),
        other => other.to_string(),
    }
}

fn trimmed_span(body: &str, offset: usize) -> Range<usize> {
    let lead = body.len() - body.trim_start().len();
    offset + lead..offset + body.trim_end().len()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Token<'a> {
    Number(&'a str),
    Word(&'a str),
    Slash,
}

/// Splits `body` (at `offset` in `input`) into tokens with their absolute spans.
fn tokens<'a>(
    input: &str,
    offset: usize,
    body: &'a str,
) -> Result<Vec<(Token<'a>, Range<usize>)>, ParseError> {
    let mut out = Vec::new();
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let run = |pred: fn(u8) -> bool| i + bytes[i..].iter().take_while(|b| pred(**b)).count();
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' {
            out.push((Token::Slash, offset + i..offset + i + 1));
            i += 1;
        } else if c.is_ascii_digit() || c == b'.' {
            let end = run(|b| b.is_ascii_digit() || b == b'.' || b == b'_');
            out.push((Token::Number(&body[i..end]), offset + i..offset + end));
            i = end;
        } else if c.is_ascii_alphabetic() {
            let end = run(|b| b.is_ascii_alphabetic());
            out.push((Token::Word(&body[i..end]), offset + i..offset + end));
            i = end;
        } else {
            let len = body[i..].chars().next().map_or(1, char::len_utf8);
            return Err(ParseError::new(
                input,
                offset + i..offset + i + len,
                format!("unexpected {:?}", &body[i..i + len]),
            ));
        }
    }
    Ok(out)
}

fn unit_seconds(word: &str) -> Option<u64> {
    Some(match word.to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        _ => return None,
    })
}

/// One limit: `[name =] count (/|per) [n] unit`, found at `offset` in `input`.
fn parse_limit(input: &str, offset: usize, body: &str) -> Result<Limit, ParseError> {
    let (name, quota_offset, quota_body) = match body.find('=') {
        Some(at) => {
            let raw = &body[..at];
            let span = trimmed_span(raw, offset);
            if raw.trim().is_empty() {
                return Err(ParseError::new(
                    input,
                    offset..offset + at + 1,
                    "a name is missing before \"=\"",
                ));
            }
            let name = LimitName::new(raw.trim())
                .map_err(|e| ParseError::new(input, span, error_text(e)))?;
            (Some(name), offset + at + 1, &body[at + 1..])
        }
        None => (None, offset, body),
    };
    let toks = tokens(input, quota_offset, quota_body)?;
    let whole = trimmed_span(quota_body, quota_offset);
    let mut it = toks.iter().cloned().peekable();
    let expected =
        |span: Range<usize>, what: &str| ParseError::new(input, span, format!("expected {what}"));
    let end_span = whole.end..whole.end;

    let count = match it.next() {
        Some((Token::Number(text), span)) => parse_number(text)
            .ok_or_else(|| ParseError::new(input, span, format!("{text:?} is not a number")))?,
        Some((_, span)) => return Err(expected(span, "a count, as in \"10/s\"")),
        None => return Err(expected(end_span, "a limit such as \"10/s\"")),
    };
    match it.next() {
        Some((Token::Slash, _)) => {}
        Some((Token::Word(w), _)) if w.eq_ignore_ascii_case("per") => {}
        Some((_, span)) => return Err(expected(span, "\"/\" or \"per\" after the count")),
        None => {
            return Err(expected(
                end_span,
                "\"/\" or \"per\" and a unit, as in \"10/s\"",
            ));
        }
    }
    let mut multiple = 1u64;
    if let Some((Token::Number(text), span)) = it.peek().cloned() {
        it.next();
        multiple = text
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                ParseError::new(
                    input,
                    span,
                    format!("{text:?} is not a whole number of at least 1"),
                )
            })?;
    }
    let (unit, unit_span) = match it.next() {
        Some((Token::Word(w), span)) => match unit_seconds(w) {
            Some(unit) => (unit, span),
            None => {
                return Err(ParseError::new(
                    input,
                    span,
                    format!("unknown unit {w:?} (use s, m, h or d, or second, minute, hour, day)"),
                ));
            }
        },
        Some((_, span)) => return Err(expected(span, "a unit: s, m, h or d")),
        None => return Err(expected(end_span, "a unit: s, m, h or d")),
    };
    if let Some((_, span)) = it.next() {
        return Err(ParseError::new(
            input,
            span.start..whole.end,
            "unexpected text after the limit",
        ));
    }
    let window = multiple
        .checked_mul(unit)
        .ok_or_else(|| ParseError::new(input, unit_span.clone(), "the window is too long"))?;
    let quota =
        Quota::new(count, window).map_err(|e| ParseError::new(input, whole, error_text(e)))?;
    Ok(match name {
        Some(name) => Limit::new(name, quota),
        None => Limit::unnamed(quota),
    })
}

/// A count: digits with an optional fraction and `_` separators (`1_000`, `2.5`).
fn parse_number(text: &str) -> Option<f64> {
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    let valid = !clean.is_empty()
        && clean.chars().filter(|c| *c == '.').count() <= 1
        && clean.chars().any(|c| c.is_ascii_digit());
    valid.then(|| clean.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> Vec<(String, f64, u64)> {
        let set: LimitSet = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
        set.iter()
            .map(|l| {
                (
                    l.name().to_owned(),
                    l.quota().count(),
                    l.quota().window_seconds(),
                )
            })
            .collect()
    }

    fn err(text: &str) -> (Range<usize>, String) {
        let e = text.parse::<LimitSet>().expect_err(text);
        (e.span(), e.message().to_owned())
    }

    #[test]
    fn the_forms_users_write() {
        let one = |n: &str, c: f64, w: u64| vec![(n.to_owned(), c, w)];
        assert_eq!(set("10/s"), one("1s", 10.0, 1));
        assert_eq!(set("5 per minute"), one("1m", 5.0, 60));
        assert_eq!(set("5 PER Minutes"), one("1m", 5.0, 60));
        assert_eq!(set("100/10s"), one("10s", 100.0, 10));
        assert_eq!(set("100 per 10 seconds"), one("10s", 100.0, 10));
        assert_eq!(set("2.5/s"), one("1s", 2.5, 1));
        assert_eq!(set("1_000/h"), one("1h", 1000.0, 3600));
        assert_eq!(set("10000/d"), one("1d", 10_000.0, 86_400));
        assert_eq!(
            set("  burst = 3/s ; minute=10/min;"),
            vec![
                ("burst".to_owned(), 3.0, 1),
                ("minute".to_owned(), 10.0, 60)
            ]
        );
        assert_eq!(
            set("10/s, 1000/h"),
            vec![("1s".to_owned(), 10.0, 1), ("1h".to_owned(), 1000.0, 3600)]
        );
        assert_eq!(set("x = 7 per 2 hours"), one("x", 7.0, 7200));
    }

    #[test]
    fn errors_point_at_the_bad_part() {
        assert_eq!(err("10/s; 5 per fortnight").0, 12..21);
        assert!(
            err("10/s; 5 per fortnight")
                .1
                .contains("unknown unit \"fortnight\"")
        );
        assert_eq!(err("ten/s").0, 0..3);
        assert_eq!(err("10 s").0, 3..4);
        assert_eq!(err("10/").0, 3..3);
        assert_eq!(err("10/0s").0, 3..4);
        assert_eq!(err("10/1.5s").0, 3..6);
        assert_eq!(err("1.2.3/s").0, 0..5);
        assert_eq!(err("10/s extra").0, 5..10);
        assert_eq!(err("10/s # c").0, 5..6);
        assert_eq!(err("= 10/s").0, 0..1);
        assert_eq!(err("bad name = 10/s").0, 0..8);
        let (span, msg) = err("0.5/s");
        assert_eq!(span, 0..5);
        assert!(msg.contains("at least 1"), "{msg}");
        let (span, msg) = err("10/s; 20/s");
        assert_eq!(span, 6..10);
        assert!(msg.contains("second limit named \"1s\""), "{msg}");
        assert_eq!(err("").0, 0..0);
        assert_eq!(err("10/s;;20/m").0, 5..6);
        assert_eq!(err(";").0, 0..1);
        let nine = (1..=9)
            .map(|i| format!("l{i} = {i}/s"))
            .collect::<Vec<_>>()
            .join("; ");
        assert!(err(&nine).1.contains("at most"));
    }

    #[test]
    fn the_message_shows_where() {
        let e = "10/s; 5 per fortnight"
            .parse::<LimitSet>()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid limit \"10/s; 5 per fortnight\": unknown unit \"fortnight\" (use s, m, h or d, \
             or second, minute, hour, day)\n    10/s; 5 per fortnight\n                ^^^^^^^^^"
        );
    }

    #[test]
    fn single_limits_and_quotas() {
        let l: Limit = "burst = 3/s".parse().unwrap();
        assert_eq!((l.name(), l.quota().count()), ("burst", 3.0));
        assert!("3/s; 4/m".parse::<Limit>().is_err());
        let q: Quota = "10 per minute".parse().unwrap();
        assert_eq!(q, Quota::per_minute(10.0).unwrap());
        assert!("a = 10/m".parse::<Quota>().is_err());
    }

    #[test]
    fn display_parses_back() {
        for text in [
            "burst = 3/s; minute = 10/m",
            "10/s; 1000/h; 10000/d",
            "w = 100/90s",
        ] {
            let set: LimitSet = text.parse().unwrap();
            let again: LimitSet = set.to_string().parse().unwrap();
            assert_eq!(set, again, "{text}");
        }
    }
}
