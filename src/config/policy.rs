//! Who may be promoted and how writes are protected: `failover.synchronous`,
//! `failover.zone_policy`, and each backend's `priority`, `nofailover` and `zone`. All of it
//! is reloadable: the monitor reads it from the configuration in force at every decision.

use std::fmt;

/// `failover.synchronous`: whether pgfailover owns the primary's `synchronous_standby_names`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// pgfailover leaves `synchronous_standby_names` alone; a failover's loss is bounded by
    /// `max_lag_bytes`.
    Off,
    /// Managed; with no synchronous standby left the list is emptied so writes go on.
    On,
    /// Managed; with no synchronous standby left writes wait for one.
    Strict,
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncMode::Off => "off",
            SyncMode::On => "on",
            SyncMode::Strict => "strict",
        })
    }
}

/// `failover.zone_policy`: where a standby may be promoted, relative to the lost primary's
/// zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZonePolicy {
    /// Zones play no part.
    Any,
    /// A standby in another zone is promoted only when none in the primary's zone can be.
    PreferSame,
    /// Never promote a standby of another zone automatically.
    SameOnly,
}

impl fmt::Display for ZonePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ZonePolicy::Any => "any",
            ZonePolicy::PreferSame => "prefer_same",
            ZonePolicy::SameOnly => "same_only",
        })
    }
}

/// One backend's standing as a candidate for promotion (`[primary]` and `[[standbys]]`
/// keys; reloadable without a takeover).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromotionPolicy {
    /// Among standbys equally fit (the same WAL position), the higher is promoted.
    pub priority: u32,
    /// Never promoted by pgfailover: a delayed or backup replica.
    pub nofailover: bool,
    /// Free text (a region, an availability zone), compared with the primary's.
    pub zone: Option<String>,
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        PromotionPolicy { priority: 1, nofailover: false, zone: None }
    }
}

/// The highest `priority` accepted.
pub const MAX_PRIORITY: u32 = 1000;

/// The longest `application_name` PostgreSQL keeps (NAMEDATALEN − 1): with synchronous mode
/// a backend's name must fit, since standbys are listed under it.
pub const MAX_STANDBY_NAME: usize = 63;

pub(super) fn parse_synchronous(s: &str) -> Result<SyncMode, String> {
    match s {
        "off" => Ok(SyncMode::Off),
        "on" => Ok(SyncMode::On),
        "strict" => Ok(SyncMode::Strict),
        _ => Err(format!("{s:?} is not one of \"off\", \"on\", \"strict\"")),
    }
}

pub(super) fn parse_zone_policy(s: &str) -> Result<ZonePolicy, String> {
    match s {
        "any" => Ok(ZonePolicy::Any),
        "prefer_same" => Ok(ZonePolicy::PreferSame),
        "same_only" => Ok(ZonePolicy::SameOnly),
        _ => Err(format!("{s:?} is not one of \"any\", \"prefer_same\", \"same_only\"")),
    }
}

/// Why a backend's name cannot be its `application_name` (and so appear in
/// `synchronous_standby_names`), if it cannot.
pub(super) fn standby_name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_STANDBY_NAME {
        return Some(format!(
            "{name:?} is longer than {MAX_STANDBY_NAME} bytes: with failover.synchronous it is the standby's application_name, which PostgreSQL cuts there"
        ));
    }
    if !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Some(format!(
            "{name:?} has characters other than printable ASCII: with failover.synchronous it is the standby's application_name, which PostgreSQL would alter"
        ));
    }
    None
}

/// Why a `zone` value is refused, if it is.
pub(super) fn zone_problem(zone: &str) -> Option<&'static str> {
    if zone.trim().is_empty() {
        Some("must not be empty (leave it out for no zone)")
    } else if zone.len() > 100 {
        Some("must be at most 100 bytes")
    } else if zone.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}
