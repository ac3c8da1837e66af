//! Spans recorded in memory for unit tests (feature `testing`): what the OTLP
//! exporter would send, without a collector.

use std::collections::BTreeMap;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

/// One finished span, ids in lowercase hex (the parent all zeros for a root).
#[derive(Debug, Clone)]
pub struct CapturedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
    /// Events in order: name and attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
}

impl CapturedSpan {
    /// An attribute's value as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn attributes(list: &[opentelemetry::KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

/// Runs `f` with spans exported to memory (and [`crate::exporting`] true from
/// then on, for the whole test process), and returns what it finished.
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<CapturedSpan>) {
    crate::EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let result = tracing::subscriber::with_default(subscriber, f);
    let _ = provider.force_flush();
    let spans = exporter
        .get_finished_spans()
        .unwrap_or_default()
        .into_iter()
        .map(|span| CapturedSpan {
            name: span.name.to_string(),
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_span_id: span.parent_span_id.to_string(),
            attributes: attributes(&span.attributes),
            events: span
                .events
                .iter()
                .map(|e| (e.name.to_string(), attributes(&e.attributes)))
                .collect(),
        })
        .collect();
    (result, spans)
}
