//! A fence: a backend no session may be routed to, and why. Set by the machine, kept on disk
//! across restarts (the history's `fences.json`) and, when coordinated, shared through etcd.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Why a backend is fenced; decides whether its reappearance as a primary is a split brain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceKind {
    /// Fenced while unreachable (automatic failover, or restored from the journal): coming
    /// back writable is a split brain.
    Unreachable,
    /// Replaced by a manual failover while alive: still being writable is expected.
    Superseded,
    /// Lost a split brain (already counted).
    SplitBrain,
    /// Asked to promote, then given up while it did not answer: it may still come back
    /// promoted, so it is not unfenced when it answers in recovery; only an operator clears it.
    PromotionAsked,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// Decides what its backend answering again as a primary means.
    pub kind: FenceKind,
    /// For people: shown in the status, the history and the refused clients' errors.
    pub reason: String,
    /// Set by another coordinated proxy, arrived at this instant: not this proxy's to share
    /// or to lift by giving a failover up, and only a check begun after it may show the
    /// backend rebuilt as a standby. Travels with the fence, so it can never outlive it.
    #[serde(skip)]
    pub peer: Option<Instant>,
}

impl Fence {
    /// A fence this proxy sets itself.
    pub fn new(kind: FenceKind, reason: String) -> Fence {
        Fence { kind, reason, peer: None }
    }
}
