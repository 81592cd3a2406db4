//! Logs to stderr: colours only on a terminal, JSON lines on request. The filter (RUST_LOG,
//! else `log_level`) was validated with the configuration. Both can be reloaded.

use pgfailover::config::{Config, LogFormat};

type Filtered = tracing_subscriber::layer::Layered<
    tracing_subscriber::reload::Layer<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
    tracing_subscriber::Registry,
>;
type FmtLayer = Box<dyn tracing_subscriber::Layer<Filtered> + Send + Sync>;

/// What a reload changes in the logging: the filter and the format.
pub struct LogHandle {
    /// Swaps the filter (`log_level`) in the installed subscriber.
    filter: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
    /// Swaps the output layer (`log_format`).
    format: tracing_subscriber::reload::Handle<FmtLayer, Filtered>,
}

fn log_filter(cfg: &Config) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&cfg.log_level)).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn log_format(format: LogFormat) -> FmtLayer {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
        LogFormat::Text => layer.boxed(),
    }
}

/// Installs the process's log subscriber (once, at the start).
pub fn init(cfg: &Config) -> LogHandle {
    use tracing_subscriber::prelude::*;
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(log_filter(cfg));
    let (format, format_handle) = tracing_subscriber::reload::Layer::new(log_format(cfg.log_format));
    tracing_subscriber::registry().with(filter).with(format).init();
    LogHandle { filter: filter_handle, format: format_handle }
}

impl LogHandle {
    /// Applies a reloaded configuration's `log_level` and `log_format`.
    pub fn apply(&self, cfg: &Config) {
        if std::env::var_os("RUST_LOG").is_some() {
            tracing::info!("RUST_LOG is set: it overrides log_level");
        }
        let _ = self.filter.reload(log_filter(cfg));
        let _ = self.format.reload(log_format(cfg.log_format));
    }
}
