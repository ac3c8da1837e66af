use sidestream_telemetry::testing::{capture, CapturedSpan};

use super::*;

fn report(changed: bool) -> ApplyReport {
    ApplyReport {
        changed,
        ..ApplyReport::default()
    }
}

/// One change: validated at `revision`, published as `version` to `streams`.
fn change(traces: &RevisionTraces, revision: i64, version: &str, streams: &[u64]) {
    let validate = traces.validating();
    traces.validated(&validate, revision, &report(true), true);
    drop(validate);
    traces.published(version, revision, streams.iter().copied());
}

fn revision<'a>(spans: &'a [CapturedSpan], version: &str) -> &'a CapturedSpan {
    spans
        .iter()
        .find(|s| s.name == "config.revision" && s.attribute("version") == Some(version))
        .unwrap_or_else(|| panic!("no config.revision for {version}: {spans:#?}"))
}

#[test]
fn every_answer_converges_the_change_with_an_event_per_data_plane() {
    let ((), spans) = capture(|| {
        let traces = RevisionTraces::default();
        change(&traces, 7, "7-a", &[1, 2, 3]);
        traces.answered(
            "7-a",
            1,
            "push-1",
            Answer::Ack {
                convergence_ms: Some(4.5),
            },
        );
        traces.answered("7-a", 2, "push-2", Answer::Nack { error: "bad" });
        // Someone else's version, or a stream never asked: no effect on 7-a.
        traces.answered(
            "6-z",
            3,
            "push-3",
            Answer::Ack {
                convergence_ms: None,
            },
        );
        traces.disconnected(99);
        traces.disconnected(3);
    });
    let trace = revision(&spans, "7-a");
    assert_eq!(trace.parent_span_id, "0000000000000000");
    assert_eq!(trace.attribute("revision"), Some("7"));
    assert_eq!(trace.attribute("outcome"), Some("converged"));
    assert_eq!(trace.attribute("data_planes"), Some("3"));
    assert_eq!(trace.attribute("acks"), Some("1"));
    assert_eq!(trace.attribute("nacks"), Some("1"));
    assert_eq!(trace.attribute("disconnected"), Some("1"));
    assert_eq!(trace.attribute("unanswered"), Some("0"));
    let events: Vec<_> = trace
        .events
        .iter()
        .map(|(name, a)| (name.as_str(), a.get("node").cloned().unwrap_or_default()))
        .collect();
    assert_eq!(
        events,
        [("ack", "push-1".to_owned()), ("nack", "push-2".to_owned())]
    );
    assert_eq!(
        trace.events[0].1.get("convergence_ms").map(String::as_str),
        Some("4.5")
    );
    assert_eq!(
        trace.events[1].1.get("error").map(String::as_str),
        Some("bad")
    );
    let validate = spans.iter().find(|s| s.name == "validate").unwrap();
    assert_eq!(validate.parent_span_id, trace.span_id);
    assert_eq!(validate.trace_id, trace.trace_id);
    assert_eq!(validate.attribute("changed"), Some("true"));
}

#[test]
fn a_newer_snapshot_supersedes_one_still_waiting_for_answers() {
    let ((), spans) = capture(|| {
        let traces = RevisionTraces::default();
        change(&traces, 7, "7-a", &[1, 2]);
        traces.answered(
            "7-a",
            1,
            "push-1",
            Answer::Ack {
                convergence_ms: None,
            },
        );
        change(&traces, 8, "8-b", &[1, 2]);
        // A late answer to the superseded version is not counted anywhere.
        traces.answered(
            "7-a",
            2,
            "push-2",
            Answer::Ack {
                convergence_ms: None,
            },
        );
        traces.answered(
            "8-b",
            1,
            "push-1",
            Answer::Ack {
                convergence_ms: None,
            },
        );
        traces.answered(
            "8-b",
            2,
            "push-2",
            Answer::Ack {
                convergence_ms: None,
            },
        );
    });
    let first = revision(&spans, "7-a");
    assert_eq!(first.attribute("outcome"), Some("superseded"));
    assert_eq!(first.attribute("acks"), Some("1"));
    assert_eq!(first.attribute("unanswered"), Some("1"));
    let second = revision(&spans, "8-b");
    assert_eq!(second.attribute("outcome"), Some("converged"));
    assert_eq!(second.attribute("acks"), Some("2"));
    assert_ne!(first.trace_id, second.trace_id);
}

#[test]
fn changes_without_a_snapshot_or_without_data_planes_end_at_once() {
    let ((), spans) = capture(|| {
        let traces = RevisionTraces::default();
        // Validated, nothing to publish (a rejected value, say).
        let validate = traces.validating();
        traces.validated(&validate, 5, &report(false), false);
        drop(validate);
        // Published content equal to the current snapshot's.
        let validate = traces.validating();
        traces.validated(&validate, 6, &report(true), true);
        drop(validate);
        traces.unchanged();
        // Nobody connected.
        change(&traces, 9, "9-c", &[]);
    });
    let outcomes: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "config.revision")
        .map(|s| (s.attribute("revision"), s.attribute("outcome")))
        .collect();
    assert_eq!(
        outcomes,
        [
            (Some("5"), Some("unchanged")),
            (Some("6"), Some("unchanged")),
            (Some("9"), Some("no-data-planes")),
        ]
    );
    // Debounced batches share one change: two validations, one revision.
    let ((), spans) = capture(|| {
        let traces = RevisionTraces::default();
        for revision in [10, 11] {
            let validate = traces.validating();
            traces.validated(&validate, revision, &report(true), true);
        }
        traces.published("11-d", 11, []);
    });
    let trace = revision(&spans, "11-d");
    let validations: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "validate")
        .map(|s| (s.attribute("revision"), s.parent_span_id == trace.span_id))
        .collect();
    assert_eq!(validations, [(Some("10"), true), (Some("11"), true)]);
}
