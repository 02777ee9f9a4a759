//! Limits and limit sets: several limits decided together on one request.
//!
//! A [`Limit`] is a name, a [`Quota`] (a count per window) and a [`Strategy`](crate::Strategy). A
//! [`LimitSet`] holds one or more limits with distinct names; a request is admitted iff
//! every limit in its set admits it, and a request refused by any limit is counted by none.
//!
//! Sets are written in a short notation that fits in a config file:
//!
//! ```
//! use sluicegate::policy::LimitSet;
//!
//! let set: LimitSet = "burst = 3/s; minute = 10/min".parse()?;
//! assert_eq!(set.len(), 2);
//! assert_eq!(set.limits()[1].quota().count(), 10.0);
//! assert_eq!(set.limits()[1].quota().window_seconds(), 60);
//!
//! // Names default to the window: "10/s; 1000 per hour" is `1s` and `1h`.
//! let set: LimitSet = "10/s; 1000 per hour".parse()?;
//! assert_eq!(set.limits()[1].name(), "1h");
//!
//! // Errors point at the bad part.
//! let err = "10/s; 5 per fortnight".parse::<LimitSet>().unwrap_err();
//! assert_eq!(err.span(), 12..21);
//! # Ok::<(), sluicegate::policy::ParseError>(())
//! ```
//!
//! # Memory and work per call
//! Each limit counts in grid-aligned buckets of its own [group](Limit::group_ms). A key
//! holds at most `window / group + 1` live buckets per limit, and a limit's group is never
//! finer than `window / MAX_BUCKETS_PER_WINDOW`, so a day-long window holds at most
//! [`MAX_BUCKETS_PER_WINDOW`]` + 1` buckets per key however busy the key is.
//!
//! # Suppressed limits in a set
//! A suppressed limit between its quota and its hard limit admits by a draw. A request that
//! an absolute limit refuses, or that a suppressed limit sheds outright (over its hard
//! limit), draws nothing. Otherwise one draw per request serves every drawing limit: each
//! sheds iff the draw is below its factor, so the request is admitted with probability
//! `1 - max factor`. A shed request counts as observed (offered, declined) in the limits
//! that shed it and nowhere else; every provider decides it so.
//!
//! # Quotas per call
//! `inc_with` on [`LocalPolicy`] and `RedisPolicy` takes one quota count per limit with each
//! call (a rate resolved per request: plans by API key). A limit's window, group and
//! strategy stay fixed; its count, and so its rate and hard limit, is the call's.

mod decision;
mod limit;
mod notation;

pub use crate::local::LocalPolicy;
#[cfg(feature = "redis-tokio")]
pub use crate::redis::RedisPolicy;
pub use decision::{LimitStatus, Outcome, SetDecision};
pub use limit::{Limit, LimitName, LimitSet, MAX_BUCKETS_PER_WINDOW, MAX_LIMITS, Quota};
pub use notation::ParseError;
