//! The `pgfailover` binary: run the proxy, validate a config, run the demo, show status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgfailover::config::{process_env, Config, LogFormat, Overrides};

mod demo;
mod status_cmd;

#[derive(Parser, Debug)]
#[command(name = "pgfailover", version, about = "PostgreSQL failover proxy: keeps applications on the current primary")]
struct Cli {
    /// Configuration file (TOML); environment variables and flags override it.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration, print a summary (no secrets) and exit.
    #[arg(long)]
    check: bool,
    /// Address for client connections, e.g. 127.0.0.1:6432.
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Address of the read-only port, e.g. 127.0.0.1:6433 (off unless set).
    #[arg(long, global = true)]
    listen_ro: Option<SocketAddr>,
    /// Address of the admin HTTP port, e.g. 127.0.0.1:9432.
    #[arg(long, global = true)]
    admin_listen: Option<SocketAddr>,
    /// Log filter (overridden by RUST_LOG), e.g. info or pgfailover=debug.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// text or json.
    #[arg(long, global = true)]
    log_format: Option<String>,
    /// auto (promote a standby) or never (follow an external manager).
    #[arg(long, global = true)]
    promote: Option<String>,
    /// Directory for the history journal.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// A standby as name=host:port (repeatable); replaces the configured standbys.
    #[arg(long = "standby", global = true)]
    standbys: Vec<String>,
    /// An etcd endpoint (repeatable): coordinate with the other proxies through etcd.
    #[arg(long = "etcd-endpoint", global = true)]
    etcd_endpoints: Vec<String>,
    /// The cluster name shared by the coordinated proxies (etcd key prefix).
    #[arg(long, global = true)]
    cluster: Option<String>,
    /// This proxy's name among the coordinated ones (default: the host name).
    #[arg(long, global = true)]
    name: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a local primary + standby and the proxy in front of them; Ctrl-C removes all.
    Demo,
    /// Liveness probe for containers: exit 0 when the admin port answers GET /health.
    Health {
        /// Admin URL; defaults to http://<admin_listen> from the configuration.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Show the proxy's status as a table (reads the admin port).
    Status {
        /// Admin URL; defaults to http://<admin_listen> from the configuration.
        #[arg(long)]
        admin: Option<String>,
    },
}

fn main() -> ExitCode {
    // First, before anything opens a descriptor: sockets passed by systemd.
    let inherited = match pgfailover::takeover::Inherited::from_systemd() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pgfailover: inherited sockets (LISTEN_FDS): {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    raise_open_file_limit();
    let overrides = Overrides {
        listen: cli.listen,
        listen_ro: cli.listen_ro,
        admin_listen: cli.admin_listen,
        log_level: cli.log_level.clone(),
        log_format: cli.log_format.clone(),
        promote: cli.promote.clone(),
        state_dir: cli.state_dir.clone(),
        standbys: cli.standbys.clone(),
        etcd_endpoints: cli.etcd_endpoints.clone(),
        cluster: cli.cluster.clone(),
        name: cli.name.clone(),
    };
    if let Some(Cmd::Demo) = cli.command {
        return demo::main(overrides);
    }
    if let Some(Cmd::Status { admin: Some(url) }) = &cli.command {
        return status_cmd::main(url);
    }
    if let Some(Cmd::Health { admin: Some(url) }) = &cli.command {
        return status_cmd::health(url);
    }
    let cfg = match Config::load(cli.config.as_deref(), &process_env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgfailover: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Cmd::Status { admin: None }) = &cli.command {
        return status_cmd::main(&format!("http://{}", cfg.admin_listen));
    }
    if let Some(Cmd::Health { admin: None }) = &cli.command {
        return status_cmd::health(&format!("http://{}", cfg.admin_listen));
    }
    if cli.check {
        println!("{}", summary(&cfg));
        return ExitCode::SUCCESS;
    }
    let logs = init_logging(&cfg);
    if !inherited.leftover().is_empty() {
        tracing::info!(sockets = inherited.leftover().len(), "listening sockets inherited from systemd (LISTEN_FDS)");
    }
    run_until_signal(cfg, logs, Some(Source { file: cli.config.clone(), overrides, inherited }), |_| {})
}

/// Two descriptors per client: use all the open files the hard limit allows (the default
/// `proxy.max_client_connections` is derived from it).
fn raise_open_file_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// One line per backend and the key settings; never a secret.
fn summary(cfg: &Config) -> String {
    let mut s = format!(
        "configuration OK: listen {}, admin {}, health every {} (timeout {}, threshold {}), promote {}, hold {}, max clients {}",
        cfg.listen,
        cfg.admin_listen,
        humantime::format_duration(cfg.health.interval),
        humantime::format_duration(cfg.health.timeout),
        cfg.health.failure_threshold,
        cfg.failover.promote,
        humantime::format_duration(cfg.failover.hold_timeout),
        cfg.proxy.max_client_connections,
    );
    for (i, b) in cfg.backends().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        s.push_str(&format!("\n  {role} {} at {} (db {}, user {}, ssl {})", b.name, b.address(), b.database, b.user, b.ssl));
    }
    s
}

type Filtered = tracing_subscriber::layer::Layered<
    tracing_subscriber::reload::Layer<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
    tracing_subscriber::Registry,
>;
type FmtLayer = Box<dyn tracing_subscriber::Layer<Filtered> + Send + Sync>;

/// What a reload changes in the logging: the filter and the format.
pub(crate) struct LogHandle {
    filter: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
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

/// Logs to stderr: colours only on a terminal, JSON lines on request. The filter (RUST_LOG,
/// else `log_level`) was validated with the configuration. Both can be reloaded.
pub(crate) fn init_logging(cfg: &Config) -> LogHandle {
    use tracing_subscriber::prelude::*;
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(log_filter(cfg));
    let (format, format_handle) = tracing_subscriber::reload::Layer::new(log_format(cfg.log_format));
    tracing_subscriber::registry().with(filter).with(format).init();
    LogHandle { filter: filter_handle, format: format_handle }
}

impl LogHandle {
    fn apply(&self, cfg: &Config) {
        if std::env::var_os("RUST_LOG").is_some() {
            tracing::info!("RUST_LOG is set: it overrides log_level");
        }
        let _ = self.filter.reload(log_filter(cfg));
        let _ = self.format.reload(log_format(cfg.log_format));
    }
}

/// Where a reload reads the configuration from again (the demo has none).
pub(crate) struct Source {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
    /// Listening sockets from systemd, for the start.
    pub inherited: pgfailover::takeover::Inherited,
}

/// Runs the proxy until SIGTERM/SIGINT, then drains and exits 0. `ready` is called once the
/// listeners are bound. SIGHUP reloads the configuration from `source`; SIGUSR2 (or a reload
/// that adds or removes backends) starts a fresh copy of this binary that takes over.
pub(crate) fn run_until_signal(cfg: Config, logs: LogHandle, mut source: Option<Source>, ready: impl FnOnce(&pgfailover::server::Proxy)) -> ExitCode {
    let successor = pgfailover::takeover::Successor::of_this_process();
    let mut builder = match cfg.proxy.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgfailover: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let file = source.as_ref().and_then(|s| s.file.as_ref()).map(|f| f.display().to_string());
        let has_state_dir = cfg.state_dir.is_some();
        // Before the start: a signal during a takeover must not end the process.
        let mut signals = Signals::new();
        let inherited = source.as_mut().map(|s| std::mem::take(&mut s.inherited)).unwrap_or_default();
        // SIGTERM while the start still waits for a running process (to hand over) ends it.
        let early_stop = tokio_util::sync::CancellationToken::new();
        let early = {
            let stop = early_stop.clone();
            let mut signals = Signals::new();
            tokio::spawn(async move {
                if let Sig::Stop = signals.next_stop().await {
                    stop.cancel();
                }
            })
        };
        let started = pgfailover::server::Proxy::start_with(cfg, file.clone(), inherited, early_stop).await;
        early.abort();
        let proxy = match started {
            Ok(p) => p,
            Err(pgfailover::server::StartError::Takeover(pgfailover::takeover::TakeoverError::Stopped)) => {
                tracing::info!("stopped by a signal while waiting to take over; the running process carries on");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                // One message: the log is on stderr already.
                tracing::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        ready(&proxy);
        debug_crash_monitor(&proxy);
        let code = loop {
            tokio::select! {
                sig = signals.next() => match sig {
                    Sig::Stop => {
                        pgfailover::takeover::sd_notify("STOPPING=1");
                        proxy.announce_shutdown().await;
                        tracing::info!("signal received; draining sessions and stopping");
                        break ExitCode::SUCCESS;
                    }
                    Sig::Reload => {
                        let Some(src) = &source else {
                            tracing::warn!("SIGHUP: the demo has no configuration file to reload");
                            continue;
                        };
                        if let Ok(true) = reload(&proxy, src, file.clone(), &logs).await {
                            successor.spawn("the backends changed");
                        }
                    }
                    Sig::Takeover => {
                        if has_state_dir {
                            successor.spawn("SIGUSR2");
                        } else {
                            tracing::error!("SIGUSR2: a takeover needs state_dir (the processes hand over through it); ignored");
                        }
                    }
                },
                _ = proxy.handed_over() => {
                    let pid = proxy.successor();
                    if !pgfailover::takeover::alive(pid) {
                        // It died after this process stopped accepting: nobody serves. Exit
                        // non-zero, so the supervisor starts a fresh one.
                        tracing::error!(pid, "the process that took over is gone; exiting with an error so the supervisor restarts the proxy");
                        break ExitCode::FAILURE;
                    }
                    tracing::info!("another process took over; draining sessions and exiting");
                    // systemd follows the new process (it says so too; whichever comes first).
                    pgfailover::takeover::sd_notify(&format!("MAINPID={pid}"));
                    break ExitCode::SUCCESS;
                }
                _ = proxy.failed() => {
                    tracing::error!("the health monitor died; stopping with a non-zero exit so the supervisor restarts the proxy");
                    break ExitCode::from(70);
                }
            }
        };
        proxy.shutdown();
        proxy.stopped().await;
        tracing::info!("stopped");
        code
    })
}

/// Reads the configuration again and applies it. `Ok(true)`: a fresh process must take over.
async fn reload(proxy: &pgfailover::server::Proxy, src: &Source, file: Option<String>, logs: &LogHandle) -> Result<bool, ()> {
    let refused = |why: String| {
        tracing::error!(error = %why, "configuration reload refused; still running on the previous configuration");
        proxy.metrics.config_reloads_error.increment(1);
    };
    let cfg = match Config::load(src.file.as_deref(), &process_env, &src.overrides) {
        Ok(c) => c,
        Err(e) => {
            refused(e.to_string());
            return Err(());
        }
    };
    let digest = pgfailover::server::digest(&cfg);
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
            if r.handover {
                tracing::warn!(%digest, "configuration reloaded: the backends changed, so a fresh process takes over (sessions here drain)");
            } else {
                tracing::info!(%digest, "configuration reloaded");
            }
            Ok(r.handover)
        }
        Err(e) => {
            refused(e.to_string());
            Err(())
        }
    }
}

enum Sig {
    Stop,
    Reload,
    Takeover,
}

struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
    usr2: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
            usr2: signal(SignalKind::user_defined2()).ok(),
        }
    }

    /// The next SIGTERM or SIGINT (other signals are left to [`next`](Self::next)).
    async fn next_stop(&mut self) -> Sig {
        loop {
            if let Sig::Stop = self.next().await {
                return Sig::Stop;
            }
        }
    }

    async fn next(&mut self) -> Sig {
        async fn on(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        if self.term.is_none() && self.int.is_none() {
            let _ = tokio::signal::ctrl_c().await;
            return Sig::Stop;
        }
        tokio::select! {
            _ = on(&mut self.term) => Sig::Stop,
            _ = on(&mut self.int) => Sig::Stop,
            _ = on(&mut self.hup) => Sig::Reload,
            _ = on(&mut self.usr2) => Sig::Takeover,
        }
    }
}

/// Fault injection for the binary's own tests, in debug builds only:
/// `PGFAILOVER_DEBUG_CRASH_MONITOR_AFTER=<duration>` makes the health monitor panic.
fn debug_crash_monitor(proxy: &pgfailover::server::Proxy) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Some(after) = std::env::var("PGFAILOVER_DEBUG_CRASH_MONITOR_AFTER").ok().and_then(|v| pgfailover::duration::parse_duration(&v).ok()) else {
        return;
    };
    let monitor = proxy.monitor.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        monitor.crash_for_test().await;
    });
}
