//! Process-wide tracing for `mintgate serve`: logs on stderr (text or JSON, filtered by
//! `RUST_LOG`, default `info`) and, when `[telemetry] otlp_endpoint` is set, the same spans
//! exported over OTLP/gRPC — one trace per RPC, named after it, carrying `request_id`, `caller`
//! and the lifecycle events committed inside it.

use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint: {0}")]
    Otlp(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// The installed tracing; [`Tracing::shutdown`] flushes spans not yet exported.
#[derive(Debug)]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Installs the global subscriber. Must run inside the Tokio runtime when `otlp_endpoint`
    /// is set: the exporter's gRPC channel lives on it. Spans are batched and sent in the
    /// background; a collector that is down costs dropped spans, never a stalled call.
    pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Self, TelemetryError> {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let logs = match format {
            LogFormat::Text => logs.boxed(),
            LogFormat::Json => logs.json().boxed(),
        };
        let provider = otlp_endpoint
            .map(|endpoint| {
                let exporter = SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .map_err(TelemetryError::Otlp)?;
                Ok(SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name("mintgate").build())
                    .build())
            })
            .transpose()?;
        let spans = provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(env!("CARGO_PKG_NAME"))));
        tracing_subscriber::registry()
            .with(filter)
            .with(logs)
            .with(spans)
            .try_init()
            .map_err(TelemetryError::AlreadyInstalled)?;
        Ok(Self { provider })
    }

    /// Exports what is still buffered and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The provider's shutdown blocks until its worker thread has flushed.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            eprintln!("mintgate: flushing OTLP spans: {e}");
        }
    }
}
