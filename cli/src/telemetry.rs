//! Logs and traces of the `fnmesh` binary.
//!
//! Logs go to stderr, readable by default and one JSON object per line with
//! `FNMESH_LOG_FORMAT=json`, filtered by `FNMESH_LOG` (an `EnvFilter`, default `info`).
//!
//! Traces are off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set (and `OTEL_SDK_DISABLED` is not `true`): then fnmesh's own spans (info level and
//! above, whatever `FNMESH_LOG` says) are exported over OTLP HTTP/protobuf in batches. The SDK
//! reads the other standard variables itself (`OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES`).
//! Without `OTEL_SERVICE_NAME` the service is named after the command: `fnmesh-gateway`,
//! `fnmesh-node`, `fnmesh` (`up`) or `fnmesh-cli`.
//!
//! [`Telemetry::shutdown`] flushes what is buffered under a deadline; `main` calls it once,
//! after the command returned (the single shutdown path).

use std::io::IsTerminal as _;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Log level filter.
pub const ENV_LOG: &str = "FNMESH_LOG";
/// `text` (default) or `json`.
pub const ENV_LOG_FORMAT: &str = "FNMESH_LOG_FORMAT";

/// The standard OpenTelemetry variables fnmesh looks at itself (the SDK reads more).
pub const OTEL_ENV_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
];

/// How long shutdown waits for the last spans to be exported.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `FNMESH_LOG_FORMAT` has an unknown value.
    #[error("invalid FNMESH_LOG_FORMAT {0:?}: expected text or json")]
    LogFormat(String),
    /// The OTLP exporter could not be built.
    #[error("setting up the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// What must be flushed at exit.
#[must_use = "call shutdown() at exit so the last spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter, waiting at most `deadline`.
    pub fn shutdown(self, deadline: Duration) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown_with_timeout(deadline) {
                eprintln!("warning: flushing traces at exit failed: {e}");
            }
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether the environment asks for traces.
pub fn traces_requested() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The resource: the SDK's (which reads `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`),
/// named `default_service` when neither names the service.
fn resource(default_service: &str) -> Resource {
    let named = env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder
            .with_service_name(default_service.to_owned())
            .build()
    }
}

fn tracer_provider(default_service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    // Endpoint, headers and timeout come from the standard variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(default_service))
        .build())
}

/// warp's own lines of every HTTP request ("processing request", "finished processing …"), at
/// `info`: the gateway logs one `request` line per request with method, path, status and
/// duration already, so these only doubled and tripled the log lines (and their formatting and
/// writes) of the hot path. Shown again when `FNMESH_LOG` names `warp` itself.
const QUIET_WARP: &str = "warp::filters::trace=warn";

/// The log filter of `FNMESH_LOG` (`info` when unset or invalid), with [`QUIET_WARP`] unless it
/// names `warp`.
fn log_filter(spec: Option<&str>) -> EnvFilter {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty());
    let filter = spec
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if spec.is_some_and(|s| s.contains("warp")) {
        return filter;
    }
    match QUIET_WARP.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// Installs the global subscriber: logs always, traces when the environment asks for them
/// (see the module docs). Call once, before the async runtime starts.
pub fn init(default_service: &str) -> Result<Telemetry, TelemetryError> {
    let json = match std::env::var(ENV_LOG_FORMAT) {
        Err(_) => false,
        Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("text") => false,
        Ok(v) if v.eq_ignore_ascii_case("json") => true,
        Ok(other) => return Err(TelemetryError::LogFormat(other)),
    };
    let filter = log_filter(std::env::var(ENV_LOG).ok().as_deref());
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // Colours only for a terminal: a log file or pipe gets plain text (and the hot path
        // stops paying for escape codes nobody sees).
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed()
    }
    .with_filter(filter);

    let provider = if traces_requested() {
        Some(tracer_provider(default_service)?)
    } else {
        None
    };
    // Only fnmesh's own spans: the exporter's HTTP client must not trace itself.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("fnmesh"))
            .with_filter(Targets::new().with_target("fnmesh", LevelFilter::INFO))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    if provider.is_some() {
        tracing::debug!(
            service.default_name = default_service,
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warps_request_lines_are_quiet_unless_asked_for() {
        for spec in [
            None,
            Some(""),
            Some("info"),
            Some("fnmesh_gateway=debug,info"),
        ] {
            let filter = log_filter(spec).to_string();
            assert!(filter.contains(QUIET_WARP), "{spec:?} gave {filter}");
        }
        let asked = log_filter(Some("info,warp=debug")).to_string();
        assert!(!asked.contains(QUIET_WARP), "{asked}");
        assert!(asked.contains("warp=debug"), "{asked}");
        // Unset, empty or invalid: `info`.
        assert!(log_filter(Some("not=a=filter"))
            .to_string()
            .contains("info"));
    }
}
