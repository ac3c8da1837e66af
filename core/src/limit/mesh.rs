//! Mesh-scoped stream limits, the filter's side: what a limiter answer (or
//! its absence) means for a stream, which streams one data-plane instance (a
//! filter VM) holds per (policy, key), and when it tells the limiter so.
//!
//! No protobuf here: the filter maps `sidestream.limits.v1` messages to
//! [`LimiterAnswer`] and back. Time is an argument.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Refusal, RefusalReason};
use crate::config::{MeshFallback, MeshSettings};

/// gRPC status DEADLINE_EXCEEDED.
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;
/// gRPC status UNAVAILABLE (Envoy's answer when it cannot reach the cluster,
/// and also, as HTTP 504 mapped to gRPC, when its own call timeout fires).
pub const GRPC_UNAVAILABLE: u32 = 14;

/// The limiter's verdict on an Acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerVerdict {
    Admitted,
    /// The bucket is empty.
    RefusedRate,
    /// `max_concurrent` streams are open mesh-wide.
    RefusedConcurrency,
    /// A value this filter does not know (the limiter is newer, or the
    /// message is broken).
    Unknown(i32),
}

impl AnswerVerdict {
    /// The `sidestream.limits.v1.Verdict` number.
    pub fn from_proto(value: i32) -> Self {
        match value {
            1 => AnswerVerdict::Admitted,
            2 => AnswerVerdict::RefusedRate,
            3 => AnswerVerdict::RefusedConcurrency,
            other => AnswerVerdict::Unknown(other),
        }
    }
}

/// An Acquire answer, as far as the filter uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterAnswer {
    pub verdict: AnswerVerdict,
    pub retry_after_ms: u64,
    pub reset_ms: u64,
    pub limit: u32,
    /// The lease on this instance's slots (0: not said).
    pub lease_ms: u64,
}

/// How an Acquire call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// A decodable answer arrived.
    Answered(LimiterAnswer),
    /// The call ended with a gRPC status other than OK after `elapsed`.
    Failed { grpc_status: u32, elapsed: Duration },
    /// Status OK but the body is not an AcquireResponse.
    Undecodable,
    /// The call could not be made (no limiter cluster, dispatch refused).
    NotSent,
}

/// Why a mesh-scoped stream got its policy's fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackCause {
    /// No answer within the policy's timeout.
    Timeout,
    /// An answer that is an error (a gRPC status, an undecodable or unknown
    /// verdict).
    Error,
    /// The limiter could not be reached, or no call could be made.
    Unavailable,
}

impl FallbackCause {
    /// `timeout`, `error`, `unavailable` (stats, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackCause::Timeout => "timeout",
            FallbackCause::Error => "error",
            FallbackCause::Unavailable => "unavailable",
        }
    }
}

/// What to do with a mesh-scoped stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshDecision {
    /// The limiter admitted it: it holds a mesh-wide slot until it ends.
    Admit,
    /// The limiter refused it: answer exactly as a local refusal would.
    Refuse(Refusal),
    /// No usable answer: apply the policy's fallback, counted by cause.
    Fallback(FallbackCause, MeshFallback),
}

/// Milliseconds as whole seconds, rounded up, at least 1.
fn ceil_secs_ms(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1000).max(1)).unwrap_or(u32::MAX)
}

/// Decides a mesh-scoped stream from how its Acquire call ended.
///
/// Envoy ends a call whose own timeout fired with UNAVAILABLE (its local 504
/// mapped to gRPC), like an unreachable cluster. Its timers run on the event
/// loop's cached time, so on a busy worker the timeout fires up to a loop
/// iteration early by the filter's clock: a failure after three quarters of
/// the policy's timeout is therefore taken for the timeout whatever its
/// status, while an unreachable limiter fails at once.
pub fn decide(settings: &MeshSettings, outcome: CallOutcome) -> MeshDecision {
    let fallback = |cause| MeshDecision::Fallback(cause, settings.fallback);
    match outcome {
        CallOutcome::Answered(answer) => match answer.verdict {
            AnswerVerdict::Admitted => MeshDecision::Admit,
            AnswerVerdict::RefusedRate => MeshDecision::Refuse(Refusal {
                reason: RefusalReason::Rate,
                retry_after_secs: ceil_secs_ms(answer.retry_after_ms),
                limit: answer.limit,
                reset_secs: ceil_secs_ms(answer.reset_ms),
            }),
            AnswerVerdict::RefusedConcurrency => MeshDecision::Refuse(Refusal {
                reason: RefusalReason::Concurrency,
                retry_after_secs: ceil_secs_ms(answer.retry_after_ms),
                limit: answer.limit,
                reset_secs: ceil_secs_ms(answer.reset_ms),
            }),
            AnswerVerdict::Unknown(_) => fallback(FallbackCause::Error),
        },
        CallOutcome::Failed {
            grpc_status,
            elapsed,
        } => {
            if grpc_status == GRPC_DEADLINE_EXCEEDED || elapsed >= settings.timeout * 3 / 4 {
                fallback(FallbackCause::Timeout)
            } else if grpc_status == GRPC_UNAVAILABLE {
                fallback(FallbackCause::Unavailable)
            } else {
                fallback(FallbackCause::Error)
            }
        }
        CallOutcome::Undecodable => fallback(FallbackCause::Error),
        CallOutcome::NotSent => fallback(FallbackCause::Unavailable),
    }
}

/// How an Acquire the instance sent ended, for its held counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireEnd {
    /// Admitted: the instance holds one more stream.
    Admitted,
    /// Refused: the limiter counted nothing for this instance.
    Refused,
    /// No answer seen (timeout, error, the stream went away first): the
    /// limiter may or may not have counted it, so the next Sync states the
    /// true count.
    Unknown,
}

/// One (policy, key) entry of a Sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub policy: String,
    pub key: String,
    pub open: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    /// Admitted streams not yet ended.
    open: u32,
    /// Acquires sent and not yet answered.
    pending: u32,
    /// The limiter's count may differ from `open`: tell it at the next Sync
    /// even when `open` is 0.
    stale: bool,
}

/// The streams one instance holds per (policy, key): what its Sync says.
///
/// A Sync states `open + pending` for each (policy, key): an Acquire in
/// flight may be counted by the limiter before or after the Sync, and
/// counting it errs towards refusing (one slot, until the next Sync) rather
/// than towards admitting beyond the cap. A (policy, key) whose count fell to
/// 0, or whose Acquire went unanswered, is sent once more (with its true
/// count, possibly 0), then forgotten.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldStreams {
    entries: BTreeMap<(String, String), Held>,
}

impl HeldStreams {
    /// An Acquire for (policy, key) was sent.
    pub fn acquire_sent(&mut self, policy: &str, key: &str) {
        let held = self
            .entries
            .entry((policy.to_owned(), key.to_owned()))
            .or_default();
        held.pending = held.pending.saturating_add(1);
    }

    /// An Acquire sent for (policy, key) ended so.
    pub fn acquire_ended(&mut self, policy: &str, key: &str, end: AcquireEnd) {
        let held = self
            .entries
            .entry((policy.to_owned(), key.to_owned()))
            .or_default();
        held.pending = held.pending.saturating_sub(1);
        match end {
            AcquireEnd::Admitted => held.open = held.open.saturating_add(1),
            AcquireEnd::Refused => {}
            AcquireEnd::Unknown => held.stale = true,
        }
    }

    /// A stream admitted by the limiter ended.
    pub fn released(&mut self, policy: &str, key: &str) {
        let held = self
            .entries
            .entry((policy.to_owned(), key.to_owned()))
            .or_default();
        held.open = held.open.saturating_sub(1);
        if held.open == 0 {
            held.stale = true;
        }
    }

    /// Streams held now for (policy, key).
    pub fn open(&self, policy: &str, key: &str) -> u32 {
        self.entries
            .get(&(policy.to_owned(), key.to_owned()))
            .map_or(0, |held| held.open)
    }

    /// Whether there is anything to tell the limiter.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The holdings of a Sync sent now; forgets the entries it reports at 0.
    pub fn sync(&mut self) -> Vec<Holding> {
        let mut out = Vec::with_capacity(self.entries.len());
        self.entries.retain(|(policy, key), held| {
            let count = held.open.saturating_add(held.pending);
            if count > 0 || held.stale {
                out.push(Holding {
                    policy: policy.clone(),
                    key: key.clone(),
                    open: count,
                });
            }
            held.stale = false;
            count > 0
        });
        out
    }
}

/// The Sync period until the limiter has said its lease.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(5);
/// The shortest Sync period, whatever the lease.
pub const MIN_SYNC_PERIOD: Duration = Duration::from_millis(100);

/// How long a Release is taken to be on its way to the limiter.
pub const RELEASE_SETTLE: Duration = Duration::from_millis(200);

/// When an instance sends its Sync: every third of the lease the limiter
/// last said ([`DEFAULT_SYNC_PERIOD`] until it said one), so two Syncs can be
/// lost before a live instance's slots expire.
///
/// A Sync states counts after the Releases the instance sent; one that the
/// limiter applies before such a Release would have that Release taken off
/// once more. So a due Sync waits while a Release was sent within
/// [`RELEASE_SETTLE`], for at most half a period (then it goes anyway: a
/// stream of Releases must not starve the lease).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncSchedule {
    lease: Option<Duration>,
    next_at_nanos: Option<u64>,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl SyncSchedule {
    /// The limiter said its lease (0 is ignored). A shorter lease than the
    /// one scheduled for brings the next Sync forward.
    pub fn lease_said(&mut self, lease_ms: u64, now_nanos: u64) {
        if lease_ms == 0 {
            return;
        }
        let lease = Duration::from_millis(lease_ms);
        if self.lease == Some(lease) {
            return;
        }
        self.lease = Some(lease);
        let sooner = now_nanos.saturating_add(nanos(self.period()));
        if self.next_at_nanos.is_none_or(|at| at > sooner) {
            self.next_at_nanos = Some(sooner);
        }
    }

    /// The lease the limiter last said.
    pub fn lease(&self) -> Option<Duration> {
        self.lease
    }

    /// A third of the lease, at least [`MIN_SYNC_PERIOD`].
    pub fn period(&self) -> Duration {
        self.lease
            .map_or(DEFAULT_SYNC_PERIOD, |lease| lease / 3)
            .max(MIN_SYNC_PERIOD)
    }

    /// Whether a Sync is due at `now`, the instance's last Release having
    /// been sent at `last_release` (if any); if so, schedules the next one.
    /// The first call only starts the clock.
    pub fn due(&mut self, now_nanos: u64, last_release: Option<u64>) -> bool {
        match self.next_at_nanos {
            Some(at) if now_nanos < at => false,
            Some(at) => {
                let settling = last_release
                    .is_some_and(|sent| now_nanos.saturating_sub(sent) < nanos(RELEASE_SETTLE));
                let overdue = now_nanos.saturating_sub(at) >= nanos(self.period() / 2);
                if settling && !overdue {
                    return false;
                }
                self.next_at_nanos = Some(now_nanos.saturating_add(nanos(self.period())));
                true
            }
            None => {
                self.next_at_nanos = Some(now_nanos.saturating_add(nanos(self.period())));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
