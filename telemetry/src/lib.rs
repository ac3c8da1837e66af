//! Logs and traces for sidestream's daemons, set up in one place.
//!
//! [`Telemetry::init`] installs the `tracing` subscriber every daemon uses:
//! log lines on stderr (text or JSON, filtered by `RUST_LOG`, `info` by
//! default) and, when an OTLP endpoint is configured, an OpenTelemetry layer
//! that turns `tracing` spans into OpenTelemetry spans and exports them in
//! batches over OTLP/gRPC. Export is off unless `--otlp-endpoint`,
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names
//! a collector (and `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//! do not say otherwise). The OpenTelemetry SDK reads the other standard variables
//! itself: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the service
//! name defaults to the daemon's), `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`: a trace the
//! filter did not sample is not exported), `OTEL_BSP_*` (batching) and
//! `OTEL_EXPORTER_OTLP_TIMEOUT`/`_HEADERS`.
//!
//! Trace context crosses processes as W3C `traceparent`/`tracestate`, read
//! and written by OpenTelemetry's `TraceContextPropagator`:
//! [`continue_trace`] makes a span the child of an incoming context,
//! [`traceparent`] gives a span's own context to carry further (with a
//! message, to the node that delivers it). Without export both do nothing,
//! so callers need not check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The variables that turn export on (the SDK reads them for the endpoint too).
pub const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long exiting waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Log directives when `RUST_LOG` is unset: the SDK's own chatter only when
/// something is wrong.
const DEFAULT_LOG_FILTER: &str =
    "info,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Tracing flags every daemon takes (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TraceArgs {
    /// Export spans over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317. Without it, export is on only when
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is
    /// set; sampling follows OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// Set once export starts: code that would build spans only for export asks [`exporting`].
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans (spans that only matter in a trace,
/// such as one per delivered message, are not built otherwise).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Telemetry that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP endpoint '{endpoint}' must be an http:// URL (OTLP over plaintext gRPC, e.g. http://127.0.0.1:4317)")]
    Endpoint { endpoint: String },
    #[error("OTLP exporter for '{endpoint}': {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Where spans go, if anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    Off,
    /// To this endpoint (given by flag) or, for `None`, to the one the
    /// standard variables name.
    Otlp(Option<String>),
}

impl Export {
    /// The flag first, then the standard variables (`lookup` reads the
    /// environment); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
    /// turn export off whatever else says.
    pub fn choose(args: &TraceArgs, lookup: impl Fn(&str) -> Option<String>) -> Export {
        let disabled = lookup("OTEL_SDK_DISABLED")
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
            || lookup("OTEL_TRACES_EXPORTER")
                .is_some_and(|value| value.trim().eq_ignore_ascii_case("none"));
        if disabled {
            return Export::Off;
        }
        if let Some(endpoint) = args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
            return Export::Otlp(Some(endpoint.to_owned()));
        }
        if ENDPOINT_VARIABLES
            .iter()
            .any(|name| lookup(name).is_some_and(|value| !value.trim().is_empty()))
        {
            Export::Otlp(None)
        } else {
            Export::Off
        }
    }
}

/// The installed subscriber; [`Telemetry::shutdown`] flushes the spans not exported yet.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs logging and, when configured, span export for the daemon
    /// `service` (its default `service.name`). With export on this must run
    /// inside a tokio runtime (the gRPC channel lives there).
    pub fn init(
        service: &'static str,
        args: &TraceArgs,
        format: LogFormat,
    ) -> Result<Telemetry, TelemetryError> {
        let export = Export::choose(args, |name| std::env::var(name).ok());
        let provider = match &export {
            Export::Off => None,
            Export::Otlp(endpoint) => Some(provider(service, endpoint.as_deref())?),
        };
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
        let logs = match format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .fmt_fields(LogFields)
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .boxed(),
        };
        let spans = provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .with_threads(false)
                .with_location(false)
                .with_filter(LevelFilter::INFO)
                // The SDK's own events must not feed back into it.
                .with_filter(filter_fn(|meta| {
                    !meta.target().starts_with("opentelemetry")
                }))
        });
        tracing_subscriber::registry()
            .with(logs)
            .with(spans)
            .try_init()
            .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
        if let Export::Otlp(endpoint) = &export {
            EXPORTING.store(true, Ordering::Relaxed);
            let service = resource(service)
                .get(&opentelemetry::Key::from_static_str("service.name"))
                .map(|name| name.as_str().into_owned());
            tracing::info!(
                service,
                endpoint = endpoint.as_deref().unwrap_or("from OTEL_EXPORTER_OTLP_*"),
                "Exporting spans over OTLP"
            );
        }
        Ok(Telemetry { provider })
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter (blocking, at
    /// most a few seconds; call it from a blocking thread or after the
    /// servers stopped, with the runtime still up).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(%error, "Spans not exported at exit");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fields as the default text format writes them (the message bare, the rest
/// `name=value`), less the `otel.*` fields that only steer export.
#[derive(Debug, Default)]
struct LogFields;

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for LogFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = LogFieldVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct LogFieldVisitor<'writer> {
    writer: tracing_subscriber::fmt::format::Writer<'writer>,
    first: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for LogFieldVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("otel.") {
            return;
        }
        let space = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{space}{value:?}"),
            name => write!(self.writer, "{space}{name}={value:?}"),
        };
    }
}

fn provider(
    service: &'static str,
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        if !endpoint.starts_with("http://") {
            return Err(TelemetryError::Endpoint {
                endpoint: endpoint.to_owned(),
            });
        }
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build().map_err(|error| TelemetryError::Exporter {
        endpoint: endpoint.unwrap_or("from OTEL_EXPORTER_OTLP_*").to_owned(),
        reason: error.to_string(),
    })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(service))
        .build())
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named
/// after the daemon when those leave the service unnamed.
fn resource(service: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|name| name.as_str().starts_with("unknown_service"));
    if unnamed {
        Resource::builder()
            .with_attribute(KeyValue::new("service.name", service))
            .build()
    } else {
        detected
    }
}

/// Makes `span` (not yet entered) the child of the W3C context in
/// `traceparent`/`tracestate`, as the `TraceContextPropagator` reads them.
/// Returns whether it did (false without export or with no valid parent).
pub fn continue_trace(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> bool {
    let Some(traceparent) = traceparent else {
        return false;
    };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(tracestate) = tracestate {
        carrier.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if !parent.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(parent).is_ok()
}

/// `span`'s own W3C `traceparent`, to carry to work done on its behalf
/// elsewhere (`None` without export).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Marks `span`'s OpenTelemetry status as an error with `message`.
pub fn set_error(span: &tracing::Span, message: impl Into<String>) {
    span.set_status(opentelemetry::trace::Status::error(message.into()));
}

/// Sets an OpenTelemetry attribute on `span` (one not declared as a `tracing` field).
pub fn set_attribute(
    span: &tracing::Span,
    key: &'static str,
    value: impl Into<opentelemetry::Value>,
) {
    span.set_attribute(key, value);
}

/// Adds a timestamped event with attributes to `span` (for events counted in
/// thousands, where a `tracing` event per occurrence would also be a log line).
pub fn add_event(span: &tracing::Span, name: &'static str, attributes: Vec<KeyValue>) {
    span.add_event(name, attributes);
}

/// Attribute values for [`add_event`].
pub use opentelemetry::KeyValue as Attribute;

#[cfg(test)]
mod tests;

#[cfg(feature = "testing")]
pub mod testing;
