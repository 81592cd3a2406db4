//! The file layer: strict TOML parsing into raw structs, merged over the defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::parse::{parse_addr, parse_balance, parse_fallback, parse_log_format, parse_promote, parse_quorum, read_secret_file, set, standby_from};
use super::policy::{parse_synchronous, parse_zone_policy};
use super::{BackendConfig, Config, ConfigError, Secret, SecretFile};

pub(super) fn parse_file(label: &str, text: &str) -> Result<RawFile, ConfigError> {
    let value: toml::Value = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1)).unwrap_or(0);
        ConfigError::invalid(label, format!("line {line}"), e.message().trim().replace('\n', " "))
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let reason = e.into_inner().to_string().replace('\n', " ");
        // The key is named once, in front: drop the parser's own " in `table`" suffix.
        let reason = reason.trim();
        let reason = match reason.rfind(" in `") {
            Some(at) if reason.ends_with('`') => &reason[..at],
            _ => reason,
        }
        .to_string();
        ConfigError::invalid(label, key, reason)
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    listen: Option<String>,
    listen_ro: Option<String>,
    admin_listen: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    admin_read_token: Option<String>,
    admin_read_token_file: Option<PathBuf>,
    admin_metrics_open: Option<bool>,
    state_dir: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<String>,
    health: Option<RawHealth>,
    failover: Option<RawFailover>,
    proxy: Option<RawProxy>,
    read: Option<RawRead>,
    coordination: Option<RawCoordination>,
    tls: Option<super::tls::RawTls>,
    primary: Option<RawBackend>,
    #[serde(default)]
    standbys: Vec<RawBackend>,
}

impl RawFile {
    /// The keys of this file that hold a secret in the file itself.
    pub(super) fn inline_secrets(&self) -> Vec<String> {
        let mut keys = Vec::new();
        if self.admin_token.is_some() {
            keys.push("admin_token".to_string());
        }
        if self.admin_read_token.is_some() {
            keys.push("admin_read_token".to_string());
        }
        if self.coordination.as_ref().is_some_and(|c| c.password.is_some()) {
            keys.push("coordination.password".to_string());
        }
        if self.primary.as_ref().is_some_and(|p| p.password.is_some()) {
            keys.push("primary.password".to_string());
        }
        for (i, s) in self.standbys.iter().enumerate() {
            if s.password.is_some() {
                keys.push(format!("standbys[{i}].password"));
            }
        }
        keys
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    failure_threshold: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    promote: Option<String>,
    #[serde(default, with = "humantime_serde")]
    hold_timeout: Option<Duration>,
    max_lag_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    promote_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    trigger_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
    repoint_standbys: Option<bool>,
    quorum: Option<String>,
    synchronous: Option<String>,
    synchronous_count: Option<u32>,
    zone_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordination {
    etcd_endpoints: Option<Vec<String>>,
    cluster: Option<String>,
    name: Option<String>,
    #[serde(default, with = "humantime_serde")]
    lease_ttl: Option<Duration>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keepalive_idle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keepalive_interval: Option<Duration>,
    keepalive_count: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    user_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_delay: Option<Duration>,
    worker_threads: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    startup_timeout: Option<Duration>,
    max_client_connections: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRead {
    max_lag_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    max_lag: Option<Duration>,
    balance: Option<String>,
    fallback: Option<String>,
    include_primary: Option<bool>,
    #[serde(default)]
    listeners: Vec<RawReadListener>,
    #[serde(default, with = "humantime_serde")]
    min_lsn_wait: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReadListener {
    listen: String,
    max_lag_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    max_lag: Option<Duration>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    ssl: Option<bool>,
    ssl_root_cert: Option<PathBuf>,
    priority: Option<u32>,
    nofailover: Option<bool>,
    zone: Option<String>,
}

fn resolve(base: Option<&Path>, p: PathBuf) -> PathBuf {
    match base {
        Some(b) if p.is_relative() && !b.as_os_str().is_empty() => b.join(p),
        _ => p,
    }
}

pub(super) fn apply_file(cfg: &mut Config, raw: RawFile, label: &str, base: Option<&Path>) -> Result<(), ConfigError> {
    if let Some(s) = raw.listen {
        cfg.listen = parse_addr(&s).map_err(|r| ConfigError::invalid(label, "listen", r))?;
    }
    if let Some(s) = raw.listen_ro {
        cfg.listen_ro = Some(parse_addr(&s).map_err(|r| ConfigError::invalid(label, "listen_ro", r))?);
    }
    if let Some(r) = raw.read {
        set(&mut cfg.read.max_lag_bytes, r.max_lag_bytes);
        set(&mut cfg.read.max_lag, r.max_lag);
        set(&mut cfg.read.include_primary, r.include_primary);
        if let Some(b) = r.balance {
            cfg.read.balance = parse_balance(&b).map_err(|e| ConfigError::invalid(label, "read.balance", e))?;
        }
        if let Some(f) = r.fallback {
            cfg.read.fallback = parse_fallback(&f).map_err(|e| ConfigError::invalid(label, "read.fallback", e))?;
        }
        set(&mut cfg.read.min_lsn_wait, r.min_lsn_wait);
        for (i, l) in r.listeners.into_iter().enumerate() {
            let listen = parse_addr(&l.listen).map_err(|e| ConfigError::invalid(label, format!("read.listeners[{i}].listen"), e))?;
            cfg.read.listeners.push(super::ReadListener { listen, max_lag: l.max_lag, max_lag_bytes: l.max_lag_bytes });
        }
    }
    if let Some(t) = raw.tls {
        super::tls::apply_file(cfg, t, label, |p| resolve(base, p))?;
    }
    if let Some(c) = raw.coordination {
        let mut co = super::CoordinationConfig::with_defaults();
        set(&mut co.etcd_endpoints, c.etcd_endpoints);
        set(&mut co.cluster, c.cluster);
        set(&mut co.name, c.name);
        set(&mut co.lease_ttl, c.lease_ttl);
        co.user = c.user;
        if let Some(p) = c.password {
            co.password = Some(Secret::new(p));
        }
        if let Some(p) = c.password_file {
            co.password = Some(read_secret_file(label, "coordination.password_file", &resolve(base, p), &mut cfg.secret_files)?);
        }
        co.ca_file = c.ca_file.map(|p| resolve(base, p));
        co.cert_file = c.cert_file.map(|p| resolve(base, p));
        co.key_file = c.key_file.map(|p| resolve(base, p));
        // A private key: read by the etcd client later, reported with the other secrets.
        if let Some(k) = &co.key_file {
            cfg.secret_files.push(SecretFile { key: format!("{label}: coordination.key_file"), path: k.clone() });
        }
        cfg.coordination = Some(co);
    }
    if let Some(s) = raw.admin_listen {
        cfg.admin_listen = parse_addr(&s).map_err(|r| ConfigError::invalid(label, "admin_listen", r))?;
    }
    if let Some(t) = raw.admin_token {
        cfg.admin_token = Some(Secret::new(t));
    }
    if let Some(p) = raw.admin_token_file {
        cfg.admin_token = Some(read_secret_file(label, "admin_token_file", &resolve(base, p), &mut cfg.secret_files)?);
    }
    if let Some(t) = raw.admin_read_token {
        cfg.admin_read_token = Some(Secret::new(t));
    }
    if let Some(p) = raw.admin_read_token_file {
        cfg.admin_read_token = Some(read_secret_file(label, "admin_read_token_file", &resolve(base, p), &mut cfg.secret_files)?);
    }
    set(&mut cfg.admin_metrics_open, raw.admin_metrics_open);
    if let Some(p) = raw.state_dir {
        cfg.state_dir = Some(resolve(base, p));
    }
    if let Some(s) = raw.log_level {
        cfg.log_level = s;
    }
    if let Some(s) = raw.log_format {
        cfg.log_format = parse_log_format(&s).map_err(|r| ConfigError::invalid(label, "log_format", r))?;
    }
    if let Some(h) = raw.health {
        set(&mut cfg.health.interval, h.interval);
        set(&mut cfg.health.timeout, h.timeout);
        set(&mut cfg.health.failure_threshold, h.failure_threshold);
    }
    if let Some(f) = raw.failover {
        if let Some(p) = f.promote {
            cfg.failover.promote = parse_promote(&p).map_err(|r| ConfigError::invalid(label, "failover.promote", r))?;
        }
        set(&mut cfg.failover.hold_timeout, f.hold_timeout);
        set(&mut cfg.failover.max_lag_bytes, f.max_lag_bytes);
        set(&mut cfg.failover.promote_timeout, f.promote_timeout);
        set(&mut cfg.failover.trigger_wait, f.trigger_wait);
        set(&mut cfg.failover.drain_timeout, f.drain_timeout);
        set(&mut cfg.failover.repoint_standbys, f.repoint_standbys);
        if let Some(q) = f.quorum {
            cfg.failover.quorum = parse_quorum(&q).map_err(|r| ConfigError::invalid(label, "failover.quorum", r))?;
        }
        if let Some(m) = f.synchronous {
            cfg.failover.synchronous = parse_synchronous(&m).map_err(|r| ConfigError::invalid(label, "failover.synchronous", r))?;
        }
        set(&mut cfg.failover.synchronous_count, f.synchronous_count);
        if let Some(z) = f.zone_policy {
            cfg.failover.zone_policy = parse_zone_policy(&z).map_err(|r| ConfigError::invalid(label, "failover.zone_policy", r))?;
        }
    }
    if let Some(p) = raw.proxy {
        set(&mut cfg.proxy.connect_timeout, p.connect_timeout);
        set(&mut cfg.proxy.keepalive_idle, p.keepalive_idle);
        set(&mut cfg.proxy.keepalive_interval, p.keepalive_interval);
        set(&mut cfg.proxy.keepalive_count, p.keepalive_count);
        set(&mut cfg.proxy.user_timeout, p.user_timeout);
        set(&mut cfg.proxy.shutdown_grace, p.shutdown_grace);
        set(&mut cfg.proxy.shutdown_delay, p.shutdown_delay);
        set(&mut cfg.proxy.worker_threads, p.worker_threads);
        set(&mut cfg.proxy.startup_timeout, p.startup_timeout);
        set(&mut cfg.proxy.max_client_connections, p.max_client_connections);
    }
    if let Some(p) = raw.primary {
        merge_backend(&mut cfg.primary, p, label, "primary", base, &mut cfg.secret_files)?;
    }
    let primary = cfg.primary.clone();
    for (i, s) in raw.standbys.into_iter().enumerate() {
        let mut b = standby_from(&primary, i);
        merge_backend(&mut b, s, label, &format!("standbys[{i}]"), base, &mut cfg.secret_files)?;
        cfg.standbys.push(b);
    }
    Ok(())
}

fn merge_backend(b: &mut BackendConfig, raw: RawBackend, label: &str, key: &str, base: Option<&Path>, files: &mut Vec<SecretFile>) -> Result<(), ConfigError> {
    set(&mut b.name, raw.name);
    set(&mut b.host, raw.host);
    set(&mut b.port, raw.port);
    set(&mut b.database, raw.database);
    set(&mut b.user, raw.user);
    set(&mut b.ssl, raw.ssl);
    if let Some(p) = raw.password {
        b.password = Some(Secret::new(p));
    }
    if let Some(p) = raw.password_file {
        b.password = Some(read_secret_file(label, &format!("{key}.password_file"), &resolve(base, p), files)?);
    }
    if let Some(p) = raw.ssl_root_cert {
        b.ssl_root_cert = Some(resolve(base, p));
    }
    set(&mut b.policy.priority, raw.priority);
    set(&mut b.policy.nofailover, raw.nofailover);
    if raw.zone.is_some() {
        b.policy.zone = raw.zone;
    }
    Ok(())
}
