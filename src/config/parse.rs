//! Value parsers shared by the file, environment and flag layers.

use std::net::SocketAddr;
use std::path::Path;

use super::{BackendConfig, Balance, ConfigError, Fallback, LogFormat, PromoteMode, Quorum, Secret, SecretFile};

/// A standby inherits the primary's database, credentials and TLS settings (not its
/// promotion policy: each backend has its own).
pub(super) fn standby_from(primary: &BackendConfig, index: usize) -> BackendConfig {
    BackendConfig { name: format!("standby-{index}"), policy: super::PromotionPolicy::default(), ..primary.clone() }
}

pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| format!("{s:?} is not an address like 127.0.0.1:6432 or [::1]:6432"))
}

pub(super) fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{s:?} is not one of \"text\", \"json\"")),
    }
}

pub(super) fn parse_promote(s: &str) -> Result<PromoteMode, String> {
    match s {
        "auto" => Ok(PromoteMode::Auto),
        "never" => Ok(PromoteMode::Never),
        _ => Err(format!("{s:?} is not one of \"auto\", \"never\"")),
    }
}

/// Reads a secret from `path` (named by `key` in `label`), and remembers the file in `files`
/// for the report of files other users can read.
pub(super) fn read_secret_file(label: &str, key: &str, path: &Path, files: &mut Vec<SecretFile>) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::invalid(label, key, format!("cannot read {}: {e}", path.display())))?;
    files.push(SecretFile { key: format!("{label}: {key}"), path: path.to_path_buf() });
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

pub(super) fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "require" => Some(true),
        "0" | "false" | "no" | "off" | "disable" => Some(false),
        _ => None,
    }
}

pub(super) fn parse_balance(s: &str) -> Result<Balance, String> {
    match s {
        "least_connections" => Ok(Balance::LeastConnections),
        "round_robin" => Ok(Balance::RoundRobin),
        _ => Err(format!("{s:?} is not one of \"least_connections\", \"round_robin\"")),
    }
}

pub(super) fn parse_fallback(s: &str) -> Result<Fallback, String> {
    match s {
        "primary" => Ok(Fallback::Primary),
        "hold" => Ok(Fallback::Hold),
        "refuse" => Ok(Fallback::Refuse),
        _ => Err(format!("{s:?} is not one of \"primary\", \"hold\", \"refuse\"")),
    }
}

pub(super) fn parse_quorum(s: &str) -> Result<Quorum, String> {
    match s {
        "majority" => Ok(Quorum::Majority),
        "leader" => Ok(Quorum::Leader),
        _ => Err(format!("{s:?} is not one of \"majority\", \"leader\"")),
    }
}
