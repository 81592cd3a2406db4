//! `[tls]`: whether the proxy passes clients' TLS through (the default) or terminates it, its
//! certificate, and how it speaks TLS to the servers (its own sessions under termination, and
//! the health checks in every mode). The file and environment layers and the checks of this
//! table live here; the certificates themselves are read by [`crate::tls`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::parse::{parse_bool, set};
use super::{Config, ConfigError, EnvLookup, SecretFile};

/// What the proxy does with a client's TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Relay the client's TLS to the server untouched: the server's certificate, the server's
    /// authentication (channel binding and client certificates included). The proxy sees
    /// nothing after an `SSLRequest`.
    #[default]
    Passthrough,
    /// Answer `SSLRequest` (and PostgreSQL 17's direct TLS) with the proxy's certificate and
    /// open the proxy's own connection to the server (TLS as `server_sslmode` says).
    Terminate,
}

/// libpq's `sslmode` values, for the proxy's own connections to the servers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerSslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, the certificate not verified; in clear otherwise.
    #[default]
    Prefer,
    /// TLS or nothing; the certificate not verified.
    Require,
    /// TLS with a certificate signed by `server_ca_file` (any host name).
    VerifyCa,
    /// As `verify-ca`, and the certificate names the backend's `host`.
    VerifyFull,
}

impl ServerSslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerSslMode::Disable => "disable",
            ServerSslMode::Prefer => "prefer",
            ServerSslMode::Require => "require",
            ServerSslMode::VerifyCa => "verify-ca",
            ServerSslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the certificate is checked against a CA.
    pub fn verifies(self) -> bool {
        self >= ServerSslMode::VerifyCa
    }
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Passthrough => "passthrough",
            TlsMode::Terminate => "terminate",
        })
    }
}

/// `[tls]`, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// The proxy's certificate chain (PEM, leaf first), presented under `terminate`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM): when set, clients must present a certificate it signed.
    pub client_ca_file: Option<PathBuf>,
    /// Under `terminate`, refuse clients that do not ask for TLS (FATAL 28000) instead of
    /// serving them in clear.
    pub require_client_tls: bool,
    /// TLS to the servers: the proxy's own sessions under `terminate`, and every health
    /// check and operation (folded into each backend's [`BackendConfig::sslmode`]).
    ///
    /// [`BackendConfig::sslmode`]: super::BackendConfig::sslmode
    pub server_sslmode: ServerSslMode,
    /// CA bundle (PEM) that `verify-ca` / `verify-full` check the servers' certificates with.
    pub server_ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    mode: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    require_client_tls: Option<bool>,
    server_sslmode: Option<String>,
    server_ca_file: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<TlsMode, String> {
    match s {
        "passthrough" => Ok(TlsMode::Passthrough),
        "terminate" => Ok(TlsMode::Terminate),
        _ => Err(format!("{s:?} is not one of \"passthrough\", \"terminate\"")),
    }
}

fn parse_sslmode(s: &str) -> Result<ServerSslMode, String> {
    match s {
        "disable" => Ok(ServerSslMode::Disable),
        "prefer" => Ok(ServerSslMode::Prefer),
        "require" => Ok(ServerSslMode::Require),
        "verify-ca" => Ok(ServerSslMode::VerifyCa),
        "verify-full" => Ok(ServerSslMode::VerifyFull),
        // libpq's "allow" tries in clear first: the proxy has no use for it.
        _ => Err(format!("{s:?} is not one of \"disable\", \"prefer\", \"require\", \"verify-ca\", \"verify-full\"")),
    }
}

/// The private key is reported with the other secret files when others can read it.
pub(super) fn key_is_secret(cfg: &mut Config, file: Option<&Path>, env: EnvLookup<'_>) {
    let Some(k) = &cfg.tls.key_file else { return };
    let key = match (env("PGFAILOVER_TLS_KEY_FILE"), file) {
        (Some(_), _) => "environment: PGFAILOVER_TLS_KEY_FILE".to_string(),
        (None, Some(f)) => format!("{}: tls.key_file", f.display()),
        (None, None) => "tls.key_file".to_string(),
    };
    cfg.secret_files.push(SecretFile { key, path: k.clone() });
}

/// The file's `[tls]` table; relative paths are taken from the file's directory.
pub(super) fn apply_file(cfg: &mut Config, raw: RawTls, label: &str, resolve: impl Fn(PathBuf) -> PathBuf) -> Result<(), ConfigError> {
    let t = &mut cfg.tls;
    if let Some(m) = raw.mode {
        t.mode = parse_mode(&m).map_err(|r| ConfigError::invalid(label, "tls.mode", r))?;
    }
    if let Some(m) = raw.server_sslmode {
        t.server_sslmode = parse_sslmode(&m).map_err(|r| ConfigError::invalid(label, "tls.server_sslmode", r))?;
    }
    set(&mut t.require_client_tls, raw.require_client_tls);
    t.cert_file = raw.cert_file.map(&resolve).or(t.cert_file.take());
    t.key_file = raw.key_file.map(&resolve).or(t.key_file.take());
    t.client_ca_file = raw.client_ca_file.map(&resolve).or(t.client_ca_file.take());
    t.server_ca_file = raw.server_ca_file.map(&resolve).or(t.server_ca_file.take());
    Ok(())
}

/// `PGFAILOVER_TLS_*`, `PGFAILOVER_SERVER_SSLMODE`, `PGFAILOVER_SERVER_CA_FILE`.
pub(super) fn apply_env(cfg: &mut Config, env: EnvLookup<'_>) -> Result<(), ConfigError> {
    let bad = |key: &str, reason: String| ConfigError::invalid("environment", key, reason);
    let t = &mut cfg.tls;
    if let Some(v) = env("PGFAILOVER_TLS_MODE") {
        t.mode = parse_mode(v.trim()).map_err(|r| bad("PGFAILOVER_TLS_MODE", r))?;
    }
    if let Some(v) = env("PGFAILOVER_SERVER_SSLMODE") {
        t.server_sslmode = parse_sslmode(v.trim()).map_err(|r| bad("PGFAILOVER_SERVER_SSLMODE", r))?;
    }
    if let Some(v) = env("PGFAILOVER_TLS_REQUIRE_CLIENT_TLS") {
        t.require_client_tls = parse_bool(&v).ok_or_else(|| bad("PGFAILOVER_TLS_REQUIRE_CLIENT_TLS", format!("{v:?} is not true/false")))?;
    }
    let path = |k: &str| env(k).filter(|v| !v.trim().is_empty()).map(PathBuf::from);
    set(&mut t.cert_file, path("PGFAILOVER_TLS_CERT_FILE").map(Some));
    set(&mut t.key_file, path("PGFAILOVER_TLS_KEY_FILE").map(Some));
    set(&mut t.client_ca_file, path("PGFAILOVER_TLS_CLIENT_CA_FILE").map(Some));
    set(&mut t.server_ca_file, path("PGFAILOVER_SERVER_CA_FILE").map(Some));
    Ok(())
}

/// Folds `server_sslmode` and `server_ca_file` into every backend: the health checks and
/// operations, and the data path's server connections, read them there. A backend's own
/// `ssl = true` (the seed's `DB_SSL`) raises its floor to `require`, and with its own
/// `ssl_root_cert` to `verify-full` (what the health checks did before `[tls]`: OpenSSL
/// checks the chain and the host name); its `ssl_root_cert` wins over `server_ca_file`.
/// Folding twice changes nothing (the server starts from a folded configuration too).
pub(super) fn fold_into_backends(cfg: &mut Config) {
    let (mode, ca) = (cfg.tls.server_sslmode, cfg.tls.server_ca_file.clone());
    for b in std::iter::once(&mut cfg.primary).chain(cfg.standbys.iter_mut()) {
        let floor = match (b.ssl, &b.ssl_root_cert) {
            (false, _) => ServerSslMode::Disable,
            (true, None) => ServerSslMode::Require,
            (true, Some(_)) => ServerSslMode::VerifyFull,
        };
        b.sslmode = mode.max(floor);
        b.ca_file = b.ssl_root_cert.clone().or_else(|| ca.clone());
    }
}

/// The `[tls]` table's own checks (the files are read and judged by [`crate::tls`]).
pub(super) fn check(cfg: &Config) -> Result<(), (String, String)> {
    let v = |key: &str, reason: String| Err((key.to_string(), reason));
    let t = &cfg.tls;
    if t.mode == TlsMode::Terminate {
        if t.cert_file.is_none() {
            return v("tls.cert_file", "is required with mode = \"terminate\" (the proxy's certificate chain, PEM)".into());
        }
        if t.key_file.is_none() {
            return v("tls.key_file", "is required with mode = \"terminate\" (the certificate's private key, PEM)".into());
        }
    } else {
        for (key, set) in [("tls.client_ca_file", t.client_ca_file.is_some()), ("tls.require_client_tls", t.require_client_tls)] {
            if set {
                return v(key, "applies only with mode = \"terminate\" (in passthrough the server sees the client's TLS)".into());
            }
        }
    }
    for (key, file) in
        [("tls.cert_file", &t.cert_file), ("tls.key_file", &t.key_file), ("tls.client_ca_file", &t.client_ca_file), ("tls.server_ca_file", &t.server_ca_file)]
    {
        if let Some(f) = file {
            exists(f).map_err(|r| (key.to_string(), r))?;
        }
    }
    for (i, b) in cfg.backends().iter().enumerate() {
        if b.sslmode.verifies() && b.ca_file.is_none() {
            let key = if i == 0 { "primary" } else { "standbys" };
            return v(
                "tls.server_ca_file",
                format!(
                    "server_sslmode = \"{}\" for {key} {} needs a CA to verify with (tls.server_ca_file, or the backend's ssl_root_cert)",
                    b.sslmode.as_str(),
                    b.name
                ),
            );
        }
    }
    Ok(())
}

fn exists(f: &Path) -> Result<(), String> {
    std::fs::metadata(f).map(|_| ()).map_err(|e| format!("{}: {e}", f.display()))
}
