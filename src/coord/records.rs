//! What the coordinated proxies keep in etcd, under `/pgfailover/<cluster>/`:
//!
//! | key | value | lease |
//! |---|---|---|
//! | `leader/<lease>` | the election (etcd's v3election): the oldest key is the leader; value = its name | the leader's |
//! | `primary` | [`PrimaryRecord`]: the one primary every proxy routes to | none |
//! | `fences/<backend>` | [`FenceRecord`]: a backend no proxy may route to | none |
//! | `members/<name>` | [`MemberView`]: a proxy's own view of the backends | the proxy's |
//! | `requests/<id>` | [`Request`]: an admin request a follower hands to the leader | the follower's |
//! | `responses/<id>` | [`Response`]: the leader's answer to it | the leader's |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::monitor::machine::Fence;

/// The key names of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys { prefix: format!("/pgfailover/{cluster}/") }
    }
    pub fn election(&self) -> String {
        format!("{}leader", self.prefix)
    }
    pub fn primary(&self) -> String {
        format!("{}primary", self.prefix)
    }
    pub fn fence(&self, backend: &str) -> String {
        format!("{}fences/{backend}", self.prefix)
    }
    pub fn member(&self, name: &str) -> String {
        format!("{}members/{name}", self.prefix)
    }
    pub fn request(&self, id: &str) -> String {
        format!("{}requests/{id}", self.prefix)
    }
    pub fn response(&self, id: &str) -> String {
        format!("{}responses/{id}", self.prefix)
    }

    /// What a key under the prefix names.
    pub fn parse<'k>(&self, key: &'k str) -> Option<KeyKind<'k>> {
        let rest = key.strip_prefix(&self.prefix)?;
        Some(match rest.split_once('/') {
            None if rest == "primary" => KeyKind::Primary,
            Some(("leader", k)) => KeyKind::Election(k),
            Some(("fences", b)) => KeyKind::Fence(b),
            Some(("members", n)) => KeyKind::Member(n),
            Some(("requests", id)) => KeyKind::Request(id),
            Some(("responses", id)) => KeyKind::Response(id),
            _ => return None,
        })
    }
}

/// The kinds of keys under the prefix.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind<'k> {
    Primary,
    Election(&'k str),
    Fence(&'k str),
    Member(&'k str),
    Request(&'k str),
    Response(&'k str),
}

/// The primary every proxy routes to, written by the leader in the same transaction that
/// proves it still leads, before it promotes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryRecord {
    pub name: String,
    /// Its timeline when recorded (before a promotion: the one it is leaving).
    pub timeline: Option<u32>,
    pub system_identifier: Option<String>,
    /// Grows with every new record.
    pub epoch: u64,
    /// The proxy that wrote it.
    pub by: String,
}

/// A fence as shared: the fence and who set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    #[serde(flatten)]
    pub fence: Fence,
    pub by: String,
}

/// A proxy's own view, published on its lease: what the leader counts for a quorum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub name: String,
    pub leader: bool,
    /// The primary it routes to now.
    pub primary: Option<String>,
    /// Backends its own checks find down (past the failure threshold).
    pub down: Vec<String>,
    /// Per backend: what its checks say ("primary", "standby", "down", "unknown").
    pub backends: BTreeMap<String, String>,
}

/// An admin request a follower hands to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub id: String,
    /// "trigger" or "unfence".
    pub op: String,
    pub target: Option<String>,
    #[serde(default)]
    pub force: bool,
    pub who: String,
    /// The proxy that took it.
    pub via: String,
}

/// The leader's answer: the HTTP status and JSON body its own admin port would give.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    pub body: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("main");
        assert_eq!(k.primary(), "/pgfailover/main/primary");
        assert_eq!(k.parse(&k.primary()), Some(KeyKind::Primary));
        assert_eq!(k.parse(&k.fence("pg-a")), Some(KeyKind::Fence("pg-a")));
        assert_eq!(k.parse(&k.member("p1")), Some(KeyKind::Member("p1")));
        assert_eq!(k.parse("/pgfailover/main/leader/694d7b"), Some(KeyKind::Election("694d7b")));
        assert_eq!(k.parse("/pgfailover/other/primary"), None);
        assert_eq!(k.parse("/pgfailover/main/what/x"), None);
    }
}
