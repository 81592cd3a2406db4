//! `pgfailover --check`: the configuration is valid; a summary of it, never a secret; and
//! what would stop or weaken a start: a state directory others may write to (refused at
//! start, so here too), files holding a secret that others can read, read endpoints open
//! beyond this host (warnings).

use std::process::ExitCode;

use pgfailover::config::Config;

/// Prints the summary and the warnings; exit 2 when the start would be refused.
pub fn main(cfg: &Config) -> ExitCode {
    if let Some(dir) = &cfg.state_dir {
        // A missing directory is created safely at start; an existing one must be safe now.
        match pgfailover::takeover::check_state_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("pgfailover: configuration error: state_dir {}: {e}", dir.display());
                return ExitCode::from(2);
            }
            _ => {}
        }
    }
    // The certificates and keys themselves: a start (and a reload) would refuse them.
    if let Err(e) = pgfailover::tls::Material::load(cfg) {
        eprintln!("pgfailover: configuration error: {e}");
        return ExitCode::from(2);
    }
    println!("{}", summary(cfg));
    for w in warnings(cfg) {
        eprintln!("pgfailover: warning: {w}");
    }
    ExitCode::SUCCESS
}

/// What is worth a warning in `cfg` (also logged at start and on reload).
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut out: Vec<String> = cfg.loose_secret_files().iter().map(ToString::to_string).collect();
    out.extend(pgfailover::admin::unprotected_reads(cfg));
    out
}

/// One line per backend and the key settings; never a secret.
pub fn summary(cfg: &Config) -> String {
    let mut s = format!(
        "configuration OK: listen {}, admin {}, health every {} (timeout {}, threshold {}), promote {}, hold {}, drain {}, max clients {}",
        cfg.listen,
        cfg.admin_listen,
        humantime::format_duration(cfg.health.interval),
        humantime::format_duration(cfg.health.timeout),
        cfg.health.failure_threshold,
        cfg.failover.promote,
        humantime::format_duration(cfg.failover.hold_timeout),
        humantime::format_duration(cfg.failover.drain_timeout),
        cfg.proxy.max_client_connections,
    );
    let set = |t: &Option<_>, off: &'static str| if t.is_some() { "token" } else { off };
    let metrics = if cfg.admin_read_token.is_none() || cfg.admin_metrics_open { "open" } else { "token" };
    s.push_str(&format!(
        "\n  admin port: POST {}, reads {}, /metrics {metrics}, probes open",
        set(&cfg.admin_token, "off"),
        set(&cfg.admin_read_token, "open")
    ));
    s.push_str(&format!(
        "\n  failover: synchronous {} (count {}), zone policy {}",
        cfg.failover.synchronous, cfg.failover.synchronous_count, cfg.failover.zone_policy
    ));
    let t = &cfg.tls;
    let client_certs = if t.client_ca_file.is_some() { ", client certificates required" } else { "" };
    let plain = if t.require_client_tls { "refused" } else { "admitted" };
    match t.mode {
        pgfailover::config::TlsMode::Passthrough => s.push_str("\n  tls: passthrough (the servers answer the clients' TLS)"),
        pgfailover::config::TlsMode::Terminate => s.push_str(&format!("\n  tls: terminate (certificate loaded{client_certs}; clients in clear {plain})")),
    }
    for l in &cfg.read.listeners {
        let lag = l.max_lag.map(|d| humantime::format_duration(d).to_string()).unwrap_or_else(|| "read.max_lag".into());
        let bytes = l.max_lag_bytes.map(|b| b.to_string()).unwrap_or_else(|| "read.max_lag_bytes".into());
        s.push_str(&format!("\n  read port {} (max_lag {lag}, max_lag_bytes {bytes})", l.listen));
    }
    for (i, b) in cfg.backends().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        let p = &b.policy;
        let zone = p.zone.as_deref().map(|z| format!(", zone {z}")).unwrap_or_default();
        let never = if p.nofailover { ", nofailover" } else { "" };
        s.push_str(&format!(
            "\n  {role} {} at {} (db {}, user {}, sslmode {}, priority {}{zone}{never})",
            b.name,
            b.address(),
            b.database,
            b.user,
            b.sslmode.as_str(),
            p.priority
        ));
    }
    s
}
