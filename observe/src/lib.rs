//! Logs and traces for both binaries.
//!
//! Logs are `tracing` events written to stderr, as text or JSON, filtered by
//! `SHEPHERD_LOG`. Traces are OpenTelemetry spans exported over OTLP/gRPC,
//! configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`, ...). With no endpoint
//! set, or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`, tracing
//! is off: trace spans are disabled at their call sites and cost next to
//! nothing.
//!
//! Only spans with the target [`TARGET`] are exported, so library internals
//! (the exporter's own gRPC calls among them) never become traces, and those
//! spans never appear in the logs.

pub mod admin;
pub mod conns;
pub mod flags;

pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::{Status, TraceContextExt};

use std::io::IsTerminal;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio_util::sync::CancellationToken;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of the spans that are exported (`tracing::info_span!(target:
/// "shepherd::trace", ...)`).
pub const TARGET: &str = "shepherd::trace";

/// Flushes and stops the exporter when dropped; keep it until the end of
/// `main`, inside the Tokio runtime's lifetime.
#[must_use = "dropping the guard stops trace export"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    /// True when spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes the spans not yet sent and stops the exporter, off the async
    /// threads (the exporter's connection needs the runtime meanwhile).
    pub async fn finish(self) {
        if self.provider.is_some() {
            let _ = tokio::task::spawn_blocking(move || drop(self)).await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "trace export did not finish cleanly");
        }
    }
}

/// An error and its sources as one line ("a: b: c"), each said once:
/// libraries often repeat their own message in the error they wrap.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts
            .iter()
            .any(|p| p == &text || p.ends_with(&format!(": {text}")))
        {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// True when the environment asks for trace export.
pub fn tracing_configured(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber: logs to stderr (`json` or text) filtered
/// by `filter`, and trace export when the `OTEL_*` variables ask for it,
/// under `OTEL_SERVICE_NAME` or else `service`. Call it inside a Tokio
/// runtime (the exporter's connection runs on it).
pub fn init(filter: &str, json: bool, service: &'static str) -> Result<Guard, String> {
    let mut env = EnvFilter::try_new(filter).map_err(|e| format!("log filter {filter:?}: {e}"))?;
    // Trace spans are for the exporter; OpenTelemetry's own diagnostics are
    // worth a line only when something is wrong (unless asked for).
    let mut directives = vec![format!("{TARGET}=off")];
    if !filter.contains("opentelemetry") {
        directives.extend(
            ["opentelemetry", "opentelemetry_sdk", "opentelemetry_otlp"]
                .map(|t| format!("{t}=warn")),
        );
    }
    for d in directives {
        env = env.add_directive(d.parse().map_err(|e| format!("log filter {d:?}: {e}"))?);
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let provider = if tracing_configured(|k| std::env::var(k).ok()) {
        Some(provider(service)?)
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("shepherd"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(TARGET, Level::TRACE))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(env))
        .with(otel)
        .try_init()
        .map_err(|e| e.to_string())?;
    if provider.is_some() {
        tracing::info!("trace export on (OTLP/gRPC)");
    }
    Ok(Guard { provider })
}

fn provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("trace exporter: {e}"))?;
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let mut resource = Resource::builder();
    if !named {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` continue the W3C trace context (`traceparent`, `tracestate`)
/// of `headers`, if they carry one.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    // Fails only when the span was entered already; it was just made.
    let _ = span.set_parent(cx);
}

/// The OpenTelemetry context of `span`, started, when the span is exported
/// (tracing on and the sampler kept it); set its parent first. Attributes,
/// name and status are set on `cx.span()`, in one go where they can be.
pub fn recording(span: &tracing::Span) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::TraceContextExt;
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    cx.span().span_context().is_sampled().then_some(cx)
}

/// Writes `span`'s W3C trace context into `headers` (replacing any), so the
/// next hop continues the trace under `span`. Does nothing when tracing is
/// off: the headers pass as they are.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeadersMut(headers));
}

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the process");
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("SIGINT: shutting down");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("interrupt: shutting down");
    }
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);

    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|w| w as _)
        }
    }

    /// Each message of a chain is said once.
    #[test]
    fn error_chains_say_each_message_once() {
        let e = Wrap(
            "transport error",
            Some(Box::new(Wrap(
                "tcp connect error",
                Some(Box::new(Wrap(
                    "tcp connect error",
                    Some(Box::new(Wrap("Connection refused (os error 111)", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_string())
        }
    }

    #[test]
    fn tracing_is_on_only_with_an_endpoint_and_not_disabled() {
        assert!(!tracing_configured(env(&[])));
        assert!(!tracing_configured(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(tracing_configured(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4317"
        )])));
        assert!(tracing_configured(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4317"
        )])));
        assert!(!tracing_configured(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(!tracing_configured(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }

    #[test]
    fn a_disabled_span_leaves_headers_alone() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        let before = headers.clone();
        inject(&tracing::Span::none(), &mut headers);
        assert_eq!(headers, before);
    }
}
