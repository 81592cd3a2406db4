//! The environment and command-line layers, and the value parsers they share with the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::parse::{parse_addr, parse_bool, parse_log_format, parse_promote, parse_quorum, read_secret_file, set, standby_from};
use super::policy::{parse_synchronous, parse_zone_policy};
use super::{BackendConfig, Config, ConfigError, EnvLookup, Overrides, Secret};
use crate::duration::parse_duration;

/// `name=host:port`, `host:port` or `[v6]:port`; a missing name becomes `standby-<index>`.
fn parse_standby(primary: &BackendConfig, index: usize, spec: &str) -> Result<BackendConfig, String> {
    let spec = spec.trim();
    let (name, addr) = match spec.split_once('=') {
        Some((n, a)) if !n.is_empty() => (Some(n.trim()), a.trim()),
        Some(_) => return Err(format!("{spec:?} has an empty name")),
        None => (None, spec),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{spec:?} is not name=host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("{spec:?} has a bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{spec:?} has an empty host"));
    }
    let mut b = standby_from(primary, index);
    if let Some(n) = name {
        b.name = n.to_string();
    }
    b.host = host.to_string();
    b.port = port;
    Ok(b)
}

const ENV: &str = "environment";

pub(super) fn apply_env(cfg: &mut Config, env: EnvLookup<'_>) -> Result<(), ConfigError> {
    let bad = |key: &str, reason: String| ConfigError::invalid(ENV, key, reason);
    if let Some(v) = env("DB_HOST") {
        cfg.primary.host = v;
    }
    if let Some(v) = env("DB_PORT") {
        cfg.primary.port = v.parse().map_err(|_| bad("DB_PORT", format!("{v:?} is not a port")))?;
    }
    if let Some(v) = env("DB_NAME") {
        cfg.primary.database = v;
    }
    if let Some(v) = env("DB_USER") {
        cfg.primary.user = v;
    }
    if let Some(v) = env("DB_PASSWORD") {
        cfg.primary.password = Some(Secret::new(v));
    }
    if let Some(p) = env("DB_PASSWORD_FILE") {
        cfg.primary.password = Some(read_secret_file(ENV, "DB_PASSWORD_FILE", Path::new(&p), &mut cfg.secret_files)?);
    }
    if let Some(v) = env("DB_SSL") {
        cfg.primary.ssl = parse_bool(&v).ok_or_else(|| bad("DB_SSL", format!("{v:?} is not true/false")))?;
    }
    if let Some(v) = env("PGFAILOVER_PRIMARY_NAME") {
        cfg.primary.name = v;
    }
    // Credentials given through the seed's variables apply to the standbys too (the seed
    // configures one user for every database).
    for s in cfg.standbys.iter_mut() {
        inherit_credentials(s, &cfg.primary, env);
    }
    if let Some(v) = env("PGFAILOVER_STANDBYS") {
        let mut list = Vec::new();
        for (i, spec) in v.split(',').filter(|s| !s.trim().is_empty()).enumerate() {
            list.push(parse_standby(&cfg.primary, i, spec).map_err(|r| bad("PGFAILOVER_STANDBYS", r))?);
        }
        cfg.standbys = list;
    }
    if let Some(v) = env("FAILOVER_HEALTH_CHECK_INTERVAL") {
        let ms: u64 = v.trim().parse().map_err(|_| bad("FAILOVER_HEALTH_CHECK_INTERVAL", format!("{v:?} is not milliseconds")))?;
        cfg.health.interval = Duration::from_millis(ms);
    }
    if let Some(v) = env("PGFAILOVER_ADMIN_TOKEN") {
        cfg.admin_token = Some(Secret::new(v));
    }
    if let Some(p) = env("PGFAILOVER_ADMIN_TOKEN_FILE") {
        cfg.admin_token = Some(read_secret_file(ENV, "PGFAILOVER_ADMIN_TOKEN_FILE", Path::new(&p), &mut cfg.secret_files)?);
    }
    if let Some(v) = env("PGFAILOVER_ADMIN_READ_TOKEN") {
        cfg.admin_read_token = Some(Secret::new(v));
    }
    if let Some(p) = env("PGFAILOVER_ADMIN_READ_TOKEN_FILE") {
        cfg.admin_read_token = Some(read_secret_file(ENV, "PGFAILOVER_ADMIN_READ_TOKEN_FILE", Path::new(&p), &mut cfg.secret_files)?);
    }
    if let Some(v) = env("PGFAILOVER_ADMIN_METRICS_OPEN") {
        cfg.admin_metrics_open = parse_bool(&v).ok_or_else(|| bad("PGFAILOVER_ADMIN_METRICS_OPEN", format!("{v:?} is not true/false")))?;
    }
    if let Some(v) = env("PGFAILOVER_LISTEN") {
        cfg.listen = parse_addr(&v).map_err(|r| bad("PGFAILOVER_LISTEN", r))?;
    }
    if let Some(v) = env("PGFAILOVER_LISTEN_RO") {
        cfg.listen_ro = if v.trim().is_empty() { None } else { Some(parse_addr(&v).map_err(|r| bad("PGFAILOVER_LISTEN_RO", r))?) };
    }
    if let Some(v) = env("PGFAILOVER_ADMIN_LISTEN") {
        cfg.admin_listen = parse_addr(&v).map_err(|r| bad("PGFAILOVER_ADMIN_LISTEN", r))?;
    }
    if let Some(v) = env("PGFAILOVER_PROMOTE") {
        cfg.failover.promote = parse_promote(&v).map_err(|r| bad("PGFAILOVER_PROMOTE", r))?;
    }
    if let Some(v) = env("PGFAILOVER_SHUTDOWN_DELAY") {
        cfg.proxy.shutdown_delay = parse_duration(&v).map_err(|r| bad("PGFAILOVER_SHUTDOWN_DELAY", r))?;
    }
    if let Some(v) = env("PGFAILOVER_HOLD_TIMEOUT") {
        cfg.failover.hold_timeout = parse_duration(&v).map_err(|r| bad("PGFAILOVER_HOLD_TIMEOUT", r))?;
    }
    if let Some(v) = env("PGFAILOVER_DRAIN_TIMEOUT") {
        cfg.failover.drain_timeout = parse_duration(&v).map_err(|r| bad("PGFAILOVER_DRAIN_TIMEOUT", r))?;
    }
    if let Some(v) = env("PGFAILOVER_REPOINT_STANDBYS") {
        cfg.failover.repoint_standbys = parse_bool(&v).ok_or_else(|| bad("PGFAILOVER_REPOINT_STANDBYS", format!("{v:?} is not true/false")))?;
    }
    if let Some(v) = env("PGFAILOVER_STATE_DIR") {
        cfg.state_dir = Some(PathBuf::from(v));
    }
    if let Some(v) = env("PGFAILOVER_LOG_FORMAT") {
        cfg.log_format = parse_log_format(&v).map_err(|r| bad("PGFAILOVER_LOG_FORMAT", r))?;
    }
    if let Some(v) = env("PGFAILOVER_WORKER_THREADS") {
        cfg.proxy.worker_threads = v.trim().parse().map_err(|_| bad("PGFAILOVER_WORKER_THREADS", format!("{v:?} is not a number")))?;
    }
    if let Some(v) = env("PGFAILOVER_MAX_CLIENT_CONNECTIONS") {
        cfg.proxy.max_client_connections = v.trim().parse().map_err(|_| bad("PGFAILOVER_MAX_CLIENT_CONNECTIONS", format!("{v:?} is not a number")))?;
    }
    // Coordination: the endpoints turn it on (with the defaults for the rest).
    if let Some(v) = env("PGFAILOVER_ETCD_ENDPOINTS") {
        let list: Vec<String> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        cfg.coordination.get_or_insert_with(super::CoordinationConfig::with_defaults).etcd_endpoints = list;
    }
    let files = &mut cfg.secret_files;
    if let Some(c) = cfg.coordination.as_mut() {
        if let Some(v) = env("PGFAILOVER_CLUSTER") {
            c.cluster = v;
        }
        if let Some(v) = env("PGFAILOVER_NAME") {
            c.name = v;
        }
        if let Some(v) = env("PGFAILOVER_LEASE_TTL") {
            c.lease_ttl = parse_duration(&v).map_err(|r| bad("PGFAILOVER_LEASE_TTL", r))?;
        }
        if let Some(v) = env("PGFAILOVER_ETCD_USER") {
            c.user = Some(v);
        }
        if let Some(v) = env("PGFAILOVER_ETCD_PASSWORD") {
            c.password = Some(Secret::new(v));
        }
        if let Some(p) = env("PGFAILOVER_ETCD_PASSWORD_FILE") {
            c.password = Some(read_secret_file(ENV, "PGFAILOVER_ETCD_PASSWORD_FILE", Path::new(&p), files)?);
        }
    }
    if let Some(v) = env("PGFAILOVER_QUORUM") {
        cfg.failover.quorum = parse_quorum(&v).map_err(|r| bad("PGFAILOVER_QUORUM", r))?;
    }
    if let Some(v) = env("PGFAILOVER_SYNCHRONOUS") {
        cfg.failover.synchronous = parse_synchronous(&v).map_err(|r| bad("PGFAILOVER_SYNCHRONOUS", r))?;
    }
    if let Some(v) = env("PGFAILOVER_SYNCHRONOUS_COUNT") {
        cfg.failover.synchronous_count = v.trim().parse().map_err(|_| bad("PGFAILOVER_SYNCHRONOUS_COUNT", format!("{v:?} is not a number")))?;
    }
    if let Some(v) = env("PGFAILOVER_ZONE_POLICY") {
        cfg.failover.zone_policy = parse_zone_policy(&v).map_err(|r| bad("PGFAILOVER_ZONE_POLICY", r))?;
    }
    if let Some(v) = env("PGFAILOVER_LOG_LEVEL") {
        cfg.log_level = v;
    }
    Ok(())
}

fn inherit_credentials(s: &mut BackendConfig, p: &BackendConfig, env: EnvLookup<'_>) {
    if env("DB_USER").is_some() {
        s.user = p.user.clone();
    }
    if env("DB_PASSWORD").is_some() || env("DB_PASSWORD_FILE").is_some() {
        s.password = p.password.clone();
    }
    if env("DB_NAME").is_some() {
        s.database = p.database.clone();
    }
    if env("DB_SSL").is_some() {
        s.ssl = p.ssl;
    }
}

const FLAGS: &str = "command line";

pub(super) fn apply_flags(cfg: &mut Config, o: &Overrides) -> Result<(), ConfigError> {
    set(&mut cfg.listen, o.listen);
    if o.listen_ro.is_some() {
        cfg.listen_ro = o.listen_ro;
    }
    set(&mut cfg.admin_listen, o.admin_listen);
    set(&mut cfg.log_level, o.log_level.clone());
    if let Some(s) = &o.log_format {
        cfg.log_format = parse_log_format(s).map_err(|r| ConfigError::invalid(FLAGS, "--log-format", r))?;
    }
    if let Some(s) = &o.promote {
        cfg.failover.promote = parse_promote(s).map_err(|r| ConfigError::invalid(FLAGS, "--promote", r))?;
    }
    if o.state_dir.is_some() {
        cfg.state_dir = o.state_dir.clone();
    }
    if !o.etcd_endpoints.is_empty() {
        cfg.coordination.get_or_insert_with(super::CoordinationConfig::with_defaults).etcd_endpoints = o.etcd_endpoints.clone();
    }
    if let Some(c) = cfg.coordination.as_mut() {
        set(&mut c.cluster, o.cluster.clone());
        set(&mut c.name, o.name.clone());
    }
    if !o.standbys.is_empty() {
        let mut list = Vec::new();
        for (i, spec) in o.standbys.iter().enumerate() {
            list.push(parse_standby(&cfg.primary, i, spec).map_err(|r| ConfigError::invalid(FLAGS, "--standby", r))?);
        }
        cfg.standbys = list;
    }
    Ok(())
}
