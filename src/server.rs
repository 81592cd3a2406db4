//! Wires a [`Config`] into one running proxy: listeners (from [`crate::takeover`]), monitor,
//! coordinator, data path, admin port; and applies a reload. Tests start it on port 0 and
//! read the bound addresses; the binary adds signals.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminContext};
use crate::config::Config;
use crate::coord::Coordinator;
use crate::live::{LiveWriter, Loaded};
use crate::metrics::Metrics;
use crate::monitor::{self, history::History, MonitorHandle};
use crate::proxy::{self, datapath::Port, DataPath};
use crate::route::{ReadRouteWriter, RouteWriter};
use crate::takeover::{self, HandedOver, Inherited, TakeoverError};

mod reload;
pub use reload::{ReloadError, Reloaded};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listeners or the state directory (port in use, another process that does not hand
    /// over, a stop signal while waiting for one).
    #[error(transparent)]
    Takeover(#[from] TakeoverError),
    /// The data path's threads could not be started.
    #[error("cannot start the data path's threads: {0}")]
    Workers(std::io::Error),
    /// The history journal in the state directory.
    #[error("state_dir {dir}: {source}")]
    StateDir { dir: String, source: std::io::Error },
    /// etcd refused the configured user the access coordination needs.
    #[error(transparent)]
    Etcd(#[from] crate::coord::access::AccessError),
    /// A certificate or key named in `[tls]` does not load.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A running proxy.
pub struct Proxy {
    pub client_addr: SocketAddr,
    /// The read-only port, when `listen_ro` is set.
    pub read_addr: Option<SocketAddr>,
    /// The `[[read.listeners]]` ports, in configuration order.
    pub read_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub monitor: MonitorHandle,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Cancelled when the health monitor died: the proxy routes nothing and must exit.
    fatal: CancellationToken,
    /// Whether (and to whom) another process took over the listeners and the monitor.
    handed_over: HandedOver,
    done: Option<JoinHandle<()>>,
    /// The configuration in force, published to every part (see [`crate::live`]).
    live: LiveWriter,
    admin: Arc<AdminContext>,
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
        Proxy::start_with(cfg, None, Inherited::default(), CancellationToken::new()).await
    }

    /// As [`start`](Self::start); `file` is the configuration file, shown in the status.
    /// Listening sockets come from `inherited` (systemd's, read by `main` before anything
    /// else opened a descriptor) or, when another process runs on the same `state_dir`, from
    /// that process, which then hands over and exits. `stop` (SIGTERM meanwhile) ends a
    /// start that is still waiting for the running process, before that one is told to stop
    /// accepting; after that the start completes, and the caller stops the proxy it returns.
    pub async fn start_with(cfg: Config, file: Option<String>, inherited: Inherited, stop: CancellationToken) -> Result<Proxy, StartError> {
        // A configuration built in code has not folded [tls] into its backends yet.
        let mut cfg = cfg;
        cfg.apply_server_tls();
        // Before a takeover: a refusal must leave the running process serving.
        if let Some(c) = &cfg.coordination {
            crate::coord::access::check_at_start(c).await?;
        }
        // Before the listeners: a certificate that does not load leaves a running process serving.
        let loaded = Loaded::now(cfg.clone(), file)?;
        let (listeners, mut hold) = takeover::start(&cfg, inherited, &stop).await?;
        let takeover::Listeners { client, client_addr, read, reads, admin, admin_addr } = listeners;
        let (read, read_addr) = read.unzip();
        let read_addrs: Vec<SocketAddr> = reads.iter().map(|(_, a)| *a).collect();

        let backends: Arc<[_]> = cfg.backends().into();
        let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
        let metrics = Arc::new(Metrics::new(&names));
        let route = RouteWriter::new("waiting for the first health checks");
        let read_route = ReadRouteWriter::default();
        let (connect_failed, passive) = mpsc::channel(64);
        let live = LiveWriter::new(loaded);
        // The data path's pause: the monitor writes it (from the machine's decisions).
        let gate = Arc::new(crate::proxy::gate::Gate::default());
        let dp = Arc::new(DataPath {
            backends: backends.clone(),
            route: route.subscribe(),
            config: live.subscribe(),
            metrics: metrics.clone(),
            connect_failed,
            read_route: read_route.subscribe(),
            read_turn: Default::default(),
            gate: gate.clone(),
        });
        let shutdown = CancellationToken::new();
        let fatal = CancellationToken::new();
        let tasks = TaskTracker::new();
        // The monitor and the coordinator: a takeover waits for exactly these to end.
        let monitor_tasks = TaskTracker::new();

        // The data path first: after a takeover it accepts at once (the old process has
        // stopped), holding clients until this process's monitor routes.
        let stop = shutdown.clone();
        let mut ports = vec![(client, Port::Primary)];
        ports.extend(read.map(|l| (l, Port::Read)));
        ports.extend(reads.into_iter().enumerate().map(|(i, (l, _))| (l, Port::ReadAt(i))));
        // The read-only port's route, for the admin port's `/ready/ro`.
        let reads = (cfg.listen_ro.is_some() || !cfg.read.listeners.is_empty()).then(|| dp.read_route.clone());
        let workers = crate::proxy::workers::Workers::start(cfg.proxy.worker_threads).map_err(StartError::Workers)?;
        let data_path = tokio::spawn(proxy::listener::run_ports(ports, dp, Some(workers), stop));

        hold.lock().await?;

        let history = match &cfg.state_dir {
            Some(dir) => History::open(dir).map_err(|source| StartError::StateDir { dir: dir.display().to_string(), source })?,
            None => History::in_memory(),
        };
        let life = monitor::Lifeline { shutdown: shutdown.clone(), fatal: fatal.clone() };
        let (coordination, forwarded) = match &cfg.coordination {
            Some(c) => {
                let (events, events_rx) = mpsc::channel(256);
                let (requests, requests_rx) = mpsc::channel(64);
                let coord = Coordinator::spawn(c.clone(), events, requests, shutdown.clone(), &monitor_tasks);
                (Some((coord, events_rx)), Some(requests_rx))
            }
            None => (None, None),
        };
        let coord = coordination.as_ref().map(|(c, _)| c.clone());
        let monitor = monitor::spawn(
            live.subscribe(),
            backends,
            (route, read_route),
            metrics.clone(),
            history,
            passive,
            gate.clone(),
            life,
            coordination,
            &monitor_tasks,
        );
        let admin_ctx = Arc::new(AdminContext {
            gate,
            monitor: monitor.clone(),
            metrics: metrics.clone(),
            started: std::time::Instant::now(),
            reads,
            coord: coord.clone(),
            config: live.subscribe(),
            stopping: Default::default(),
        });
        if let (Some(rx), Some(coord)) = (forwarded, coord) {
            tasks.spawn(admin::serve_forwarded(rx, coord, admin_ctx.clone(), shutdown.clone()));
        }
        tasks.spawn(admin::run(admin, admin_ctx.clone(), shutdown.clone()));
        let handed_over = hold.serve(monitor.clone(), shutdown.clone(), monitor_tasks.clone(), &tasks, metrics.takeover_refused.clone());
        if cfg.admin_token.is_none() {
            tracing::info!("no admin token configured: POST endpoints answer 403");
        }
        let ro = read_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
        tracing::info!(listen = %client_addr, listen_ro = %ro, admin = %admin_addr, backends = %names.join(", "), promote = %cfg.failover.promote, "pgfailover started");
        takeover::sd_notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        let done = tokio::spawn(async move {
            let _ = data_path.await;
            tasks.close();
            monitor_tasks.close();
            tasks.wait().await;
            monitor_tasks.wait().await;
        });
        Ok(Proxy { client_addr, read_addr, read_addrs, admin_addr, monitor, metrics, shutdown, fatal, handed_over, done: Some(done), live, admin: admin_ctx })
    }

    /// Resolves if the health monitor dies (a bug): the route is already cleared and the
    /// process should stop and exit non-zero, so its supervisor starts a fresh one.
    pub async fn failed(&self) {
        self.fatal.cancelled().await
    }

    /// Resolves once another process has taken over: this one has stopped accepting and
    /// monitoring; its sessions drain.
    pub async fn handed_over(&self) {
        self.handed_over.wait().await
    }

    /// The process that took over (0: none).
    pub fn successor(&self) -> u32 {
        self.handed_over.pid()
    }

    /// The first step of stopping: `/ready` answers 503 at once, and the listeners keep
    /// accepting for `proxy.shutdown_delay` while load balancers take this process out.
    pub async fn announce_shutdown(&self) {
        self.admin.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let delay = self.live.current().proxy.shutdown_delay;
        if !delay.is_zero() {
            tracing::info!(delay = %humantime::format_duration(delay), "shutting down: /ready answers 503; still accepting for proxy.shutdown_delay");
            tokio::time::sleep(delay).await;
        }
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
