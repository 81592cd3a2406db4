//! SIGHUP: reads the configuration again (file, environment, the flags the process started
//! with) and applies it to the running proxy.

use std::path::PathBuf;

use pgfailover::config::{process_env, Config, Overrides};
use pgfailover::server::Proxy;
use pgfailover::takeover::Inherited;

use super::logging::LogHandle;

/// Where a reload reads the configuration from again (the demo has none).
pub struct Source {
    /// The `--config` file, if any.
    pub file: Option<PathBuf>,
    /// The command line's flags: they still override the file and the environment.
    pub overrides: Overrides,
    /// Listening sockets from systemd, for the start.
    pub inherited: Inherited,
}

/// Reads the configuration again and applies it. `true`: a fresh process must take over. A
/// refusal is logged and counted here; the proxy runs on as it was.
pub async fn reload(proxy: &Proxy, src: &Source, file: Option<String>, logs: &LogHandle) -> bool {
    let refused = |why: String| {
        tracing::error!(error = %why, "configuration reload refused; still running on the previous configuration");
        proxy.metrics.config_reloads_error.increment(1);
    };
    let cfg = match Config::load(src.file.as_deref(), &process_env, &src.overrides) {
        Ok(c) => c,
        Err(e) => {
            refused(e.to_string());
            return false;
        }
    };
    // Reported again: a rotated secret file may have come with another mode.
    for w in super::check::warnings(&cfg) {
        tracing::warn!("{w}");
    }
    let log_cfg = cfg.clone();
    match proxy.reload(cfg, file).await {
        Ok(r) => {
            proxy.metrics.config_reloads_ok.increment(1);
            if r.logging {
                logs.apply(&log_cfg);
            }
            for key in &r.need_restart {
                tracing::warn!(key, "changed in the file, but takes effect only after a restart or a takeover (SIGUSR2)");
            }
            let digest = &r.digest;
            if r.handover {
                tracing::warn!(%digest, "configuration reloaded: the backends changed, so a fresh process takes over (sessions here drain)");
            } else {
                tracing::info!(%digest, "configuration reloaded");
            }
            r.handover
        }
        Err(e) => {
            refused(e.to_string());
            false
        }
    }
}
