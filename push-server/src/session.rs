//! Subscription tokens on open streams: when a stream's token lapses, and
//! what it may still do then.
//!
//! A topic with `subscribeAuth: token` is held under the [`Grant`] of the
//! token that opened (or last renewed) it. The stream's tokens end at the
//! earliest `exp` of its grants plus [`crate::auth::EXP_LEEWAY`]. SSE and
//! gRPC streams end there. A WebSocket, which can renew in band with a
//! `refresh` frame, is told its token lapsed ([`Due::Warn`]) and ends after
//! the refresh grace (`--token-refresh-grace`) unless a refresh came.
//! Revocation (a token's `sub` or `jti` listed in the topic's settings) ends
//! a stream at once, whatever the transport.
//!
//! One timer per stream, set to the next instant something is due; the
//! decision itself ([`due`]) is a pure function of the time.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::WatchStream;

use crate::auth::Grant;

/// Why a stream's token no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEnd {
    /// It expired (and, on a WebSocket, was not renewed within the grace).
    Expired,
    /// The topic's settings refuse its subject or id.
    Revoked,
}

impl TokenEnd {
    /// The name clients see (`reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenEnd::Expired => "expired",
            TokenEnd::Revoked => "revoked",
        }
    }
}

/// What a stream says about its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEvent {
    /// The token lapsed at `exp` (+ leeway); a WebSocket may still renew it
    /// with a `refresh` frame within `close_in`, while messages keep coming.
    Expiring { exp: u64, close_in: Duration },
    /// The stream ends: its token expired or was revoked.
    Ended(TokenEnd),
}

/// The token state of a stream that holds at least one grant.
#[derive(Debug)]
pub struct TokenSession {
    /// Fires when something is [`due`].
    pub timer: Pin<Box<Sleep>>,
    /// The earliest end of the grants held, and that grant's `exp`.
    pub end: Option<(Instant, u64)>,
    /// The end a warning was given for.
    pub warned: Option<Instant>,
    /// New topic settings: the revocation lists are checked again.
    pub changes: WatchStream<u64>,
}

impl TokenSession {
    pub fn new(changes: tokio::sync::watch::Receiver<u64>) -> TokenSession {
        TokenSession {
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            end: None,
            warned: None,
            changes: WatchStream::from_changes(changes),
        }
    }
}

/// A grant held by one topic of a stream, with its end on the runtime's clock.
#[derive(Debug, Clone)]
pub struct Held {
    pub grant: Grant,
    /// `exp` + leeway, as an instant of the runtime's clock.
    pub end: Instant,
}

impl Held {
    /// Holds `grant`, reading its end against the wall clock now
    /// (`now_unix_nanos`) and `now` on the runtime's clock.
    pub fn new(grant: Grant, now: Instant, now_unix_nanos: u64) -> Held {
        let left = grant.end_unix_nanos().saturating_sub(now_unix_nanos);
        Held {
            end: now + Duration::from_nanos(left),
            grant,
        }
    }
}

/// What the stream's token timer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// No topic holds a token: nothing to time.
    Never,
    /// Nothing until this instant.
    At(Instant),
    /// The token lapsed: tell the client it may renew until `close_at`.
    Warn { close_at: Instant },
    /// The token lapsed and the grace (if any) is over: end the stream.
    Expired,
}

/// What is due at `now` for a stream whose earliest token end is `end`, with
/// `grace` after it (zero: no renewal), having warned already for `warned`
/// (the end a warning was given for).
pub fn due(now: Instant, end: Option<Instant>, grace: Duration, warned: Option<Instant>) -> Due {
    let Some(end) = end else {
        return Due::Never;
    };
    if now < end {
        return Due::At(end);
    }
    let close_at = end + grace;
    if now >= close_at {
        return Due::Expired;
    }
    if warned == Some(end) {
        Due::At(close_at)
    } else {
        Due::Warn { close_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_due_when() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let end = Some(t0 + s(10));
        // Table: (now, end, grace, warned) → due.
        let cases = [
            (t0, None, s(30), None, Due::Never),
            (t0, end, s(30), None, Due::At(t0 + s(10))),
            (
                t0 + s(10),
                end,
                s(30),
                None,
                Due::Warn {
                    close_at: t0 + s(40),
                },
            ),
            (
                t0 + s(20),
                end,
                s(30),
                Some(t0 + s(10)),
                Due::At(t0 + s(40)),
            ),
            // A warning for an earlier token does not count for this one.
            (
                t0 + s(20),
                end,
                s(30),
                Some(t0 + s(5)),
                Due::Warn {
                    close_at: t0 + s(40),
                },
            ),
            (t0 + s(40), end, s(30), Some(t0 + s(10)), Due::Expired),
            // SSE and gRPC: no grace, the end is the end.
            (t0 + s(10), end, Duration::ZERO, None, Due::Expired),
            (t0 + s(9), end, Duration::ZERO, None, Due::At(t0 + s(10))),
        ];
        for (i, (now, end, grace, warned, expected)) in cases.into_iter().enumerate() {
            assert_eq!(due(now, end, grace, warned), expected, "case {i}");
        }
    }

    #[test]
    fn a_held_grant_ends_at_exp_plus_the_leeway() {
        let now = Instant::now();
        let grant = Grant {
            sub: None,
            jti: None,
            exp: 1_000,
        };
        let held = Held::new(grant.clone(), now, 990 * 1_000_000_000);
        assert_eq!(
            held.end,
            now + Duration::from_secs(10) + crate::auth::EXP_LEEWAY
        );
        // Already past: the end is now.
        let held = Held::new(grant, now, 2_000 * 1_000_000_000);
        assert_eq!(held.end, now);
    }
}
