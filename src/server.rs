//! Wires a [`Config`] into one running proxy: listeners, monitor, data path, admin port.
//! Tests start it on port 0 and read the bound addresses; `main` adds signals.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminContext};
use crate::config::Config;
use crate::coord::Coordinator;
use crate::metrics::Metrics;
use crate::monitor::{self, history::History, MonitorHandle};
use crate::proxy::{self, datapath::Port, DataPath};
use crate::route::{ReadRouteWriter, RouteWriter};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen { addr: SocketAddr, key: &'static str, source: std::io::Error },
    #[error("state_dir {dir}: {source}")]
    StateDir { dir: String, source: std::io::Error },
}

/// A running proxy.
pub struct Proxy {
    pub client_addr: SocketAddr,
    /// The read-only port, when `listen_ro` is set.
    pub read_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub monitor: MonitorHandle,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Cancelled when the health monitor died: the proxy routes nothing and must exit.
    fatal: CancellationToken,
    done: Option<JoinHandle<()>>,
}

impl Drop for Proxy {
    /// Dropping the handle stops the proxy (sessions drain as on SIGTERM).
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Proxy {
    /// Binds the listeners and starts every task. Errors (port in use, unwritable
    /// state_dir) come back before anything runs.
    pub async fn start(cfg: Config) -> Result<Proxy, StartError> {
        let client = TcpListener::bind(cfg.listen).await.map_err(|source| StartError::Listen { addr: cfg.listen, key: "listen", source })?;
        let client_addr = client.local_addr().map_err(|source| StartError::Listen { addr: cfg.listen, key: "listen", source })?;
        let read = match cfg.listen_ro {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, key: "listen_ro", source })?),
            None => None,
        };
        let read_addr = match (&read, cfg.listen_ro) {
            (Some(l), Some(addr)) => Some(l.local_addr().map_err(|source| StartError::Listen { addr, key: "listen_ro", source })?),
            _ => None,
        };
        let admin = TcpListener::bind(cfg.admin_listen).await.map_err(|source| StartError::Listen { addr: cfg.admin_listen, key: "admin_listen", source })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Listen { addr: cfg.admin_listen, key: "admin_listen", source })?;
        let history = match &cfg.state_dir {
            Some(dir) => History::open(dir).map_err(|source| StartError::StateDir { dir: dir.display().to_string(), source })?,
            None => History::in_memory(),
        };
        let backends: Arc<[_]> = cfg.backends().into();
        let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
        let metrics = Arc::new(Metrics::new(&names));
        let route = RouteWriter::new("waiting for the first health checks");
        let read_route = ReadRouteWriter::default();
        let (connect_failed, passive) = mpsc::channel(64);
        let dp = Arc::new(DataPath {
            backends: backends.clone(),
            route: route.subscribe(),
            proxy: cfg.proxy.clone(),
            hold_timeout: cfg.failover.hold_timeout,
            metrics: metrics.clone(),
            connect_failed,
            read_route: read_route.subscribe(),
            read: cfg.read.clone(),
            read_turn: Default::default(),
        });
        let shutdown = CancellationToken::new();
        let fatal = CancellationToken::new();
        let tasks = TaskTracker::new();
        let life = monitor::Lifeline { shutdown: shutdown.clone(), fatal: fatal.clone() };
        let reads = cfg.listen_ro.map(|_| (dp.read_route.clone(), cfg.read.fallback));
        let (coordination, forwarded) = match &cfg.coordination {
            Some(c) => {
                let (events, events_rx) = mpsc::channel(256);
                let (requests, requests_rx) = mpsc::channel(64);
                let coord = Coordinator::spawn(c.clone(), events, requests, shutdown.clone(), &tasks);
                (Some((coord, events_rx)), Some(requests_rx))
            }
            None => (None, None),
        };
        let coord = coordination.as_ref().map(|(c, _)| c.clone());
        let monitor = monitor::spawn(&cfg, backends, (route, read_route), metrics.clone(), history, passive, life, coordination, &tasks);
        let admin_ctx = Arc::new(AdminContext {
            monitor: monitor.clone(),
            metrics: metrics.clone(),
            token: cfg.admin_token.clone(),
            started: std::time::Instant::now(),
            trigger_wait: cfg.failover.trigger_wait,
            check_wait: cfg.health.timeout * 2,
            reads,
            coord: coord.clone(),
            forward_wait: cfg.failover.trigger_wait * 2 + cfg.failover.promote_timeout + std::time::Duration::from_secs(5),
        });
        if let (Some(rx), Some(coord)) = (forwarded, coord) {
            tasks.spawn(admin::serve_forwarded(rx, coord, admin_ctx.clone(), shutdown.clone()));
        }
        tasks.spawn(admin::run(admin, admin_ctx, shutdown.clone()));
        if cfg.admin_token.is_none() {
            tracing::info!("no admin token configured: POST endpoints answer 403");
        }
        let ro = read_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
        tracing::info!(listen = %client_addr, listen_ro = %ro, admin = %admin_addr, backends = %names.join(", "), promote = %cfg.failover.promote, "pgfailover started");
        let stop = shutdown.clone();
        let mut ports = vec![(client, Port::Primary)];
        ports.extend(read.map(|l| (l, Port::Read)));
        let done = tokio::spawn(async move {
            proxy::listener::run_ports(ports, dp, stop).await;
            tasks.close();
            tasks.wait().await;
        });
        Ok(Proxy { client_addr, read_addr, admin_addr, monitor, metrics, shutdown, fatal, done: Some(done) })
    }

    /// Resolves if the health monitor dies (a bug): the route is already cleared and the
    /// process should stop and exit non-zero, so its supervisor starts a fresh one.
    pub async fn failed(&self) {
        self.fatal.cancelled().await
    }

    /// Stops accepting; sessions drain for the grace period.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every task has ended (after [`shutdown`](Self::shutdown)).
    pub async fn stopped(mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}
