//! One trace per config change, from the etcd event to every data plane's
//! answer, exported over OTLP (nothing is built when spans are not exported).
//!
//! - `config.revision`: a root span opened when an etcd change is first seen
//!   (or the first full read starts) and closed when every data plane
//!   connected at publish time answered the snapshot it produced, when a newer
//!   snapshot replaces it, or at once when the change produced no new
//!   snapshot. Attributes: `revision` (etcd), `version` (the snapshot's),
//!   `outcome` (`converged`, `superseded`, `unchanged`, `no-data-planes`),
//!   `data_planes` (expected answers), `acks`, `nacks`, `unanswered` (when
//!   superseded), `disconnected` (streams that ended before answering).
//! - `validate`: a child span for each batch of etcd events validated into the
//!   config while the change is pending (debounced changes share one
//!   `config.revision`), with `revision`, `changed` and `rejections`.
//! - Events on `config.revision`, one per data plane's answer: `ack` (with
//!   `node`, `convergence_ms`) or `nack` (with `node`, `error`). Events, not
//!   spans: a thousand sidecars make a thousand events in one span, not a
//!   thousand spans.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use sidestream_telemetry::{add_event, exporting, Attribute};
use tracing::field::Empty;
use tracing::Span;

use crate::config_state::ApplyReport;

/// The traces of config changes in flight.
#[derive(Debug, Default)]
pub struct RevisionTraces {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// A change validated and not published yet.
    pending: Option<Span>,
    /// The last published snapshot, still waiting for answers.
    in_flight: Option<InFlight>,
}

#[derive(Debug)]
struct InFlight {
    version: String,
    span: Span,
    /// Config streams (by stream id) expected to answer.
    waiting: BTreeSet<u64>,
    data_planes: usize,
    acks: u64,
    nacks: u64,
    /// Expected data planes whose stream ended before they answered.
    disconnected: u64,
}

impl InFlight {
    fn end(self, outcome: &'static str) {
        self.span.record("outcome", outcome);
        self.span.record("data_planes", self.data_planes);
        self.span.record("acks", self.acks);
        self.span.record("nacks", self.nacks);
        self.span.record("unanswered", self.waiting.len());
        self.span.record("disconnected", self.disconnected);
    }
}

/// A data plane's answer to a snapshot.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// Applied; `convergence_ms` from the etcd event when it was propagated.
    Ack {
        convergence_ms: Option<f64>,
    },
    Nack {
        error: &'a str,
    },
}

impl RevisionTraces {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A `validate` span for one batch of etcd events, the child of the
    /// pending change's `config.revision` span (opened now if none is).
    pub fn validating(&self) -> Span {
        if !exporting() {
            return Span::none();
        }
        let mut inner = self.lock();
        let revision = inner.pending.get_or_insert_with(|| {
            tracing::info_span!(
                parent: None,
                "config.revision",
                revision = Empty,
                version = Empty,
                outcome = Empty,
                data_planes = Empty,
                acks = Empty,
                nacks = Empty,
                unanswered = Empty,
                disconnected = Empty,
            )
        });
        tracing::info_span!(
            parent: &*revision,
            "validate",
            revision = Empty,
            changed = Empty,
            rejections = Empty,
        )
    }

    /// Records what a batch did; when it scheduled no snapshot
    /// (`publishing` false) and none is pending, the change's trace ends.
    pub fn validated(
        &self,
        validate: &Span,
        revision: i64,
        report: &ApplyReport,
        publishing: bool,
    ) {
        if validate.is_disabled() {
            return;
        }
        validate.record("revision", revision);
        validate.record("changed", report.changed);
        validate.record("rejections", report.rejections.len());
        let mut inner = self.lock();
        if let Some(pending) = &inner.pending {
            pending.record("revision", revision);
        }
        if !publishing {
            if let Some(pending) = inner.pending.take() {
                pending.record("outcome", "unchanged");
            }
        }
    }

    /// The pending change produced no new snapshot (same content).
    pub fn unchanged(&self) {
        if let Some(pending) = self.lock().pending.take() {
            pending.record("outcome", "unchanged");
        }
    }

    /// The pending change was published as `version`; `streams` (config
    /// stream ids) are the data planes expected to answer. The previous
    /// snapshot's trace ends (superseded) if answers were still missing.
    pub fn published(&self, version: &str, revision: i64, streams: impl IntoIterator<Item = u64>) {
        let mut inner = self.lock();
        let Some(span) = inner.pending.take() else {
            return;
        };
        if let Some(previous) = inner.in_flight.take() {
            previous.end("superseded");
        }
        span.record("revision", revision);
        span.record("version", version);
        let waiting: BTreeSet<u64> = streams.into_iter().collect();
        let in_flight = InFlight {
            version: version.to_owned(),
            span,
            data_planes: waiting.len(),
            waiting,
            acks: 0,
            nacks: 0,
            disconnected: 0,
        };
        if in_flight.waiting.is_empty() {
            in_flight.end("no-data-planes");
        } else {
            inner.in_flight = Some(in_flight);
        }
    }

    /// Data plane `node` (config stream `stream`) answered `version`.
    pub fn answered(&self, version: &str, stream: u64, node: &str, answer: Answer<'_>) {
        let mut inner = self.lock();
        let Some(in_flight) = inner.in_flight.as_mut() else {
            return;
        };
        if in_flight.version != version {
            return;
        }
        match answer {
            Answer::Ack { convergence_ms } => {
                in_flight.acks += 1;
                let mut attributes = vec![Attribute::new("node", node.to_owned())];
                if let Some(ms) = convergence_ms {
                    attributes.push(Attribute::new("convergence_ms", ms));
                }
                add_event(&in_flight.span, "ack", attributes);
            }
            Answer::Nack { error } => {
                in_flight.nacks += 1;
                add_event(
                    &in_flight.span,
                    "nack",
                    vec![
                        Attribute::new("node", node.to_owned()),
                        Attribute::new("error", error.to_owned()),
                    ],
                );
            }
        }
        in_flight.waiting.remove(&stream);
        if in_flight.waiting.is_empty() {
            if let Some(done) = inner.in_flight.take() {
                done.end("converged");
            }
        }
    }

    /// Config stream `stream` ended: its answer will not come.
    pub fn disconnected(&self, stream: u64) {
        let mut inner = self.lock();
        let Some(in_flight) = inner.in_flight.as_mut() else {
            return;
        };
        if !in_flight.waiting.remove(&stream) {
            return;
        }
        in_flight.disconnected += 1;
        if in_flight.waiting.is_empty() {
            if let Some(done) = inner.in_flight.take() {
                done.end("converged");
            }
        }
    }
}

#[cfg(test)]
mod tests;
