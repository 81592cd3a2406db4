//! The `pgfailover` binary: parses the command line and dispatches — run the proxy
//! ([`cli::run`]), validate a configuration (`--check`), run the demo, show the status. Its
//! modules are under `src/cli/`.
#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgfailover::config::{process_env, Config, Overrides};

mod cli;

use cli::{check, demo, logging, reload::Source, run, status};

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
        /// What if the primary died now: every standby's eligibility, reasons and rank, the
        /// one that would be promoted and the most that could be lost.
        #[arg(long)]
        candidates: bool,
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
    run::raise_open_file_limit();
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
    match &cli.command {
        Some(Cmd::Demo) => return demo::main(overrides),
        Some(Cmd::Status { admin: Some(url), candidates }) => {
            // The token from wherever the configuration would take it (file, variables); a
            // configuration that does not load leaves none.
            let token = Config::load(cli.config.as_deref(), &process_env, &overrides).ok().and_then(status::reading_token);
            return status::main(url, token.as_ref(), *candidates);
        }
        Some(Cmd::Health { admin: Some(url) }) => return status::health(url),
        _ => {}
    }
    let cfg = match Config::load(cli.config.as_deref(), &process_env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgfailover: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match &cli.command {
        Some(Cmd::Status { candidates, .. }) => {
            return status::main(&format!("http://{}", cfg.admin_listen), status::reading_token(cfg.clone()).as_ref(), *candidates)
        }
        Some(Cmd::Health { .. }) => return status::health(&format!("http://{}", cfg.admin_listen)),
        _ => {}
    }
    if cli.check {
        return check::main(&cfg);
    }
    let logs = logging::init(&cfg);
    for w in check::warnings(&cfg) {
        tracing::warn!("{w}");
    }
    if !inherited.leftover().is_empty() {
        tracing::info!(sockets = inherited.leftover().len(), "listening sockets inherited from systemd (LISTEN_FDS)");
    }
    run::until_signal(cfg, logs, Some(Source { file: cli.config.clone(), overrides, inherited }), |_| {})
}
