//! Wires a [`Config`] into one running proxy: listeners, monitor, data path, admin port.
//! Tests start it on port 0 and read the bound addresses; `main` adds signals.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminContext, AdminLive};
use crate::config::Config;
use crate::coord::Coordinator;
use crate::metrics::Metrics;
use crate::monitor::{self, history::History, MonitorHandle};
use crate::proxy::{
    self,
    datapath::{Knobs, Port},
    DataPath,
};
use crate::route::{ReadRouteWriter, RouteWriter};
use crate::takeover::{self, Inherited, StateLock};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen { addr: SocketAddr, key: &'static str, source: std::io::Error },
    #[error("state_dir {dir}: {source}")]
    StateDir { dir: String, source: std::io::Error },
    #[error("inherited sockets: {0}")]
    Inherited(std::io::Error),
    #[error("taking over from the running process (state_dir {dir}): {source}")]
    Takeover { dir: String, source: std::io::Error },
    #[error("stopped by a signal before taking over (the running process carries on)")]
    Stopped,
}

/// Why a reload was not applied (the proxy keeps running on the configuration it had).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("adding or removing backends needs state_dir (a fresh process takes over and carries the fences on through it); restart instead")]
    BackendsWithoutStateDir,
    #[error("{0} is the routed primary and cannot be removed; make another backend primary first (POST /failover/trigger)")]
    RemovesPrimary(String),
    #[error("a failover or switchover is in progress; reload when it has ended")]
    FailoverInProgress,
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The backends changed: a fresh process must take over (see [`crate::takeover`]).
    pub handover: bool,
    /// Keys that changed but need a restart (or a takeover) to take effect.
    pub need_restart: Vec<&'static str>,
    /// `log_level` or `log_format` changed.
    pub logging: bool,
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
    /// Cancelled once another process took over the listeners and the monitor.
    handed_over: CancellationToken,
    /// That process's id.
    successor: Arc<std::sync::atomic::AtomicU32>,
    done: Option<JoinHandle<()>>,
    config: std::sync::Mutex<Config>,
    dp: Arc<DataPath>,
    admin: Arc<AdminContext>,
}

impl Drop for Proxy {
    /// Dropping the handle stops the proxy (sessions drain as on SIGTERM).
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The configuration's digest: SHA-256 of its debug form, which leaves every secret out.
pub fn digest(cfg: &Config) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(format!("{cfg:?}").as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn config_info(cfg: &Config, file: Option<String>) -> admin::ConfigInfo {
    admin::ConfigInfo {
        loaded_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        digest: digest(cfg),
        file,
        pid: std::process::id(),
    }
}

async fn listen(inherited: &mut Inherited, addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Listen { addr, key, source };
    if let Some(l) = inherited.take(addr, key).map_err(err)? {
        tracing::info!(%addr, key, from = inherited.source, "listening on an inherited socket");
        return Ok(l);
    }
    TcpListener::bind(addr).await.map_err(err)
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
    pub async fn start_with(cfg: Config, file: Option<String>, mut inherited: Inherited, stop: CancellationToken) -> Result<Proxy, StartError> {
        let state_err = |dir: &std::path::Path| {
            let dir = dir.display().to_string();
            move |source| StartError::StateDir { dir, source }
        };
        let mut takeover = None;
        if let Some(dir) = &cfg.state_dir {
            std::fs::create_dir_all(dir).map_err(state_err(dir))?;
            let mut waited = 0u32;
            // A failover ends within its own bounds; beyond ten minutes something is wrong.
            const BUSY_LIMIT: u32 = 1200;
            let asked = loop {
                let d = dir.clone();
                let asked = tokio::task::spawn_blocking(move || takeover::request(&d)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match asked {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && waited < BUSY_LIMIT => {
                        if waited % 10 == 0 {
                            tracing::warn!(answer = %e, "the running process cannot hand over now; asking again");
                        }
                        waited += 1;
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                            _ = stop.cancelled() => return Err(StartError::Stopped),
                        }
                    }
                    other => break other,
                }
            };
            match asked {
                Ok(Some((stream, sockets, pid))) => {
                    tracing::warn!(pid, "taking over from the running process");
                    // systemd's sockets first, the old process's for the other keys.
                    inherited.merge(sockets);
                    takeover = Some(stream);
                }
                Ok(None) => {}
                Err(source) => return Err(StartError::Takeover { dir: dir.display().to_string(), source }),
            }
        }
        let client = listen(&mut inherited, cfg.listen, "listen").await?;
        let client_addr = client.local_addr().map_err(|source| StartError::Listen { addr: cfg.listen, key: "listen", source })?;
        let read = match cfg.listen_ro {
            Some(addr) => Some(listen(&mut inherited, addr, "listen_ro").await?),
            None => None,
        };
        let read_addr = match (&read, cfg.listen_ro) {
            (Some(l), Some(addr)) => Some(l.local_addr().map_err(|source| StartError::Listen { addr, key: "listen_ro", source })?),
            _ => None,
        };
        let admin = listen(&mut inherited, cfg.admin_listen, "admin_listen").await?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Listen { addr: cfg.admin_listen, key: "admin_listen", source })?;
        for addr in inherited.leftover() {
            tracing::warn!(%addr, from = inherited.source, "an inherited socket matches no listen address of the configuration: closed");
        }
        drop(inherited);
        // Without a state directory, a second process would share nothing: nothing to lock.
        let lock = match &cfg.state_dir {
            Some(dir) if takeover.is_none() => match StateLock::try_take(dir).map_err(state_err(dir))? {
                Some(l) => Some(l),
                None => {
                    let holder = StateLock::holder(dir).map(|p| format!(" (pid {p})")).unwrap_or_default();
                    return Err(StartError::StateDir {
                        dir: dir.display().to_string(),
                        source: std::io::Error::other(format!("another pgfailover{holder} runs on this state directory and does not answer a takeover")),
                    });
                }
            },
            _ => None,
        };
        let sockets = match &cfg.state_dir {
            Some(_) => {
                // Duplicates, kept for a later takeover: the accept loops own the originals.
                let dup = |l: &TcpListener| std::os::fd::AsFd::as_fd(l).try_clone_to_owned();
                let mut fds = vec![("listen", dup(&client)), ("admin_listen", dup(&admin))];
                fds.extend(read.as_ref().map(|r| ("listen_ro", dup(r))));
                let fds: Result<Vec<_>, _> = fds.into_iter().map(|(k, f)| f.map(|f| (k, f))).collect();
                Some(fds.map_err(|source| StartError::Listen { addr: cfg.listen, key: "listen", source })?)
            }
            None => None,
        };
        // After a takeover: the old process stops accepting now, and this one starts next.
        // First what could still fail: once the old process stopped, this one must run.
        let mut takeover = takeover;
        if let (Some(_), Some(dir)) = (takeover.as_ref(), &cfg.state_dir) {
            History::check(dir).map_err(state_err(dir))?;
            if stop.is_cancelled() {
                return Err(StartError::Stopped);
            }
        }
        if let (Some(stream), Some(dir)) = (takeover.as_mut(), &cfg.state_dir) {
            let mut s = stream.try_clone().map_err(|source| StartError::Takeover { dir: dir.display().to_string(), source })?;
            tokio::task::spawn_blocking(move || takeover::ready(&mut s))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|source| StartError::Takeover { dir: dir.display().to_string(), source })?;
        }

        let backends: Arc<[_]> = cfg.backends().into();
        let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
        let metrics = Arc::new(Metrics::new(&names));
        let route = RouteWriter::new("waiting for the first health checks");
        let read_route = ReadRouteWriter::default();
        let (connect_failed, passive) = mpsc::channel(64);
        let dp = Arc::new(DataPath {
            backends: backends.clone(),
            route: route.subscribe(),
            knobs: watch::Sender::new(Arc::new(Knobs::of(&cfg))),
            metrics: metrics.clone(),
            connect_failed,
            read_route: read_route.subscribe(),
            read_turn: Default::default(),
        });
        let shutdown = CancellationToken::new();
        let fatal = CancellationToken::new();
        let handed_over = CancellationToken::new();
        let tasks = TaskTracker::new();
        // The monitor and the coordinator: a takeover waits for exactly these to end.
        let monitor_tasks = TaskTracker::new();

        // The data path first: after a takeover it accepts at once (the old process has
        // stopped), holding clients until this process's monitor routes.
        let stop = shutdown.clone();
        let mut ports = vec![(client, Port::Primary)];
        ports.extend(read.map(|l| (l, Port::Read)));
        let dp2 = dp.clone();
        let data_path = tokio::spawn(async move { proxy::listener::run_ports(ports, dp2, stop).await });

        let mut lock = lock;
        if let (Some(stream), Some(dir)) = (takeover, &cfg.state_dir) {
            let released = tokio::task::spawn_blocking(move || takeover::released(stream)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = released {
                tracing::warn!(error = %e, "the previous process did not confirm the takeover; waiting for the state directory's lock");
            }
            // The old process releases it at the latest when it exits.
            lock = Some(StateLock::take(dir).await.map_err(state_err(dir))?);
            tracing::info!("the previous process released the health monitor; starting it here");
        }

        let history = match &cfg.state_dir {
            Some(dir) => History::open(dir).map_err(state_err(dir))?,
            None => History::in_memory(),
        };
        let life = monitor::Lifeline { shutdown: shutdown.clone(), fatal: fatal.clone() };
        let reads = cfg.listen_ro.map(|_| dp.read_route.clone());
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
        let monitor = monitor::spawn(&cfg, backends, (route, read_route), metrics.clone(), history, passive, life, coordination, &monitor_tasks);
        let admin_ctx = Arc::new(AdminContext {
            monitor: monitor.clone(),
            metrics: metrics.clone(),
            started: std::time::Instant::now(),
            reads,
            coord: coord.clone(),
            live: std::sync::RwLock::new(AdminLive::new(&cfg, config_info(&cfg, file))),
            stopping: Default::default(),
        });
        if let (Some(rx), Some(coord)) = (forwarded, coord) {
            tasks.spawn(admin::serve_forwarded(rx, coord, admin_ctx.clone(), shutdown.clone()));
        }
        tasks.spawn(admin::run(admin, admin_ctx.clone(), shutdown.clone()));
        let successor = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let control = match (&cfg.state_dir, sockets.is_some()) {
            (Some(dir), true) => match bind_control(dir) {
                Ok(c) => Some(c),
                Err(e) => {
                    // Serving matters more than a later takeover.
                    tracing::error!(error = %e, path = %takeover::socket_path(dir).display(), "cannot listen for takeovers; a new process will refuse to start beside this one");
                    None
                }
            },
            _ => None,
        };
        if let (Some(control), Some(sockets)) = (control, sockets) {
            let h = Handover {
                sockets,
                lock: lock.take(),
                shutdown: shutdown.clone(),
                monitor_tasks: monitor_tasks.clone(),
                done: handed_over.clone(),
                monitor: monitor.clone(),
                successor: successor.clone(),
            };
            tasks.spawn(h.serve(control));
        }
        drop(lock);
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
        Ok(Proxy {
            client_addr,
            read_addr,
            admin_addr,
            monitor,
            metrics,
            shutdown,
            fatal,
            handed_over,
            successor,
            done: Some(done),
            config: std::sync::Mutex::new(cfg),
            dp,
            admin: admin_ctx,
        })
    }

    /// Resolves if the health monitor dies (a bug): the route is already cleared and the
    /// process should stop and exit non-zero, so its supervisor starts a fresh one.
    pub async fn failed(&self) {
        self.fatal.cancelled().await
    }

    /// Resolves once another process has taken over: this one has stopped accepting and
    /// monitoring; its sessions drain.
    pub async fn handed_over(&self) {
        self.handed_over.cancelled().await
    }

    /// The process that took over (0: none).
    pub fn successor(&self) -> u32 {
        self.successor.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The first step of stopping: `/ready` answers 503 at once, and the listeners keep
    /// accepting for `proxy.shutdown_delay` while load balancers take this process out.
    pub async fn announce_shutdown(&self) {
        self.admin.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let delay = self.dp.knobs().proxy.shutdown_delay;
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

    /// Applies a new, valid configuration: what can change live changes now; new or removed
    /// backends need a takeover by a fresh process ([`Reloaded::handover`]).
    pub async fn reload(&self, new: Config, file: Option<String>) -> Result<Reloaded, ReloadError> {
        let old = self.config.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = Reloaded::default();
        if old.backends() != new.backends() {
            if new.state_dir.is_none() || old.state_dir != new.state_dir {
                return Err(ReloadError::BackendsWithoutStateDir);
            }
            let status = self.monitor.status();
            if status.failover_in_progress.is_some() {
                return Err(ReloadError::FailoverInProgress);
            }
            if let Some(p) = status.current_primary.as_ref().filter(|p| !new.backends().iter().any(|b| &b.name == *p)) {
                return Err(ReloadError::RemovesPrimary(p.clone()));
            }
            out.handover = true;
            return Ok(out);
        }
        // What needs a restart is logged and stays as it runs, so the status and the next
        // reload see that.
        fn keep<T: PartialEq + Clone>(old: &T, new: &mut T, key: &'static str, out: &mut Reloaded) {
            if old != new {
                out.need_restart.push(key);
                *new = old.clone();
            }
        }
        let mut new = new;
        keep(&old.listen, &mut new.listen, "listen", &mut out);
        keep(&old.listen_ro, &mut new.listen_ro, "listen_ro", &mut out);
        keep(&old.admin_listen, &mut new.admin_listen, "admin_listen", &mut out);
        keep(&old.state_dir, &mut new.state_dir, "state_dir", &mut out);
        keep(&old.coordination, &mut new.coordination, "[coordination]", &mut out);
        keep(&old.proxy.worker_threads, &mut new.proxy.worker_threads, "proxy.worker_threads", &mut out);
        out.logging = old.log_level != new.log_level || old.log_format != new.log_format;
        self.dp.knobs.send_replace(Arc::new(Knobs::of(&new)));
        self.monitor.reload(&new).await;
        *self.admin.live.write().unwrap_or_else(|e| e.into_inner()) = AdminLive::new(&new, config_info(&new, file));
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(out)
    }
}

/// The control socket, replacing a stale one (the lock is held: nobody else serves it).
fn bind_control(dir: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    let path = takeover::socket_path(dir);
    let _ = std::fs::remove_file(&path);
    tokio::net::UnixListener::bind(&path)
}

/// The running process's side of a takeover.
struct Handover {
    /// Each listening socket (a duplicate) with its configuration key.
    sockets: Vec<(&'static str, std::os::fd::OwnedFd)>,
    monitor: MonitorHandle,
    successor: Arc<std::sync::atomic::AtomicU32>,
    lock: Option<StateLock>,
    shutdown: CancellationToken,
    monitor_tasks: TaskTracker,
    done: CancellationToken,
}

impl Handover {
    async fn serve(mut self, control: tokio::net::UnixListener) {
        loop {
            let conn = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    // Stopping: the sockets close with the accept loops (no connection is
                    // queued that nobody will accept). The lock goes only after the
                    // monitor's last history write.
                    self.sockets.clear();
                    self.monitor_tasks.close();
                    self.monitor_tasks.wait().await;
                    return;
                }
                c = control.accept() => c,
            };
            let stream = match conn.and_then(|(s, _)| s.into_std()).and_then(|s| s.set_nonblocking(false).map(|_| s)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "takeover socket: accept failed");
                    continue;
                }
            };
            let fds: Vec<(&'static str, std::os::fd::RawFd)> = self.sockets.iter().map(|(k, f)| (*k, std::os::fd::AsRawFd::as_raw_fd(f))).collect();
            // Not in the middle of a failover or switchover (its steps are this monitor's to
            // finish): the new process asks again.
            let status = self.monitor.status();
            let busy = move || status.failover_in_progress.as_ref().map(|_| "a failover or switchover is in progress".to_string());
            // The sockets stay open here (the duplicates) until the handshake is over.
            let served = tokio::task::spawn_blocking(move || takeover::serve(stream, &fds, busy)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let (pid, stream) = match served {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tracing::debug!(error = %e, "a takeover asked while busy; the new process asks again");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a takeover did not happen; this process carries on");
                    continue;
                }
            };
            tracing::warn!(pid, "handing over to a new process: no longer accepting; sessions drain");
            self.successor.store(pid, std::sync::atomic::Ordering::Relaxed);
            self.sockets.clear();
            // Stops accepting, the monitor (its last history write included) and the
            // coordinator (its etcd lease revoked); then the lock goes.
            self.shutdown.cancel();
            self.monitor_tasks.close();
            self.monitor_tasks.wait().await;
            // The monitor waited up to 5 s for its journal; the next process reads it, so
            // the lock goes only once it is on disk (a disk stalled for a minute is given up).
            let monitor = self.monitor.clone();
            let flushed = tokio::task::spawn_blocking(move || monitor.flush_history(std::time::Duration::from_secs(60))).await.unwrap_or(false);
            if !flushed {
                tracing::error!("the history journal did not reach the disk; handing over anyway");
            }
            self.lock.take();
            let _ = tokio::task::spawn_blocking(move || takeover::say_released(stream)).await;
            tracing::info!(pid, "handed over the health monitor");
            self.done.cancel();
            return;
        }
    }
}
