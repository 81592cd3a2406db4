//! What the coordinated proxies keep in etcd, as values: the recorded primary, the shared
//! fences, each proxy's view, and the admin requests a follower hands to the leader (with the
//! leader's answers). Where each lives is `coord`'s business (its `keys`); these are the
//! values both sides read, serialized as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::fence::Fence;

/// The primary every proxy routes to, written by the leader in the same transaction that
/// proves it still leads, before it promotes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryRecord {
    /// The backend, by its configured name (every proxy must name the backends alike).
    pub name: String,
    /// Its timeline when recorded (before a promotion: the one it is leaving).
    pub timeline: Option<u32>,
    /// Its cluster's system identifier when recorded, for people comparing records.
    pub system_identifier: Option<String>,
    /// Grows with every new record.
    pub epoch: u64,
    /// The proxy that wrote it.
    pub by: String,
}

/// A fence as shared: the fence and who set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// The fence itself, flattened into the JSON object.
    #[serde(flatten)]
    pub fence: Fence,
    /// The proxy that set it: shown with the fence on every other proxy.
    pub by: String,
}

/// A proxy's own view, published on its lease: what the leader counts for a quorum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    /// Its `coordination.name`.
    pub name: String,
    /// It leads the coordinated proxies (as it published).
    pub leader: bool,
    /// The primary it routes to now.
    pub primary: Option<String>,
    /// Backends its own checks find down (past the failure threshold).
    pub down: Vec<String>,
    /// Per backend: what its checks say ("primary", "standby", "down", "unknown").
    pub backends: BTreeMap<String, String>,
    /// Its answer to the operator's shared pause, once it holds everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<super::PauseAck>,
    /// Its answer to a switchover's shared drain: the phase it carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<super::PauseAck>,
}

/// An admin request a follower hands to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Random, hex: names its key and its answer's.
    pub id: String,
    /// "trigger", "unfence" or "candidates" (`GET /failover/candidates`).
    pub op: String,
    /// The body's `target`: a backend name.
    pub target: Option<String>,
    /// The body's `force` (triggers only).
    #[serde(default)]
    pub force: bool,
    /// The caller, as the taking proxy's admin port saw it (for the history).
    pub who: String,
    /// The proxy that took it.
    pub via: String,
}

/// The leader's answer: the HTTP status and JSON body its own admin port would give.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: serde_json::Value,
}
