use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// Variables a test row sets.
type Vars = &'static [(&'static str, &'static str)];

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn env(pairs: Vars) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

#[test]
fn export_is_off_unless_an_endpoint_is_named() {
    let none = TraceArgs::default();
    let flag = TraceArgs {
        otlp_endpoint: Some("http://127.0.0.1:4317".into()),
    };
    let rows: [(&TraceArgs, Vars, Export); 8] = [
        (&none, &[], Export::Off),
        (&none, &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")], Export::Off),
        (&none, &[("OTEL_SERVICE_NAME", "push")], Export::Off),
        (
            &none,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")],
            Export::Otlp(None),
        ),
        (
            &none,
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")],
            Export::Otlp(None),
        ),
        (
            &flag,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4317")],
            Export::Otlp(Some("http://127.0.0.1:4317".into())),
        ),
        (&flag, &[("OTEL_SDK_DISABLED", "TRUE")], Export::Off),
        (
            &none,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ],
            Export::Off,
        ),
    ];
    for (args, vars, expected) in rows {
        assert_eq!(
            Export::choose(args, env(vars)),
            expected,
            "{args:?} {vars:?}"
        );
    }
}

#[test]
fn a_bad_endpoint_flag_is_named() {
    for endpoint in ["127.0.0.1:4317", "https://collector:4317"] {
        let error = provider("sidestream-test", Some(endpoint)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("OTLP endpoint '{endpoint}' must be an http:// URL (OTLP over plaintext gRPC, e.g. http://127.0.0.1:4317)")
        );
    }
}

/// A subscriber exporting to memory, as `Telemetry::init` would to OTLP.
fn with_exporter<T>(f: impl FnOnce() -> T) -> (T, Vec<opentelemetry_sdk::trace::SpanData>) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let result = tracing::subscriber::with_default(subscriber, f);
    provider.force_flush().unwrap();
    (result, exporter.get_finished_spans().unwrap())
}

#[test]
fn a_span_continues_the_incoming_trace_and_hands_on_its_own_context() {
    let ((continued, carried), spans) = with_exporter(|| {
        let span = tracing::info_span!("publish");
        let continued = continue_trace(&span, Some(PARENT), Some("vendor=1"));
        let carried = traceparent(&span);
        drop(span);
        (continued, carried)
    });
    assert!(continued);
    let carried = carried.unwrap();
    let [span] = spans.as_slice() else {
        panic!("one span: {spans:?}")
    };
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    assert_eq!(
        span.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert_eq!(
        carried,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            span.span_context.span_id()
        )
    );
}

#[test]
fn a_carried_context_parents_the_work_done_elsewhere() {
    let (_, spans) = with_exporter(|| {
        let publish = tracing::info_span!("publish");
        continue_trace(&publish, Some(PARENT), None);
        let carried = traceparent(&publish).unwrap();
        drop(publish);
        // Another task, no tracing parent: only the carried context links them.
        let deliver = tracing::info_span!(parent: None, "deliver");
        assert!(continue_trace(&deliver, Some(&carried), None));
    });
    let publish = spans.iter().find(|s| s.name == "publish").unwrap();
    let deliver = spans.iter().find(|s| s.name == "deliver").unwrap();
    assert_eq!(
        deliver.span_context.trace_id(),
        publish.span_context.trace_id()
    );
    assert_eq!(deliver.parent_span_id, publish.span_context.span_id());
}

#[test]
fn unusable_parents_are_ignored() {
    let (results, spans) = with_exporter(|| {
        [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        ]
        .map(|parent| {
            let span = tracing::info_span!("request");
            continue_trace(&span, parent, None)
        })
    });
    assert_eq!(results, [false; 4]);
    // Each became a root of a new trace instead.
    assert!(spans.iter().all(|s| s.parent_span_id == SpanId::INVALID));
}

#[test]
fn without_export_nothing_is_continued_or_carried() {
    let subscriber = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer());
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("publish");
        assert!(!continue_trace(&span, Some(PARENT), None));
        assert_eq!(traceparent(&span), None);
    });
}

#[test]
fn the_service_is_named_after_the_daemon_unless_configured() {
    // OTEL_SERVICE_NAME is unset in the test environment.
    if std::env::var_os("OTEL_SERVICE_NAME").is_none()
        && std::env::var_os("OTEL_RESOURCE_ATTRIBUTES").is_none()
    {
        let resource = resource("sidestream-push");
        assert_eq!(
            resource
                .get(&opentelemetry::Key::from_static_str("service.name"))
                .map(|v| v.as_str().into_owned()),
            Some("sidestream-push".to_owned())
        );
    }
}
