//! Configuration: defaults < `proxy.toml` < environment < command-line flags.
//!
//! The file is parsed strictly (unknown keys are errors) and every error names the file, the
//! key and the reason on one line. Secrets (`password`, the admin token) are wrapped in
//! [`Secret`], whose `Debug`/`Display` never print the value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod coordination;
mod file;
mod layers;
mod parse;
mod policy;
mod secret_files;
mod tls;
mod validate;

pub use coordination::{host_name, CoordinationConfig};
pub use policy::{PromotionPolicy, SyncMode, ZonePolicy, MAX_PRIORITY};
pub use secret_files::{LooseSecret, SecretFile};
pub use tls::{ServerSslMode, TlsConfig, TlsMode};

/// Everything that can go wrong while building a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: {key}: {reason}")]
    Invalid { file: String, key: String, reason: String },
}

impl ConfigError {
    pub(crate) fn invalid(file: &str, key: impl Into<String>, reason: impl Into<String>) -> Self {
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

impl fmt::Display for PromoteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PromoteMode::Auto => "auto",
            PromoteMode::Never => "never",
        })
    }
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
    /// Health checks connect over TLS (certificates are not verified unless `ssl_root_cert`):
    /// the seed's `DB_SSL`, a floor under [`sslmode`](Self::sslmode).
    pub ssl: bool,
    /// CA bundle to verify the server's certificate with (else `tls.server_ca_file`).
    pub ssl_root_cert: Option<PathBuf>,
    /// TLS of the proxy's own connections to this server (health checks, operations, and the
    /// sessions it terminates): `tls.server_sslmode`, raised by `ssl = true`.
    pub sslmode: ServerSslMode,
    /// The CA `verify-ca` and `verify-full` check its certificate with: `ssl_root_cert`, else
    /// `tls.server_ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `priority`, `nofailover`, `zone`: its standing as a candidate (reloadable; not part
    /// of what identifies the server, see [`BackendConfig::server`]).
    pub policy: PromotionPolicy,
}

impl BackendConfig {
    /// The server this names, without its promotion policy: what must stay the same for a
    /// reload to apply without a takeover.
    pub fn server(&self) -> BackendConfig {
        BackendConfig { policy: PromotionPolicy::default(), ..self.clone() }
    }

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
    /// How long `POST /failover/trigger` waits for a promotion before answering 202; also
    /// the bound on each wait of a switchover (writes stopping, the standby catching up).
    pub trigger_wait: Duration,
    /// A switchover first pauses and waits this long for open transactions to finish; those
    /// still open then are cut.
    pub drain_timeout: Duration,
    /// After a failover, point the other standbys at the new primary (auto mode).
    pub repoint_standbys: bool,
    /// With `[coordination]`: how many live proxies must see the primary down before the
    /// leader fails over.
    pub quorum: Quorum,
    /// Whether pgfailover manages the primary's `synchronous_standby_names`, and what
    /// happens when no synchronous standby is left.
    pub synchronous: SyncMode,
    /// With `synchronous`: how many standbys a commit waits for (`ANY n`), at most.
    pub synchronous_count: u32,
    /// Where a standby may be promoted, relative to the lost primary's `zone`.
    pub zone_policy: ZonePolicy,
}

/// Agreement a coordinated failover needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quorum {
    /// More than half of the live proxies (the leader included) see the primary down.
    Majority,
    /// The leader alone decides.
    Leader,
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
    /// After SIGTERM, how long the listeners keep accepting while `/ready` already answers
    /// 503, so a load balancer (a Kubernetes Service) stops sending first.
    pub shutdown_delay: Duration,
    /// Runtime threads: 1 = a single-threaded runtime (fewest wake-ups on a machine whose
    /// cores are shared with the database), 0 = one per core.
    pub worker_threads: usize,
    /// Bound on a new client's whole startup (SSLRequest and StartupMessage); PostgreSQL's
    /// `authentication_timeout` plays this part on the server.
    pub startup_timeout: Duration,
    /// Client connections served at once; the next one gets SQLSTATE 53300.
    pub max_client_connections: usize,
}

/// The default cap on client connections: 10,000, or fewer when the open-file limit would
/// not hold them (each client takes two descriptors, plus a few for the proxy itself).
pub fn default_max_client_connections() -> usize {
    // `None`: unlimited.
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    (files.saturating_sub(100) / 2).clamp(1, 10_000)
}

/// How the read-only port picks among the standbys that qualify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The one with the fewest open read sessions (ties: config order).
    LeastConnections,
    /// Each in turn.
    RoundRobin,
}

/// What the read-only port does when no standby qualifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Send the read to the primary.
    Primary,
    /// Hold the client (up to `failover.hold_timeout`) until a standby qualifies, then refuse.
    Hold,
    /// Refuse at once with 57P03 and the reason.
    Refuse,
}

/// `[read]`: the read-only port's freshness bounds and placement.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadConfig {
    /// A standby further behind the primary's WAL than this serves no new reads.
    pub max_lag_bytes: u64,
    /// A standby whose replay is further behind than this serves no new reads: the time
    /// since its last replayed commit, counted only while it has WAL it has not replayed
    /// (an idle cluster is not behind).
    pub max_lag: Duration,
    pub balance: Balance,
    pub fallback: Fallback,
    /// The primary serves reads too, as one more target.
    pub include_primary: bool,
    /// More read ports, each with its own bounds (`[[read.listeners]]`): freshness chosen by
    /// port, for clients whose startup the proxy cannot read (TLS passthrough).
    pub listeners: Vec<ReadListener>,
    /// How long a session with `pgfailover.min_lsn` waits for a standby to replay that far
    /// before `fallback` applies.
    pub min_lsn_wait: Duration,
}

/// One `[[read.listeners]]` entry: a read port whose bounds replace `[read]`'s (a part left
/// out keeps `[read]`'s).
#[derive(Clone, Debug, PartialEq)]
pub struct ReadListener {
    pub listen: SocketAddr,
    pub max_lag: Option<Duration>,
    pub max_lag_bytes: Option<u64>,
}

/// The whole, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where applications connect.
    pub listen: SocketAddr,
    /// The read-only port (off when `None`): reads spread over fresh-enough standbys.
    pub listen_ro: Option<SocketAddr>,
    /// The HTTP side port.
    pub admin_listen: SocketAddr,
    /// Bearer token for POST endpoints; `None` disables them (403).
    pub admin_token: Option<Secret>,
    /// Bearer token for the read endpoints (status, health, history, the JSON metrics and,
    /// unless `admin_metrics_open`, `/metrics`); `None` leaves them open. The admin token
    /// reads too. `/health`, `/ready` and `/ready/ro` stay open for load balancers.
    pub admin_read_token: Option<Secret>,
    /// `/metrics` answers without a token even when `admin_read_token` is set (a scraper that
    /// cannot send one, on a network that is locked otherwise).
    pub admin_metrics_open: bool,
    /// Directory for the history journal (fences and events survive restarts).
    pub state_dir: Option<PathBuf>,
    /// `tracing` filter, overridden by `RUST_LOG`.
    pub log_level: String,
    pub log_format: LogFormat,
    pub health: HealthConfig,
    pub failover: FailoverConfig,
    pub proxy: ProxyConfig,
    pub read: ReadConfig,
    /// Several proxies agreeing through etcd (off when `None`).
    pub coordination: Option<CoordinationConfig>,
    /// Clients' TLS passed through or terminated, and TLS to the servers.
    pub tls: TlsConfig,
    /// Configured primary: only a starting hint, the servers' own answers decide.
    pub primary: BackendConfig,
    pub standbys: Vec<BackendConfig>,
    /// The files a secret was read from (and the configuration file, when it holds one
    /// itself), to report those other users can read: at start, `--check` and reload.
    pub secret_files: Vec<SecretFile>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            listen_ro: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9432)),
            admin_token: None,
            admin_read_token: None,
            admin_metrics_open: false,
            state_dir: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            health: HealthConfig { interval: Duration::from_secs(1), timeout: Duration::from_secs(1), failure_threshold: 3 },
            failover: FailoverConfig {
                promote: PromoteMode::Auto,
                hold_timeout: Duration::from_secs(5),
                max_lag_bytes: 16 * 1024 * 1024,
                promote_timeout: Duration::from_secs(10),
                trigger_wait: Duration::from_secs(15),
                drain_timeout: Duration::from_secs(5),
                repoint_standbys: true,
                quorum: Quorum::Majority,
                synchronous: SyncMode::Off,
                synchronous_count: 1,
                zone_policy: ZonePolicy::PreferSame,
            },
            proxy: ProxyConfig {
                connect_timeout: Duration::from_secs(2),
                keepalive_idle: Duration::from_secs(10),
                keepalive_interval: Duration::from_secs(3),
                keepalive_count: 3,
                user_timeout: Duration::from_secs(20),
                shutdown_grace: Duration::from_secs(10),
                shutdown_delay: Duration::ZERO,
                worker_threads: 0,
                startup_timeout: Duration::from_secs(10),
                max_client_connections: default_max_client_connections(),
            },
            coordination: None,
            read: ReadConfig {
                max_lag_bytes: 16 * 1024 * 1024,
                max_lag: Duration::from_secs(5),
                balance: Balance::LeastConnections,
                fallback: Fallback::Primary,
                include_primary: false,
                listeners: Vec::new(),
                min_lsn_wait: Duration::from_secs(1),
            },
            tls: TlsConfig::default(),
            primary: BackendConfig {
                name: "primary".into(),
                host: "127.0.0.1".into(),
                port: 5432,
                database: "postgres".into(),
                user: "postgres".into(),
                password: None,
                ssl: false,
                ssl_root_cert: None,
                sslmode: ServerSslMode::Prefer,
                ca_file: None,
                policy: PromotionPolicy::default(),
            },
            standbys: Vec::new(),
            secret_files: Vec::new(),
        }
    }
}

impl Config {
    /// All backends in config order: the primary first, then the standbys. The position in
    /// this list is the backend's stable index everywhere else.
    pub fn backends(&self) -> Vec<BackendConfig> {
        std::iter::once(self.primary.clone()).chain(self.standbys.iter().cloned()).collect()
    }

    /// Folds `[tls] server_sslmode` and `server_ca_file` into every backend's
    /// [`BackendConfig::sslmode`] and CA, as [`Config::load`] does: a configuration built in
    /// code calls it once its `tls` and backends are set.
    pub fn apply_server_tls(&mut self) {
        tls::fold_into_backends(self);
    }

    /// The backends as servers ([`BackendConfig::server`]), in config order: a change here
    /// needs a takeover, a change of their policies does not.
    pub fn servers(&self) -> Vec<BackendConfig> {
        self.backends().iter().map(BackendConfig::server).collect()
    }

    /// The files holding a secret that other users can read now (see [`SecretFile`]).
    pub fn loose_secret_files(&self) -> Vec<LooseSecret> {
        secret_files::loose(&self.secret_files)
    }
}

/// Command-line overrides; `None` leaves the lower layers alone.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub listen_ro: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub promote: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// `name=host:port` or `host:port`, replacing every standby from file and environment.
    pub standbys: Vec<String>,
    /// etcd endpoints (repeatable); turns coordination on.
    pub etcd_endpoints: Vec<String>,
    /// `[coordination]` cluster and this proxy's name.
    pub cluster: Option<String>,
    pub name: Option<String>,
}

/// Reads environment variables; a function so tests need not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as an [`EnvLookup`].
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

impl Config {
    /// Builds the configuration from all layers and validates it.
    pub fn load(file: Option<&Path>, env: EnvLookup<'_>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = file {
            let label = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read { file: label.clone(), reason: e.to_string() })?;
            let raw = file::parse_file(&label, &text)?;
            let inline = raw.inline_secrets();
            if !inline.is_empty() {
                cfg.secret_files.push(SecretFile { key: format!("{label} (it holds {})", inline.join(", ")), path: path.to_path_buf() });
            }
            file::apply_file(&mut cfg, raw, &label, path.parent())?;
        }
        layers::apply_env(&mut cfg, env)?;
        tls::apply_env(&mut cfg, env)?;
        layers::apply_flags(&mut cfg, flags)?;
        tls::fold_into_backends(&mut cfg);
        tls::key_is_secret(&mut cfg, file, env);
        // RUST_LOG wins over log_level when logging starts: it must be valid too.
        if let Some(filter) = env("RUST_LOG") {
            validate::log_filter(&filter).map_err(|r| ConfigError::invalid("environment", "RUST_LOG", r))?;
        }
        validate::check(&cfg).map_err(|(key, reason)| {
            let (source, name) = validate::origin(&key, file, env, flags);
            ConfigError::invalid(&source, name, reason)
        })?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
