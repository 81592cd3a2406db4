//! Pause, drain and maintenance in words every part shares: what a pause holds, how the
//! open sessions stand, and the records the coordinated proxies keep in etcd for them.

use serde::{Deserialize, Serialize};

use super::BackendId;

/// What a pause holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every session, on every port (an operator's pause).
    Everything,
    /// Sessions on this backend, and new sessions that would go there (a switchover drains
    /// the old primary).
    Backend(BackendId),
}

/// How the open sessions in a scope stand, counted at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Census {
    /// Open sessions counted.
    pub sessions: usize,
    /// Idle, nothing in flight (a held statement included).
    pub quiet: usize,
    /// In a transaction block.
    pub in_transaction: usize,
    /// A statement in flight outside a transaction block (or the startup).
    pub running: usize,
    /// Quiet sessions whose next message is held.
    pub held: usize,
    /// TLS passthrough (or unreadable) sessions: never waited for.
    pub opaque: usize,
    /// New sessions held before they connected.
    pub held_new: usize,
}

impl Census {
    /// Every readable session is quiet.
    pub fn settled(&self) -> bool {
        self.in_transaction == 0 && self.running == 0
    }

    /// The sum of two proxies' counts.
    pub fn plus(self, o: Census) -> Census {
        Census {
            sessions: self.sessions + o.sessions,
            quiet: self.quiet + o.quiet,
            in_transaction: self.in_transaction + o.in_transaction,
            running: self.running + o.running,
            held: self.held + o.held,
            opaque: self.opaque + o.opaque,
            held_new: self.held_new + o.held_new,
        }
    }
}

/// An operator's pause as the coordinated proxies share it: every proxy holds everything
/// until it is deleted (a resume).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseRecord {
    /// Tells one pause from the next, so an answer is matched to its pause.
    pub id: String,
    /// Who asked (the caller's identity on the admin port that took it).
    pub by: String,
    /// When (RFC 3339).
    pub since: String,
    /// How long each proxy waits for its sessions to be quiet before it answers, in
    /// milliseconds (the request's `timeout`).
    #[serde(default)]
    pub timeout_ms: u64,
}

/// Where a switchover's drain stands, as the leader shares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainPhase {
    /// Every proxy holds new sessions and quiet sessions' statements for the old primary,
    /// and lets open transactions finish.
    Drain,
    /// Every proxy stops routing to the old primary: its sessions end (quiet ones with a
    /// 57P01, those still in a transaction are cut). Writes are stopped only after every
    /// proxy confirmed this.
    Cut,
}

/// A switchover's drain as the leader shares it (on its lease: it goes with the leader).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRecord {
    /// The leader's name and attempt: tells one switchover from the next.
    pub id: String,
    /// The old primary, by its configured name.
    pub from: String,
    /// The standby being promoted.
    pub to: String,
    pub phase: DrainPhase,
    /// How long open transactions are waited for, in milliseconds (`failover.drain_timeout`
    /// on the leader).
    pub drain_ms: u64,
    /// The leader.
    pub by: String,
}

/// A proxy's answer to a shared pause or drain, in its published view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseAck {
    /// The pause's or the drain's id.
    pub id: String,
    /// For a drain: the phase this proxy has carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DrainPhase>,
    /// Its sessions in scope when it last counted.
    pub census: Census,
}

/// Maintenance mode: no automatic failover or switchover while it lasts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Why, as the operator said.
    pub reason: String,
    /// When it ends by itself (RFC 3339).
    pub until: String,
    /// Who turned it on.
    pub by: String,
    /// When it was turned on (RFC 3339).
    pub since: String,
}
