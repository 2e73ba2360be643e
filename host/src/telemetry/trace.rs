//! Traces: every call is a span (`tracing`), exported over OTLP through
//! `tracing-opentelemetry` when `[telemetry] otlp_endpoint` is set.
//!
//! A call's span joins the caller's W3C trace context when it sent one
//! (the `traceparent` header, or the envelope field); a nested call's span
//! is a child of its caller's, and a subscription's lasts until it ends.
//! Guest log lines, written while the span is current, are its events.
//!
//! Spans are at `DEBUG` under the target [`TARGET`], which the log output's
//! default filter leaves out: without an exporter a span is a disabled
//! callsite, one cached check per call.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use serde::Deserialize;
use tracing::Span;
use tracing::level_filters::LevelFilter;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use crate::call::{CallRequest, TraceParent, cut};

/// The target of call spans.
pub const TARGET: &str = "opbox::trace";

/// The target of guest log lines, which become events of their call's span.
const GUEST_LOG: &str = "opbox::capabilities::log";

/// `[telemetry]`: metrics, and where traces go.
///
/// | field | default |
/// |---|---|
/// | `metrics` | on: calls are counted and `/metrics` serves them |
/// | `otlp_endpoint` | none: no traces are exported |
/// | `service_name` | `opbox` |
/// | `sample_ratio` | 1.0: every trace a caller did not decide on is kept |
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Whether calls are counted for `/metrics`; off, the route answers
    /// `NOT_FOUND`.
    pub metrics: bool,
    /// An OTLP/HTTP collector's base URL (`http://127.0.0.1:4318`); spans
    /// are posted to its `/v1/traces` as protobuf, without TLS.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` spans are exported under.
    pub service_name: String,
    /// The share of new traces recorded and exported, from 0 to 1, chosen
    /// by trace id. A call that joins a caller's trace follows the
    /// caller's `sampled` flag instead.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            otlp_endpoint: None,
            service_name: "opbox".into(),
            sample_ratio: 1.0,
        }
    }
}

/// Spans kept for export at most; more are dropped (and counted by the
/// exporter) rather than held.
const MAX_QUEUED_SPANS: usize = 8192;

/// How often queued spans are sent.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to `{endpoint}`: {reason}")]
pub struct ExportError {
    endpoint: String,
    reason: String,
}

/// Spans on their way to an OTLP collector: a batch processor on a thread
/// of its own, which sends every second and drops spans past 8,192 waiting
/// rather than hold them.
#[derive(Debug)]
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Starts exporting to `config.otlp_endpoint`; `None` when none is set.
    /// Call it outside the async runtime: the exporter's HTTP client runs
    /// its own.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Self>, ExportError> {
        let Some(endpoint) = config.otlp_endpoint.as_deref() else {
            return Ok(None);
        };
        let error = |reason: String| ExportError {
            endpoint: endpoint.to_owned(),
            reason,
        };
        if !endpoint.starts_with("http://") {
            return Err(error(
                "the endpoint must be an http:// URL: the exporter speaks no TLS, so \
                 run the collector (or a forwarding one) on this host or a private network"
                    .into(),
            ));
        }
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            return Err(error("`sample_ratio` is not between 0 and 1".into()));
        }
        let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let client = reqwest::blocking::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| error(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(traces)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| error(e.to_string()))?;
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUED_SPANS)
            .with_scheduled_delay(EXPORT_EVERY)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batches)
            .build();
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Some(Self { provider }))
    }

    /// The layer that turns call spans, and guest log lines within them,
    /// into exported spans and span events; nothing else reaches it.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let tracer = self.provider.tracer("opbox");
        let only = Targets::new()
            .with_target(TARGET, LevelFilter::TRACE)
            .with_target(GUEST_LOG, LevelFilter::TRACE);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            // Nothing in a call reads OpenTelemetry's own current context:
            // spans find their parents through `tracing`, so entering one
            // (at every poll of a call) need not activate its context.
            .with_context_activation(false)
            .with_filter(only)
    }

    /// Sends what is queued and stops. Call it outside the async runtime.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("traces not all exported at shutdown: {e}");
        }
    }
}

/// The span of `request`: a child of the caller's trace when it sent one,
/// else of the span current where it is made (a nested call's caller's).
pub fn call_span(request: &CallRequest) -> Span {
    let operation = request
        .operation
        .strip_prefix('/')
        .unwrap_or(&request.operation);
    let span = tracing::debug_span!(
        target: TARGET,
        "call",
        otel.name = cut(operation, 256),
        opbox.request_id = &*request.request_id,
        opbox.tenant = request.identity.tenant.as_str(),
        opbox.transport = request.origin.label(),
        opbox.code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let (false, Some(parent)) = (span.is_disabled(), &request.trace) {
        let context = TraceContextPropagator::new().extract(&Carrier(parent));
        // Only fails for a span already started, which this one is not.
        let _ = span.set_parent(context);
    }
    span
}

/// Records how the call ended on its span: `code` is `ok` or the error's.
pub fn record_outcome(span: &Span, code: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("opbox.code", code);
    span.record(
        "otel.status_code",
        if code == "ok" { "OK" } else { "ERROR" },
    );
}

/// `span`'s W3C `traceparent`, when it is exported.
pub fn traceparent(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// A caller's trace context as the W3C propagator reads it.
struct Carrier<'a>(&'a TraceParent);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.0.traceparent()),
            "tracestate" => self.0.tracestate(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Option<&str>, sample_ratio: f64) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: endpoint.map(Into::into),
            sample_ratio,
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn only_plain_http_endpoints_and_ratios_from_0_to_1_are_taken() {
        assert!(matches!(TraceExport::start(&config(None, 1.0)), Ok(None)));
        for endpoint in ["https://collector:4318", "collector:4318"] {
            let refused = TraceExport::start(&config(Some(endpoint), 1.0));
            assert!(refused.is_err(), "{endpoint}");
        }
        let local = Some("http://127.0.0.1:4318");
        assert!(TraceExport::start(&config(local, 1.5)).is_err());
        match TraceExport::start(&config(local, 0.5)) {
            Ok(Some(export)) => export.shutdown(),
            other => panic!("{other:?}"),
        }
    }
}
