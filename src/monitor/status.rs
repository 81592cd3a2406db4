//! The JSON status the admin API serves, built from the machine after every input. Field
//! names follow the seed (`healthy`, `lastHealthCheck`, `failureCount`, …). No secrets.

use std::time::SystemTime;

use serde::Serialize;

use crate::config::{BackendConfig, PromoteMode, SyncMode};

use super::check_error::ErrorKind;
use crate::cluster::{BackendId, MemberView, PrimaryRecord};
use crate::coord::Figures;

use super::machine::{Coordination, Machine, ReadStanding, State, SyncHealth};
use super::observation::format_lsn;

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One backend's health record.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    /// What the server said at its last check: "primary", "standby", or "unknown" (never
    /// checked, or down past the failure threshold).
    pub role: &'static str,
    pub configured_role: &'static str,
    pub healthy: bool,
    pub last_health_check: Option<String>,
    pub failure_count: u32,
    /// Milliseconds of the last successful check.
    pub response_time: Option<f64>,
    pub down_since: Option<String>,
    pub promotion_eligible: bool,
    /// Why it is not eligible (absent when eligible or when it is the primary).
    pub not_eligible_reason: Option<String>,
    pub timeline: Option<u32>,
    pub lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub fenced: bool,
    pub fence_reason: Option<String>,
    pub system_identifier: Option<String>,
    pub last_error: Option<String>,
    /// `down` (counts toward a failover), `misconfigured` or `overloaded` (never do).
    pub last_error_kind: Option<ErrorKind>,
    /// A standby's WAL receiver: `streaming`, `waiting`, … (absent when none runs).
    pub wal_receiver: Option<String>,
    /// The upstream a standby streams from (`sender_host:sender_port`).
    pub upstream: Option<String>,
    /// A standby streams from the routed primary, on its timeline.
    pub following_primary: Option<bool>,
    /// The last attempt to re-point this standby at the primary.
    pub repoint: Option<RepointStatus>,
    /// It may take new sessions of the read-only port (within the `[read]` bounds).
    pub serves_reads: bool,
    /// Why it does not (absent when it does).
    pub read_reason: Option<String>,
    /// Its replay delay, as the read-only port counts it (ms; standbys that serve reads).
    pub read_lag_ms: Option<f64>,
    /// WAL bytes its replay is behind the primary (standbys that serve reads).
    pub read_lag_bytes: Option<u64>,
    /// How the routed primary counts it for synchronous commits (`pg_stat_replication`'s
    /// `sync_state`: `quorum`, `sync`, `potential`, `async`); absent when it does not
    /// stream from it under its name.
    pub sync_state: Option<String>,
}

/// A re-point of a standby at the routed primary.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepointStatus {
    pub primary: String,
    /// `running`, `done` or `failed`.
    pub result: &'static str,
    pub error: Option<String>,
}

/// A failover being carried out.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlightStatus {
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: String,
    pub trigger: String,
    /// `confirming`, `waiting_for_candidate`, `waiting_for_external_promotion`,
    /// `stopping_writes`, `catching_up`, `cascading`, `promoting` or `undoing`.
    pub phase: &'static str,
    /// A planned switchover (writes stopped first).
    pub switchover: bool,
}

/// `/failover/status`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub state: State,
    pub state_code: i64,
    pub current_primary: Option<String>,
    pub route_epoch: u64,
    /// Why no primary is routable (absent while one is).
    pub route_reason: Option<String>,
    pub promote_mode: PromoteMode,
    /// The routed primary's record (the configured primary's while none is routed).
    pub primary: BackendStatus,
    /// Every other backend.
    pub standbys: Vec<BackendStatus>,
    pub failover_count: u64,
    pub last_failover_time: Option<String>,
    pub recovery_count: u64,
    pub split_brain_count: u64,
    pub health_check_failures: u64,
    pub failover_in_progress: Option<InFlightStatus>,
    /// The operator's pause holds new sessions and quiet sessions' next statements.
    pub paused: bool,
    /// Who paused, while paused.
    pub paused_by: Option<String>,
    /// Since when (RFC 3339), while paused.
    pub paused_since: Option<String>,
    /// Maintenance mode.
    pub maintenance: MaintenanceStatus,
    /// Coordination through etcd: mode, leader, members and their views, etcd reachable,
    /// last revision (absent when this proxy decides alone).
    pub coordination: Option<CoordStatus>,
    /// Synchronous mode: what protects the routed primary's writes.
    pub synchronous: SyncStatus,
    pub updated_at: String,
    /// Every backend in config order (served by `/failover/health`).
    #[serde(skip)]
    pub backends: Vec<BackendStatus>,
    /// The digest of the configuration the monitor decides with ([`crate::live`]).
    #[serde(skip)]
    pub config_digest: String,
    /// "What if the primary died now?" (served by `/failover/candidates`).
    #[serde(skip)]
    pub candidates: super::candidates::CandidatesView,
}

/// Synchronous mode as `/failover/status` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// `failover.synchronous`.
    pub mode: SyncMode,
    /// `failover.synchronous_count`.
    pub count: u32,
    /// `off`, `protected`, `unprotected` (`on` emptied the list), `blocked` (`strict`:
    /// writes wait), `unknown` (no primary routed).
    pub state: SyncHealth,
    /// Why it is not protected.
    pub reason: Option<String>,
    /// The routed primary's `synchronous_standby_names` as last seen.
    pub list: Option<String>,
    /// The standbys it counts as synchronous now (streaming, listed).
    pub standbys: Vec<String>,
}

/// What coordination shows (`/failover/status`, metrics): the machine's view of what the
/// proxies share, and the coordinator's own figures.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordStatus {
    /// `etcd`, the only way to coordinate.
    pub mode: &'static str,
    /// This proxy's `coordination.name`.
    pub name: String,
    /// `coordination.cluster`.
    pub cluster: String,
    /// The leading proxy, when known.
    pub leader: Option<String>,
    /// This proxy leads.
    pub is_leader: bool,
    /// etcd answers this proxy.
    pub etcd_reachable: bool,
    /// The etcd revision of the last change seen.
    pub last_revision: i64,
    /// The live proxies' views, by name.
    pub members: Vec<MemberView>,
    /// The recorded primary as etcd has it.
    pub recorded_primary: Option<PrimaryRecord>,
    /// Failed renewals of this proxy's etcd leases.
    pub lease_renewal_failures: u64,
}

impl CoordStatus {
    pub fn of(view: &Coordination, cluster: &str, figures: Figures) -> CoordStatus {
        CoordStatus {
            mode: "etcd",
            name: view.me().to_string(),
            cluster: cluster.to_string(),
            leader: view.leader().map(str::to_string),
            is_leader: view.is_leader(),
            etcd_reachable: view.etcd_up(),
            last_revision: figures.last_revision,
            members: view.members().values().cloned().collect(),
            recorded_primary: view.record().cloned(),
            lease_renewal_failures: figures.lease_renewal_failures,
        }
    }
}

/// Maintenance mode as `/failover/status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceStatus {
    /// On: no automatic failover or switchover.
    pub enabled: bool,
    /// Why, as the operator said.
    pub reason: Option<String>,
    /// When it ends by itself (RFC 3339).
    pub until: Option<String>,
    /// Who turned it on.
    pub by: Option<String>,
    /// When it was turned on (RFC 3339).
    pub since: Option<String>,
}

impl Status {
    pub fn build(m: &Machine, cfg: &[BackendConfig], epoch: u64, route_reason: &str) -> Status {
        let reads = m.read_standing(std::time::Instant::now());
        let records: Vec<BackendStatus> = m.backends().ids().zip(&reads).map(|(i, read)| backend_status(m, cfg, i, read)).collect();
        let shown = m.route().map(BackendId::index).unwrap_or(0);
        let primary = records[shown].clone();
        let standbys = records.iter().enumerate().filter(|(i, _)| *i != shown).map(|(_, r)| r.clone()).collect();
        let name = |i: BackendId| m.backends()[i].name.clone();
        Status {
            state: m.state(),
            state_code: m.state().code(),
            current_primary: m.route().map(name),
            route_epoch: epoch,
            route_reason: m.route().is_none().then(|| route_reason.to_string()),
            promote_mode: m.settings().promote,
            primary,
            standbys,
            failover_count: m.counters().failovers,
            last_failover_time: m.last_failover_time().map(rfc3339),
            recovery_count: m.counters().recoveries,
            split_brain_count: m.counters().split_brains,
            health_check_failures: m.counters().check_failures,
            failover_in_progress: m.in_flight().map(|f| InFlightStatus {
                from: f.from.map(name),
                to: f.to.map(name),
                reason: f.reason.clone(),
                trigger: f.trigger.label(),
                phase: m.phase(),
                switchover: f.switchover,
            }),
            paused: m.paused().is_some(),
            paused_by: m.paused().map(|p| p.by.clone()),
            paused_since: m.paused().map(|p| p.since.clone()),
            maintenance: match m.maintenance() {
                Some(x) => MaintenanceStatus {
                    enabled: true,
                    reason: Some(x.reason.clone()),
                    until: Some(x.until.clone()),
                    by: Some(x.by.clone()),
                    since: Some(x.since.clone()),
                },
                None => MaintenanceStatus::default(),
            },
            coordination: None,
            synchronous: sync_status(m),
            updated_at: rfc3339(SystemTime::now()),
            backends: records,
            config_digest: String::new(),
            candidates: super::candidates::CandidatesView::build(m),
        }
    }
}

fn sync_status(m: &Machine) -> SyncStatus {
    let (state, reason) = m.sync_health();
    let primary = m.route().and_then(|p| m.backends()[p].obs.as_ref());
    SyncStatus {
        mode: m.settings().synchronous,
        count: m.settings().synchronous_count,
        state,
        reason: (!reason.is_empty() && matches!(state, SyncHealth::Unprotected | SyncHealth::Blocked)).then(|| reason.to_string()),
        list: primary.and_then(|o| o.sync_names.clone()),
        standbys: primary.map(|o| o.senders.iter().filter(|x| x.streaming() && x.synchronous()).map(|x| x.name.clone()).collect()).unwrap_or_default(),
    }
}

fn backend_status(m: &Machine, cfg: &[BackendConfig], i: BackendId, read: &ReadStanding) -> BackendStatus {
    let b = &m.backends()[i];
    let obs = b.obs.as_ref();
    let is_primary = m.route() == Some(i);
    let why = if is_primary { None } else { m.not_eligible(i) };
    BackendStatus {
        name: b.name.clone(),
        address: cfg.get(i.index()).map(BackendConfig::address).unwrap_or_default(),
        role: b.role(),
        configured_role: if b.configured_primary { "primary" } else { "standby" },
        healthy: b.healthy,
        last_health_check: b.last_check.map(rfc3339),
        failure_count: b.failure_count,
        response_time: b.response_time_ms.map(|ms| (ms * 1000.0).round() / 1000.0),
        down_since: b.down_since.map(rfc3339),
        promotion_eligible: !is_primary && why.is_none(),
        not_eligible_reason: why,
        timeline: obs.map(|_| b.timeline()),
        lsn: b.lsn().map(format_lsn),
        lag_bytes: m.lag_bytes(i),
        fenced: b.fence.is_some(),
        fence_reason: b.fence.as_ref().map(|f| f.reason.clone()),
        system_identifier: obs.map(|o| o.system_identifier.to_string()),
        last_error: b.last_error.as_ref().map(|e| e.to_string()),
        last_error_kind: b.last_error.as_ref().map(|e| e.kind()),
        wal_receiver: obs.and_then(|o| o.receiver.as_ref()).map(|r| r.status.clone()),
        upstream: b.upstream().map(str::to_string),
        following_primary: match m.route() {
            Some(w) if w != i && b.in_recovery() => Some(m.following(i, w)),
            _ => None,
        },
        repoint: b.repoint.as_ref().map(|r| RepointStatus {
            primary: m.backends()[r.primary].name.clone(),
            result: match &r.outcome {
                None => "running",
                Some(Ok(())) => "done",
                Some(Err(_)) => "failed",
            },
            error: r.outcome.as_ref().and_then(|o| o.as_ref().err().cloned()),
        }),
        serves_reads: matches!(read, ReadStanding::Serves { .. }),
        read_reason: match read {
            ReadStanding::Not(why) => Some(why.clone()),
            ReadStanding::Serves { .. } => None,
        },
        read_lag_ms: match read {
            ReadStanding::Serves { lag, .. } => Some(crate::duration::as_millis_f64(*lag)),
            ReadStanding::Not(_) => None,
        },
        read_lag_bytes: match read {
            ReadStanding::Serves { lag_bytes, .. } => Some(*lag_bytes),
            ReadStanding::Not(_) => None,
        },
        sync_state: sync_state(m, i),
    }
}

/// How the routed primary counts backend `i` for its synchronous commits.
pub(super) fn sync_state(m: &Machine, i: BackendId) -> Option<String> {
    let p = m.route().filter(|p| *p != i)?;
    let name = &m.backends()[i].name;
    m.backends()[p].obs.as_ref()?.senders.iter().find(|x| &x.name == name).map(|x| x.sync_state.clone())
}
