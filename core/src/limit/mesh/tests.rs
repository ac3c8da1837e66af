use std::time::Duration;

use super::*;
use crate::config::{MeshFallback, MeshSettings};
use crate::limit::{Refusal, RefusalReason};

fn settings(fallback: MeshFallback) -> MeshSettings {
    MeshSettings {
        fallback,
        timeout: Duration::from_millis(50),
    }
}

fn answer(verdict: i32, retry_after_ms: u64, reset_ms: u64, limit: u32) -> CallOutcome {
    CallOutcome::Answered(LimiterAnswer {
        verdict: AnswerVerdict::from_proto(verdict),
        retry_after_ms,
        reset_ms,
        limit,
        lease_ms: 15_000,
    })
}

#[test]
fn answers_decide_like_the_local_limiter() {
    let s = settings(MeshFallback::Local);
    assert_eq!(decide(&s, answer(1, 0, 0, 20)), MeshDecision::Admit);
    assert_eq!(
        decide(&s, answer(2, 200, 4_001, 5)),
        MeshDecision::Refuse(Refusal {
            reason: RefusalReason::Rate,
            retry_after_secs: 1,
            limit: 5,
            reset_secs: 5,
        })
    );
    assert_eq!(
        decide(&s, answer(3, 1000, 1000, 20)),
        MeshDecision::Refuse(Refusal {
            reason: RefusalReason::Concurrency,
            retry_after_secs: 1,
            limit: 20,
            reset_secs: 1,
        })
    );
    // Zero or absurd numbers still give a valid header (at least 1 s).
    assert_eq!(
        decide(&s, answer(2, 0, u64::MAX, 0)),
        MeshDecision::Refuse(Refusal {
            reason: RefusalReason::Rate,
            retry_after_secs: 1,
            limit: 0,
            reset_secs: u32::MAX,
        })
    );
}

#[test]
fn no_usable_answer_applies_the_fallback_by_cause() {
    for fallback in [
        MeshFallback::Local,
        MeshFallback::Refuse,
        MeshFallback::Admit,
    ] {
        let s = settings(fallback);
        let early = Duration::from_millis(3);
        // Envoy's timer runs on loop-cached time: it may fire a little early.
        let late = Duration::from_millis(38);
        for (outcome, cause) in [
            (answer(0, 0, 0, 0), FallbackCause::Error),
            (answer(9, 0, 0, 0), FallbackCause::Error),
            (CallOutcome::Undecodable, FallbackCause::Error),
            (CallOutcome::NotSent, FallbackCause::Unavailable),
            (
                CallOutcome::Failed {
                    grpc_status: GRPC_UNAVAILABLE,
                    elapsed: early,
                },
                FallbackCause::Unavailable,
            ),
            // Envoy's own timeout arrives as UNAVAILABLE, at the timeout.
            (
                CallOutcome::Failed {
                    grpc_status: GRPC_UNAVAILABLE,
                    elapsed: late,
                },
                FallbackCause::Timeout,
            ),
            (
                CallOutcome::Failed {
                    grpc_status: GRPC_DEADLINE_EXCEEDED,
                    elapsed: early,
                },
                FallbackCause::Timeout,
            ),
            (
                CallOutcome::Failed {
                    grpc_status: 3,
                    elapsed: early,
                },
                FallbackCause::Error,
            ),
            (
                CallOutcome::Failed {
                    grpc_status: 13,
                    elapsed: early,
                },
                FallbackCause::Error,
            ),
        ] {
            assert_eq!(
                decide(&s, outcome),
                MeshDecision::Fallback(cause, fallback),
                "{outcome:?}"
            );
        }
    }
}

#[test]
fn sync_reports_open_and_pending_and_zeros_once() {
    let mut held = HeldStreams::default();
    assert!(held.sync().is_empty());
    held.acquire_sent("p", "h:a");
    held.acquire_sent("p", "h:a");
    held.acquire_sent("p", "h:b");
    // In flight counts: the limiter may already have counted them.
    assert_eq!(
        held.sync(),
        [
            Holding {
                policy: "p".into(),
                key: "h:a".into(),
                open: 2
            },
            Holding {
                policy: "p".into(),
                key: "h:b".into(),
                open: 1
            },
        ]
    );
    held.acquire_ended("p", "h:a", AcquireEnd::Admitted);
    held.acquire_ended("p", "h:a", AcquireEnd::Admitted);
    held.acquire_ended("p", "h:b", AcquireEnd::Refused);
    assert_eq!(held.open("p", "h:a"), 2);
    // A refused key was never held: nothing to say about it.
    assert_eq!(
        held.sync(),
        [Holding {
            policy: "p".into(),
            key: "h:a".into(),
            open: 2
        }]
    );
    held.released("p", "h:a");
    held.released("p", "h:a");
    // Dropped to zero: said once, then forgotten.
    assert_eq!(
        held.sync(),
        [Holding {
            policy: "p".into(),
            key: "h:a".into(),
            open: 0
        }]
    );
    assert!(held.sync().is_empty());
    assert!(held.is_empty());
}

#[test]
fn an_unanswered_acquire_is_repaired_by_the_next_sync() {
    let mut held = HeldStreams::default();
    held.acquire_sent("p", "k");
    held.acquire_ended("p", "k", AcquireEnd::Unknown);
    assert_eq!(
        held.sync(),
        [Holding {
            policy: "p".into(),
            key: "k".into(),
            open: 0
        }]
    );
    assert!(held.is_empty());
    // A release never goes below zero.
    held.released("p", "k");
    assert_eq!(held.open("p", "k"), 0);
}

#[test]
fn a_sync_waits_for_a_release_on_its_way_but_not_for_ever() {
    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;
    let mut schedule = SyncSchedule::default();
    schedule.lease_said(3_000, 0);
    assert!(!schedule.due(0, None));
    // Due at 1 s; a Release sent 50 ms before: wait for it.
    assert!(!schedule.due(S, Some(S - 50 * MS)));
    assert!(!schedule.due(S + 100 * MS, Some(S - 50 * MS)));
    assert!(schedule.due(S + 150 * MS, Some(S - 50 * MS)), "settled");
    // Releases all the time: at most half a period late.
    let next = S + 150 * MS + S;
    assert!(!schedule.due(next, Some(next)));
    assert!(!schedule.due(next + 400 * MS, Some(next + 400 * MS)));
    assert!(
        schedule.due(next + 500 * MS, Some(next + 500 * MS)),
        "overdue"
    );
}

#[test]
fn syncs_come_every_third_of_the_lease() {
    const S: u64 = 1_000_000_000;
    let mut schedule = SyncSchedule::default();
    assert_eq!(schedule.period(), DEFAULT_SYNC_PERIOD);
    assert!(
        !schedule.due(100 * S, None),
        "the first tick starts the clock"
    );
    assert!(!schedule.due(104 * S, None));
    assert!(schedule.due(105 * S, None));
    assert!(!schedule.due(106 * S, None));
    // The limiter says 3 s: the next Sync comes forward to a second from now.
    schedule.lease_said(3_000, 106 * S);
    assert_eq!(schedule.period(), Duration::from_secs(1));
    assert!(!schedule.due(106 * S + S / 2, None));
    assert!(schedule.due(107 * S, None));
    assert!(schedule.due(108 * S, None));
    // 0 is not a lease; a tiny lease is floored.
    schedule.lease_said(0, 108 * S);
    assert_eq!(schedule.lease(), Some(Duration::from_secs(3)));
    schedule.lease_said(1, 108 * S);
    assert_eq!(schedule.period(), MIN_SYNC_PERIOD);
}
