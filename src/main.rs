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
    init_logging(&cfg);
    run_until_signal(cfg, |_| {})
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

/// Logs to stderr: colours only on a terminal, JSON lines on request. The filter (RUST_LOG,
/// else `log_level`) was validated with the configuration.
pub(crate) fn init_logging(cfg: &Config) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&cfg.log_level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs the proxy until SIGTERM/SIGINT, then drains and exits 0. `ready` is called once the
/// listeners are bound.
pub(crate) fn run_until_signal(cfg: Config, ready: impl FnOnce(&pgfailover::server::Proxy)) -> ExitCode {
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
        let proxy = match pgfailover::server::Proxy::start(cfg).await {
            Ok(p) => p,
            Err(e) => {
                // One message: the log is on stderr already.
                tracing::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        ready(&proxy);
        debug_crash_monitor(&proxy);
        let code = tokio::select! {
            _ = wait_for_signal() => {
                tracing::info!("signal received; draining sessions and stopping");
                ExitCode::SUCCESS
            }
            _ = proxy.failed() => {
                tracing::error!("the health monitor died; stopping with a non-zero exit so the supervisor restarts the proxy");
                ExitCode::from(70)
            }
        };
        proxy.shutdown();
        proxy.stopped().await;
        tracing::info!("stopped");
        code
    })
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

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
