//! The whole configuration's checks, run once every layer is applied, and where a failing
//! value came from (the file, a variable or a flag), so the error names it.

use std::path::Path;
use std::time::Duration;

use super::{Config, EnvLookup, Overrides};

/// Why the merged configuration is invalid: the key (as in `proxy.toml`) and the reason.
pub(super) type Invalid = (String, String);

pub(super) fn check(cfg: &Config) -> Result<(), Invalid> {
    let v = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
    if cfg.health.interval < Duration::from_millis(10) {
        return v("health.interval", "must be at least 10ms");
    }
    if cfg.health.timeout < Duration::from_millis(10) {
        return v("health.timeout", "must be at least 10ms");
    }
    if cfg.health.failure_threshold == 0 {
        return v("health.failure_threshold", "must be at least 1");
    }
    if cfg.proxy.connect_timeout.is_zero() {
        return v("proxy.connect_timeout", "must be greater than 0");
    }
    if cfg.proxy.keepalive_count == 0 {
        return v("proxy.keepalive_count", "must be at least 1");
    }
    if cfg.proxy.startup_timeout < Duration::from_millis(100) {
        return v("proxy.startup_timeout", "must be at least 100ms");
    }
    if cfg.proxy.max_client_connections == 0 {
        return v("proxy.max_client_connections", "must be at least 1");
    }
    // An empty token (an empty token file, a variable set to nothing) would admit a request
    // that sends an empty bearer: refused rather than taken for "no token".
    for (key, token) in [("admin_token", &cfg.admin_token), ("admin_read_token", &cfg.admin_read_token)] {
        if token.as_ref().is_some_and(|t| t.expose().trim().is_empty()) {
            return v(key, "is empty; a token needs at least one character (leave it unset to have none)");
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, b) in cfg.backends().iter().enumerate() {
        let key = if i == 0 { "primary".to_string() } else { format!("standbys[{}]", i - 1) };
        if b.name.is_empty() {
            return v(&format!("{key}.name"), "must not be empty");
        }
        if !names.insert(b.name.clone()) {
            return v(&format!("{key}.name"), &format!("{:?} is used by two backends", b.name));
        }
        if b.host.is_empty() {
            return v(&format!("{key}.host"), "must not be empty");
        }
        if b.port == 0 {
            return v(&format!("{key}.port"), "must not be 0");
        }
        if b.policy.priority > super::MAX_PRIORITY {
            return v(
                &format!("{key}.priority"),
                &format!("{} is over {}: use an integer from 0 to {}", b.policy.priority, super::MAX_PRIORITY, super::MAX_PRIORITY),
            );
        }
        if let Some(why) = b.policy.zone.as_deref().and_then(super::policy::zone_problem) {
            return v(&format!("{key}.zone"), why);
        }
        if cfg.failover.synchronous != super::SyncMode::Off {
            if let Some(why) = super::policy::standby_name_problem(&b.name) {
                return v(&format!("{key}.name"), &why);
            }
        }
    }
    synchronous(cfg)?;
    if cfg.listen == cfg.admin_listen && cfg.listen.port() != 0 {
        return v("admin_listen", "must differ from listen");
    }
    if let Some(ro) = cfg.listen_ro.filter(|a| a.port() != 0) {
        if ro == cfg.listen || ro == cfg.admin_listen {
            return v("listen_ro", "must differ from listen and admin_listen");
        }
    }
    let mut ports = vec![("listen", cfg.listen), ("admin_listen", cfg.admin_listen)];
    ports.extend(cfg.listen_ro.map(|a| ("listen_ro", a)));
    for (i, l) in cfg.read.listeners.iter().enumerate() {
        if l.listen.port() != 0 && ports.iter().any(|(_, a)| *a == l.listen) {
            return v(&format!("read.listeners[{i}].listen"), &format!("{} is already another port's address", l.listen));
        }
        ports.push(("read.listeners", l.listen));
    }
    super::tls::check(cfg)?;
    if let Some(c) = &cfg.coordination {
        if c.etcd_endpoints.is_empty() {
            return v("coordination.etcd_endpoints", "must name at least one etcd endpoint");
        }
        if c.cluster.is_empty() || c.cluster.contains('/') {
            return v("coordination.cluster", "must be a non-empty name without \"/\"");
        }
        if c.name.is_empty() || c.name.contains('/') {
            return v("coordination.name", "must be a non-empty name without \"/\"");
        }
        if c.lease_ttl < Duration::from_secs(2) {
            return v("coordination.lease_ttl", "must be at least 2s (etcd leases count whole seconds)");
        }
        for e in &c.etcd_endpoints {
            let rest = match e.split_once("://") {
                Some(("http" | "https", rest)) => rest,
                Some((scheme, _)) => return v("coordination.etcd_endpoints", &format!("{e:?}: the scheme must be http or https, not {scheme:?}")),
                None => e.as_str(),
            };
            let port = rest.rsplit_once(':').map(|(_, p)| p.trim_end_matches('/'));
            if rest.is_empty() || (rest.contains('/') && !rest.ends_with('/')) || port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return v("coordination.etcd_endpoints", &format!("{e:?} is not an etcd client URL such as http://127.0.0.1:2379"));
            }
        }
        let tls = c.etcd_endpoints.iter().any(|e| e.starts_with("https://"));
        if (c.ca_file.is_some() || c.cert_file.is_some()) && !tls {
            return v("coordination.ca_file", "TLS files are set but no etcd endpoint is https://");
        }
        if c.cert_file.is_some() != c.key_file.is_some() {
            return v("coordination.cert_file", "cert_file and key_file go together");
        }
        for (key, file) in [("coordination.ca_file", &c.ca_file), ("coordination.cert_file", &c.cert_file), ("coordination.key_file", &c.key_file)] {
            if let Some(f) = file {
                if let Err(e) = std::fs::metadata(f) {
                    return v(key, &format!("{}: {e}", f.display()));
                }
            }
        }
        if c.password.is_some() && c.user.is_none() {
            return v("coordination.user", "an etcd password needs a user");
        }
    }
    log_filter(&cfg.log_level).map_err(|r| ("log_level".to_string(), r))
}

/// `failover.synchronous` and its count: pgfailover must be the one that promotes, and some
/// standby must be able to be synchronous.
fn synchronous(cfg: &Config) -> Result<(), Invalid> {
    let f = &cfg.failover;
    if f.synchronous_count == 0 {
        return Err(("failover.synchronous_count".into(), "must be at least 1".into()));
    }
    if f.synchronous == super::SyncMode::Off {
        return Ok(());
    }
    if f.promote != super::PromoteMode::Auto {
        return Err((
            "failover.synchronous".into(),
            format!(
                "{:?} needs failover.promote = \"auto\": with \"never\", the manager that promotes owns synchronous_standby_names",
                f.synchronous.to_string()
            ),
        ));
    }
    // Every backend may be the primary one day; at least `count` of the others must be
    // allowed to be synchronous (and so to be promoted).
    let backends = cfg.backends();
    let promotable = backends.iter().filter(|b| !b.policy.nofailover).count();
    if promotable < 2 {
        return Err((
            "failover.synchronous".into(),
            format!(
                "{:?} needs at least two backends without nofailover: whichever is primary, a standby that may be promoted is made synchronous",
                f.synchronous.to_string()
            ),
        ));
    }
    let most = promotable - 1;
    if f.synchronous_count as usize > most {
        return Err((
            "failover.synchronous_count".into(),
            format!("{} is more than the {most} standby(s) that may be promoted while another backend is primary", f.synchronous_count),
        ));
    }
    Ok(())
}

/// Levels a filter may use.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A `tracing` filter as `RUST_LOG` takes it, but strict: every comma-separated directive is
/// a level or `target=level` (a bare word that is no level is refused, where the filter
/// library would take it for a target and log nothing else).
pub fn log_filter(s: &str) -> Result<(), String> {
    let directives: Vec<&str> = s.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if directives.is_empty() {
        return Err("is empty; use a level (trace, debug, info, warn, error, off) or target=level".into());
    }
    for d in directives {
        let level = match d.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("{d:?} has no target before \"=\"")),
            None => d,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("{level:?} is not a level (trace, debug, info, warn, error, off); write a level or target=level"));
        }
        d.parse::<tracing_subscriber::filter::Directive>().map_err(|e| format!("{d:?}: {e}"))?;
    }
    Ok(())
}

/// Where the value of `key` came from: the flag, else the variable, else the file (when it
/// was given), else the built-in default.
pub(super) fn origin(key: &str, file: Option<&Path>, env: EnvLookup<'_>, flags: &Overrides) -> (String, String) {
    let flag = match key {
        "listen" => flags.listen.is_some().then_some("--listen"),
        "listen_ro" => flags.listen_ro.is_some().then_some("--listen-ro"),
        "admin_listen" => flags.admin_listen.is_some().then_some("--admin-listen"),
        "log_level" => flags.log_level.is_some().then_some("--log-level"),
        k if k.starts_with("standbys[") => (!flags.standbys.is_empty()).then_some("--standby"),
        "coordination.etcd_endpoints" => (!flags.etcd_endpoints.is_empty()).then_some("--etcd-endpoint"),
        "coordination.cluster" => flags.cluster.is_some().then_some("--cluster"),
        "coordination.name" => flags.name.is_some().then_some("--name"),
        _ => None,
    };
    if let Some(f) = flag {
        return ("command line".into(), f.into());
    }
    let var = match key {
        "listen" => Some("PGFAILOVER_LISTEN"),
        "listen_ro" => Some("PGFAILOVER_LISTEN_RO"),
        "admin_listen" => Some("PGFAILOVER_ADMIN_LISTEN"),
        "log_level" => Some("PGFAILOVER_LOG_LEVEL"),
        "health.interval" => Some("FAILOVER_HEALTH_CHECK_INTERVAL"),
        "proxy.max_client_connections" => Some("PGFAILOVER_MAX_CLIENT_CONNECTIONS"),
        "admin_token" if env("PGFAILOVER_ADMIN_TOKEN_FILE").is_some() => Some("PGFAILOVER_ADMIN_TOKEN_FILE"),
        "admin_token" => Some("PGFAILOVER_ADMIN_TOKEN"),
        "admin_read_token" if env("PGFAILOVER_ADMIN_READ_TOKEN_FILE").is_some() => Some("PGFAILOVER_ADMIN_READ_TOKEN_FILE"),
        "admin_read_token" => Some("PGFAILOVER_ADMIN_READ_TOKEN"),
        "primary.host" => Some("DB_HOST"),
        "primary.port" => Some("DB_PORT"),
        "primary.name" => Some("PGFAILOVER_PRIMARY_NAME"),
        k if k.starts_with("standbys[") => Some("PGFAILOVER_STANDBYS"),
        "coordination.etcd_endpoints" => Some("PGFAILOVER_ETCD_ENDPOINTS"),
        "coordination.cluster" => Some("PGFAILOVER_CLUSTER"),
        "coordination.name" => Some("PGFAILOVER_NAME"),
        "coordination.lease_ttl" => Some("PGFAILOVER_LEASE_TTL"),
        "tls.mode" => Some("PGFAILOVER_TLS_MODE"),
        "tls.cert_file" => Some("PGFAILOVER_TLS_CERT_FILE"),
        "tls.key_file" => Some("PGFAILOVER_TLS_KEY_FILE"),
        "tls.client_ca_file" => Some("PGFAILOVER_TLS_CLIENT_CA_FILE"),
        "tls.require_client_tls" => Some("PGFAILOVER_TLS_REQUIRE_CLIENT_TLS"),
        "tls.server_sslmode" => Some("PGFAILOVER_SERVER_SSLMODE"),
        "tls.server_ca_file" => Some("PGFAILOVER_SERVER_CA_FILE"),
        "failover.synchronous" => Some("PGFAILOVER_SYNCHRONOUS"),
        "failover.synchronous_count" => Some("PGFAILOVER_SYNCHRONOUS_COUNT"),
        _ => None,
    };
    if let Some(v) = var.filter(|v| env(v).is_some()) {
        return ("environment".into(), v.into());
    }
    match file {
        Some(f) => (f.display().to_string(), key.into()),
        None => ("default".into(), key.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn log_filters_are_strict() {
        for ok in ["info", "warn", "pgfailover=debug", "info,pgfailover::monitor=trace", "OFF", "debug,"] {
            assert!(log_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["warnn", "debugg", "nonsense===", "pgfailover", "=info", "", "pgfailover=loud"] {
            assert!(log_filter(bad).is_err(), "{bad}");
        }
    }
}
