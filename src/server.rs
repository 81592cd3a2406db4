//! Wires a [`Config`] into one running proxy: listeners, route, metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{self, DataPath};
use crate::route::RouteWriter;

/// Listeners bound before anything runs, so start-up errors (port in use) surface at once
/// and tests can bind port 0 and read the real addresses.
pub struct Bound {
    pub client: TcpListener,
    pub client_addr: SocketAddr,
}

impl Bound {
    pub async fn bind(cfg: &Config) -> Result<Bound, String> {
        let client = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (listen): {e}", cfg.listen))?;
        let client_addr = client.local_addr().map_err(|e| e.to_string())?;
        Ok(Bound { client, client_addr })
    }

    /// Runs the proxy until `shutdown` is cancelled and every session has drained.
    pub async fn run(self, cfg: Config, shutdown: CancellationToken) {
        let backends: Arc<[_]> = cfg.backends().into();
        let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
        let metrics = Arc::new(Metrics::new(&names));
        let route = RouteWriter::new("starting");
        route.set(Some(0), "");
        let (connect_failed, _passive) = mpsc::channel(64);
        let dp = Arc::new(DataPath {
            backends,
            route: route.subscribe(),
            proxy: cfg.proxy.clone(),
            hold_timeout: cfg.failover.hold_timeout,
            metrics,
            connect_failed,
        });
        tracing::info!(listen = %self.client_addr, "accepting PostgreSQL clients");
        proxy::run(self.client, dp, shutdown).await;
    }
}
