//! What the history records: failovers, recoveries, fences, split brains, switchovers
//! undone, standbys re-pointed, pauses, maintenance mode and synchronous replication lost
//! or regained.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Failover,
    FailoverFailed,
    Recovery,
    Fence,
    Unfence,
    SplitBrain,
    /// A switchover that was undone (the standby could not catch up, or a step failed).
    SwitchoverAborted,
    /// A standby was pointed at the new primary.
    Repoint,
    /// An operator paused the proxies (new sessions and quiet sessions' statements held).
    Pause,
    /// The pause ended.
    Resume,
    /// Maintenance mode began: no automatic failover or switchover while it lasts.
    MaintenanceOn,
    /// Maintenance mode ended (turned off, or ran out).
    MaintenanceOff,
    /// Synchronous mode `on`: no standby can be synchronous; the list is emptied and
    /// writes go on unprotected.
    SynchronousUnprotected,
    /// Synchronous mode `strict`: no standby can be synchronous; writes wait.
    SynchronousBlocked,
    /// A standby is synchronous again after one of the two above.
    SynchronousProtected,
}

impl EventKind {
    /// The name as the API and the logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Failover => "failover",
            EventKind::FailoverFailed => "failover_failed",
            EventKind::Recovery => "recovery",
            EventKind::Fence => "fence",
            EventKind::Unfence => "unfence",
            EventKind::SplitBrain => "split_brain",
            EventKind::SwitchoverAborted => "switchover_aborted",
            EventKind::Repoint => "repoint",
            EventKind::Pause => "pause",
            EventKind::Resume => "resume",
            EventKind::MaintenanceOn => "maintenance_on",
            EventKind::MaintenanceOff => "maintenance_off",
            EventKind::SynchronousUnprotected => "synchronous_unprotected",
            EventKind::SynchronousBlocked => "synchronous_blocked",
            EventKind::SynchronousProtected => "synchronous_protected",
        }
    }
}

/// One entry of `/failover/history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// RFC 3339.
    pub time: String,
    pub kind: EventKind,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: String,
    /// "automatic", "external" (another manager promoted), or `"manual:<who>"`.
    pub trigger: String,
    pub duration_ms: Option<u64>,
    /// WAL between the old primary's last seen position and the promoted standby's: the
    /// window of writes that may be lost (0 for a switchover).
    pub wal_distance_bytes: Option<u64>,
}
