//! Configuration: defaults < `proxy.toml` < environment < command-line flags.
//!
//! The file is parsed strictly (unknown keys are errors) and every error names the file, the
//! key and the reason on one line. Secrets (`password`, the admin token) are wrapped in
//! [`Secret`], whose `Debug`/`Display` never print the value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::duration::parse_duration;

/// Everything that can go wrong while building a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: {key}: {reason}")]
    Invalid { file: String, key: String, reason: String },
}

impl ConfigError {
    fn invalid(file: &str, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { file: file.to_string(), key: key.into(), reason: reason.into() }
    }
}

/// A value that must never be printed: passwords and tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The only way to read the value; grep for it to audit where secrets go.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Whether the proxy promotes a standby itself or follows an external manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromoteMode {
    /// Run `pg_promote()` on the best eligible standby.
    Auto,
    /// Never promote: wait for a backend to report itself primary and follow it.
    Never,
}

/// Plain text for people, JSON lines for log shippers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One PostgreSQL server the proxy knows about.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    /// Stable name used in the API, metrics, logs and history.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Database the health checks connect to.
    pub database: String,
    /// Role the health checks (and promotion) use; needs `pg_promote` rights for auto mode.
    pub user: String,
    /// Only for the health checks; client traffic carries its own credentials.
    pub password: Option<Secret>,
    /// Health checks connect over TLS (certificates are not verified unless `ssl_root_cert`).
    pub ssl: bool,
    /// CA bundle to verify the server certificate of health-check connections.
    pub ssl_root_cert: Option<PathBuf>,
}

impl BackendConfig {
    /// `host:port` for logs and errors, with brackets for IPv6 literals.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `[health]`: how often and how strictly each backend is checked.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    pub interval: Duration,
    /// Bound on connect + query of one check, so a hung server counts as a failure.
    pub timeout: Duration,
    /// Consecutive failures before a backend is unhealthy (hysteresis against blips).
    pub failure_threshold: u32,
}

/// `[failover]`: what happens when the primary is lost.
#[derive(Clone, Debug, PartialEq)]
pub struct FailoverConfig {
    pub promote: PromoteMode,
    /// How long a new client waits for a routable primary before it is refused with 57P03.
    pub hold_timeout: Duration,
    /// A standby further behind than this is never promoted automatically.
    pub max_lag_bytes: u64,
    /// Upper bound on `pg_promote(true, …)` and on waiting for the promoted node to answer.
    pub promote_timeout: Duration,
    /// How long `POST /failover/trigger` waits for the failover before answering 202.
    pub trigger_wait: Duration,
}

/// `[proxy]`: socket behaviour of the data path.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Bound on the TCP connect to the backend.
    pub connect_timeout: Duration,
    /// Idle time before the first keepalive probe, on both legs.
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_count: u32,
    /// `TCP_USER_TIMEOUT`: unacknowledged data older than this kills the connection (Linux).
    pub user_timeout: Duration,
    /// How long sessions may drain after SIGTERM before they are closed.
    pub shutdown_grace: Duration,
}

/// The whole, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where applications connect.
    pub listen: SocketAddr,
    /// The HTTP side port.
    pub admin_listen: SocketAddr,
    /// Bearer token for POST endpoints; `None` disables them (403).
    pub admin_token: Option<Secret>,
    /// Directory for the history journal (fences and events survive restarts).
    pub state_dir: Option<PathBuf>,
    /// `tracing` filter, overridden by `RUST_LOG`.
    pub log_level: String,
    pub log_format: LogFormat,
    pub health: HealthConfig,
    pub failover: FailoverConfig,
    pub proxy: ProxyConfig,
    /// Configured primary: only a starting hint, the servers' own answers decide.
    pub primary: BackendConfig,
    pub standbys: Vec<BackendConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9432)),
            admin_token: None,
            state_dir: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            health: HealthConfig {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                failure_threshold: 3,
            },
            failover: FailoverConfig {
                promote: PromoteMode::Auto,
                hold_timeout: Duration::from_secs(5),
                max_lag_bytes: 16 * 1024 * 1024,
                promote_timeout: Duration::from_secs(10),
                trigger_wait: Duration::from_secs(15),
            },
            proxy: ProxyConfig {
                connect_timeout: Duration::from_secs(2),
                keepalive_idle: Duration::from_secs(10),
                keepalive_interval: Duration::from_secs(3),
                keepalive_count: 3,
                user_timeout: Duration::from_secs(20),
                shutdown_grace: Duration::from_secs(10),
            },
            primary: BackendConfig {
                name: "primary".into(),
                host: "127.0.0.1".into(),
                port: 5432,
                database: "postgres".into(),
                user: "postgres".into(),
                password: None,
                ssl: false,
                ssl_root_cert: None,
            },
            standbys: Vec::new(),
        }
    }
}

impl Config {
    /// All backends in config order: the primary first, then the standbys. The position in
    /// this list is the backend's stable index everywhere else.
    pub fn backends(&self) -> Vec<BackendConfig> {
        std::iter::once(self.primary.clone()).chain(self.standbys.iter().cloned()).collect()
    }
}

/// Command-line overrides; `None` leaves the lower layers alone.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub promote: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// `name=host:port` or `host:port`, replacing every standby from file and environment.
    pub standbys: Vec<String>,
}

/// Reads environment variables; a function so tests need not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as an [`EnvLookup`].
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

impl Config {
    /// Builds the configuration from all layers and validates it.
    pub fn load(
        file: Option<&Path>,
        env: EnvLookup<'_>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = file {
            let label = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Read { file: label.clone(), reason: e.to_string() })?;
            let raw = parse_file(&label, &text)?;
            apply_file(&mut cfg, raw, &label, path.parent())?;
        }
        apply_env(&mut cfg, env)?;
        apply_flags(&mut cfg, flags)?;
        validate(&cfg)?;
        Ok(cfg)
    }
}

fn parse_file(label: &str, text: &str) -> Result<RawFile, ConfigError> {
    let value: toml::Value = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .unwrap_or(0);
        ConfigError::invalid(label, format!("line {line}"), e.message().trim().replace('\n', " "))
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::invalid(label, key, e.into_inner().to_string().replace('\n', " "))
    })
}

/// A duration written as a human string: "250ms", "10s", "1m".
#[derive(Clone, Copy, Debug)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<String>,
    admin_listen: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<String>,
    health: Option<RawHealth>,
    failover: Option<RawFailover>,
    proxy: Option<RawProxy>,
    primary: Option<RawBackend>,
    #[serde(default)]
    standbys: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    failure_threshold: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    promote: Option<String>,
    hold_timeout: Option<HumanDuration>,
    max_lag_bytes: Option<u64>,
    promote_timeout: Option<HumanDuration>,
    trigger_wait: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    connect_timeout: Option<HumanDuration>,
    keepalive_idle: Option<HumanDuration>,
    keepalive_interval: Option<HumanDuration>,
    keepalive_count: Option<u32>,
    user_timeout: Option<HumanDuration>,
    shutdown_grace: Option<HumanDuration>,
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
}

fn read_secret_file(label: &str, key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid(label, key, format!("cannot read {}: {e}", path.display()))
    })?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

fn resolve(base: Option<&Path>, p: PathBuf) -> PathBuf {
    match base {
        Some(b) if p.is_relative() && !b.as_os_str().is_empty() => b.join(p),
        _ => p,
    }
}

fn apply_file(
    cfg: &mut Config,
    raw: RawFile,
    label: &str,
    base: Option<&Path>,
) -> Result<(), ConfigError> {
    if let Some(s) = raw.listen {
        cfg.listen = parse_addr(&s).map_err(|r| ConfigError::invalid(label, "listen", r))?;
    }
    if let Some(s) = raw.admin_listen {
        cfg.admin_listen =
            parse_addr(&s).map_err(|r| ConfigError::invalid(label, "admin_listen", r))?;
    }
    if let Some(t) = raw.admin_token {
        cfg.admin_token = Some(Secret::new(t));
    }
    if let Some(p) = raw.admin_token_file {
        cfg.admin_token = Some(read_secret_file(label, "admin_token_file", &resolve(base, p))?);
    }
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
        set(&mut cfg.health.interval, h.interval.map(|d| d.0));
        set(&mut cfg.health.timeout, h.timeout.map(|d| d.0));
        set(&mut cfg.health.failure_threshold, h.failure_threshold);
    }
    if let Some(f) = raw.failover {
        if let Some(p) = f.promote {
            cfg.failover.promote =
                parse_promote(&p).map_err(|r| ConfigError::invalid(label, "failover.promote", r))?;
        }
        set(&mut cfg.failover.hold_timeout, f.hold_timeout.map(|d| d.0));
        set(&mut cfg.failover.max_lag_bytes, f.max_lag_bytes);
        set(&mut cfg.failover.promote_timeout, f.promote_timeout.map(|d| d.0));
        set(&mut cfg.failover.trigger_wait, f.trigger_wait.map(|d| d.0));
    }
    if let Some(p) = raw.proxy {
        set(&mut cfg.proxy.connect_timeout, p.connect_timeout.map(|d| d.0));
        set(&mut cfg.proxy.keepalive_idle, p.keepalive_idle.map(|d| d.0));
        set(&mut cfg.proxy.keepalive_interval, p.keepalive_interval.map(|d| d.0));
        set(&mut cfg.proxy.keepalive_count, p.keepalive_count);
        set(&mut cfg.proxy.user_timeout, p.user_timeout.map(|d| d.0));
        set(&mut cfg.proxy.shutdown_grace, p.shutdown_grace.map(|d| d.0));
    }
    if let Some(p) = raw.primary {
        merge_backend(&mut cfg.primary, p, label, "primary", base)?;
    }
    let primary = cfg.primary.clone();
    for (i, s) in raw.standbys.into_iter().enumerate() {
        let mut b = standby_from(&primary, i);
        merge_backend(&mut b, s, label, &format!("standbys[{i}]"), base)?;
        cfg.standbys.push(b);
    }
    Ok(())
}

/// A standby inherits the primary's database, credentials and TLS settings.
fn standby_from(primary: &BackendConfig, index: usize) -> BackendConfig {
    BackendConfig { name: format!("standby-{index}"), ..primary.clone() }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn merge_backend(
    b: &mut BackendConfig,
    raw: RawBackend,
    label: &str,
    key: &str,
    base: Option<&Path>,
) -> Result<(), ConfigError> {
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
        b.password = Some(read_secret_file(label, &format!("{key}.password_file"), &resolve(base, p))?);
    }
    if let Some(p) = raw.ssl_root_cert {
        b.ssl_root_cert = Some(resolve(base, p));
    }
    Ok(())
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:6432 or [::1]:6432"))
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{s:?} is not one of \"text\", \"json\"")),
    }
}

fn parse_promote(s: &str) -> Result<PromoteMode, String> {
    match s {
        "auto" => Ok(PromoteMode::Auto),
        "never" => Ok(PromoteMode::Never),
        _ => Err(format!("{s:?} is not one of \"auto\", \"never\"")),
    }
}

/// `name=host:port`, `host:port` or `[v6]:port`; a missing name becomes `standby-<index>`.
fn parse_standby(primary: &BackendConfig, index: usize, spec: &str) -> Result<BackendConfig, String> {
    let spec = spec.trim();
    let (name, addr) = match spec.split_once('=') {
        Some((n, a)) if !n.is_empty() => (Some(n.trim()), a.trim()),
        Some(_) => return Err(format!("{spec:?} has an empty name")),
        None => (None, spec),
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{spec:?} is not name=host:port"))?;
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

fn apply_env(cfg: &mut Config, env: EnvLookup<'_>) -> Result<(), ConfigError> {
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
        cfg.primary.password = Some(read_secret_file(ENV, "DB_PASSWORD_FILE", Path::new(&p))?);
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
        let ms: u64 = v
            .trim()
            .parse()
            .map_err(|_| bad("FAILOVER_HEALTH_CHECK_INTERVAL", format!("{v:?} is not milliseconds")))?;
        cfg.health.interval = Duration::from_millis(ms);
    }
    if let Some(v) = env("PGFAILOVER_ADMIN_TOKEN") {
        cfg.admin_token = Some(Secret::new(v));
    }
    if let Some(p) = env("PGFAILOVER_ADMIN_TOKEN_FILE") {
        cfg.admin_token = Some(read_secret_file(ENV, "PGFAILOVER_ADMIN_TOKEN_FILE", Path::new(&p))?);
    }
    if let Some(v) = env("PGFAILOVER_LISTEN") {
        cfg.listen = parse_addr(&v).map_err(|r| bad("PGFAILOVER_LISTEN", r))?;
    }
    if let Some(v) = env("PGFAILOVER_ADMIN_LISTEN") {
        cfg.admin_listen = parse_addr(&v).map_err(|r| bad("PGFAILOVER_ADMIN_LISTEN", r))?;
    }
    if let Some(v) = env("PGFAILOVER_PROMOTE") {
        cfg.failover.promote = parse_promote(&v).map_err(|r| bad("PGFAILOVER_PROMOTE", r))?;
    }
    if let Some(v) = env("PGFAILOVER_HOLD_TIMEOUT") {
        cfg.failover.hold_timeout = parse_duration(&v).map_err(|r| bad("PGFAILOVER_HOLD_TIMEOUT", r))?;
    }
    if let Some(v) = env("PGFAILOVER_STATE_DIR") {
        cfg.state_dir = Some(PathBuf::from(v));
    }
    if let Some(v) = env("PGFAILOVER_LOG_FORMAT") {
        cfg.log_format = parse_log_format(&v).map_err(|r| bad("PGFAILOVER_LOG_FORMAT", r))?;
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

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "require" => Some(true),
        "0" | "false" | "no" | "off" | "disable" => Some(false),
        _ => None,
    }
}

const FLAGS: &str = "command line";

fn apply_flags(cfg: &mut Config, o: &Overrides) -> Result<(), ConfigError> {
    set(&mut cfg.listen, o.listen);
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
    if !o.standbys.is_empty() {
        let mut list = Vec::new();
        for (i, spec) in o.standbys.iter().enumerate() {
            list.push(parse_standby(&cfg.primary, i, spec).map_err(|r| ConfigError::invalid(FLAGS, "--standby", r))?);
        }
        cfg.standbys = list;
    }
    Ok(())
}

fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let v = |key: &str, reason: &str| Err(ConfigError::invalid("config", key, reason));
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
    }
    if cfg.listen == cfg.admin_listen && cfg.listen.port() != 0 {
        return v("admin_listen", "must differ from listen");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
