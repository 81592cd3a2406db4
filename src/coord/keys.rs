//! Where the coordinated proxies keep things in etcd, under `/pgfailover/<cluster>/` (the
//! values are [`crate::cluster`]'s):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `leader/<lease>` | the election (etcd's v3election): the oldest key is the leader; value = its name | the leader's |
//! | `primary` | [`PrimaryRecord`]: the one primary every proxy routes to | none |
//! | `fences/<backend>` | [`FenceRecord`]: a backend no proxy may route to | none |
//! | `members/<name>` | [`MemberView`]: a proxy's own view of the backends | the proxy's |
//! | `requests/<id>` | [`Request`]: an admin request a follower hands to the leader | the follower's |
//! | `responses/<id>` | [`Response`](crate::cluster::Response): the leader's answer to it | the leader's |
//! | `pause` | [`PauseRecord`]: the operator's pause, until a resume deletes it | none |
//! | `drain` | [`DrainRecord`]: the leader's switchover drain | the leader's |
//! | `maintenance` | [`Maintenance`]: maintenance mode, until turned off or it runs out | none |
//!
//! [`Keys::decode`] turns a key and its value into what it says ([`Decoded`]): pure, and
//! unit-tested below. Judging what it means is the machine's.

use crate::cluster::{DrainRecord, FenceRecord, Maintenance, MemberView, PauseRecord, PrimaryRecord, Request};

use super::event::SharedFence;

/// The key names of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    /// `/pgfailover/<cluster>/`: every key of the cluster starts with it.
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
    pub fn shared(&self, which: Shared) -> String {
        format!("{}{}", self.prefix, which.name())
    }

    /// What a key under the prefix names.
    pub fn parse<'k>(&self, key: &'k str) -> Option<KeyKind<'k>> {
        let rest = key.strip_prefix(&self.prefix)?;
        Some(match rest.split_once('/') {
            None if rest == "primary" => KeyKind::Primary,
            None if rest == "pause" => KeyKind::Shared(Shared::Pause),
            None if rest == "drain" => KeyKind::Shared(Shared::Drain),
            None if rest == "maintenance" => KeyKind::Shared(Shared::Maintenance),
            Some(("leader", k)) => KeyKind::Election(k),
            Some(("fences", b)) => KeyKind::Fence(b),
            Some(("members", n)) => KeyKind::Member(n),
            Some(("requests", id)) => KeyKind::Request(id),
            Some(("responses", id)) => KeyKind::Response(id),
            _ => return None,
        })
    }
}

/// The single keys that hold one shared state each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shared {
    Pause,
    Drain,
    Maintenance,
}

impl Shared {
    fn name(self) -> &'static str {
        match self {
            Shared::Pause => "pause",
            Shared::Drain => "drain",
            Shared::Maintenance => "maintenance",
        }
    }
}

/// The kinds of keys under the prefix.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind<'k> {
    Primary,
    Shared(Shared),
    Election(&'k str),
    Fence(&'k str),
    Member(&'k str),
    Request(&'k str),
    Response(&'k str),
}

/// One key and its value as etcd returned them: the parts decoding reads.
#[derive(Clone, Copy, Debug)]
pub struct Kv<'a> {
    /// The whole key, prefix included.
    pub key: &'a [u8],
    /// Its value (JSON, or an election candidate's name).
    pub value: &'a [u8],
    /// When the key was created (an election key's age).
    pub create_revision: i64,
    /// When it was last written (what a compare-and-swap compares).
    pub mod_revision: i64,
}

impl<'a> From<&'a etcd_client::KeyValue> for Kv<'a> {
    fn from(kv: &'a etcd_client::KeyValue) -> Kv<'a> {
        Kv { key: kv.key(), value: kv.value(), create_revision: kv.create_revision(), mod_revision: kv.mod_revision() }
    }
}

/// What one key says, decoded; nothing is judged here.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// The recorded primary (`None`: deleted or unreadable) and the key's mod revision (0:
    /// deleted).
    Record(Option<PrimaryRecord>, i64),
    /// A shared fence.
    Fence(String, SharedFence),
    /// A proxy's view (`None`: it left).
    Member(String, Option<MemberView>),
    /// An election key: its candidate (create revision, name), or `None` once deleted.
    Election(String, Option<(i64, String)>),
    /// A follower's request for the leader, by its id.
    Request(String, Request),
    /// The operator's pause (`None`: deleted, or unreadable).
    Pause(Option<PauseRecord>),
    /// The leader's drain (`None`: deleted, or unreadable).
    Drain(Option<DrainRecord>),
    /// Maintenance mode (`None`: deleted, or unreadable).
    Maintenance(Option<Maintenance>),
    /// Nothing this proxy reads: a response, a view it cannot read, a deleted request,
    /// another key.
    Nothing,
}

impl Keys {
    /// Decodes a key that was written (`deleted` false) or deleted.
    pub fn decode(&self, kv: Kv<'_>, deleted: bool) -> Decoded {
        let key = String::from_utf8_lossy(kv.key);
        match self.parse(&key) {
            Some(KeyKind::Primary) if deleted => Decoded::Record(None, 0),
            Some(KeyKind::Primary) => Decoded::Record(serde_json::from_slice(kv.value).ok(), kv.mod_revision),
            Some(KeyKind::Election(_)) if deleted => Decoded::Election(key.into_owned(), None),
            Some(KeyKind::Election(_)) => {
                let candidate = (kv.create_revision, String::from_utf8_lossy(kv.value).into_owned());
                Decoded::Election(key.to_string(), Some(candidate))
            }
            Some(KeyKind::Fence(b)) if deleted => Decoded::Fence(b.to_string(), SharedFence::Lifted),
            Some(KeyKind::Fence(b)) => match serde_json::from_slice::<FenceRecord>(kv.value) {
                Ok(fence) => Decoded::Fence(b.to_string(), SharedFence::Set { fence, revision: kv.mod_revision }),
                Err(_) => Decoded::Fence(b.to_string(), SharedFence::Unreadable),
            },
            Some(KeyKind::Member(name)) if deleted => Decoded::Member(name.to_string(), None),
            Some(KeyKind::Member(name)) => match serde_json::from_slice::<MemberView>(kv.value) {
                Ok(v) => Decoded::Member(name.to_string(), Some(v)),
                Err(_) => Decoded::Nothing,
            },
            Some(KeyKind::Shared(which)) => {
                let value = if deleted { &[][..] } else { kv.value };
                match which {
                    Shared::Pause => Decoded::Pause(serde_json::from_slice(value).ok()),
                    Shared::Drain => Decoded::Drain(serde_json::from_slice(value).ok()),
                    Shared::Maintenance => Decoded::Maintenance(serde_json::from_slice(value).ok()),
                }
            }
            Some(KeyKind::Request(id)) if !deleted => match serde_json::from_slice::<Request>(kv.value) {
                Ok(r) => Decoded::Request(id.to_string(), r),
                Err(_) => Decoded::Nothing,
            },
            _ => Decoded::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Fence, FenceKind};

    fn kv<'a>(key: &'a str, value: &'a [u8], create_revision: i64, mod_revision: i64) -> Kv<'a> {
        Kv { key: key.as_bytes(), value, create_revision, mod_revision }
    }

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

    #[test]
    fn the_record_decodes_with_its_revision() {
        let k = Keys::new("main");
        let record = PrimaryRecord { name: "pg-b".into(), timeline: Some(2), system_identifier: Some("7".into()), epoch: 3, by: "p1".into() };
        let json = serde_json::to_vec(&record).unwrap();
        assert_eq!(k.decode(kv(&k.primary(), &json, 5, 9), false), Decoded::Record(Some(record), 9));
        // Unreadable: no record, but the revision a new record must replace.
        assert_eq!(k.decode(kv(&k.primary(), b"{", 5, 10), false), Decoded::Record(None, 10));
        assert_eq!(k.decode(kv(&k.primary(), b"", 0, 11), true), Decoded::Record(None, 0));
    }

    #[test]
    fn fences_decode_set_lifted_or_unreadable() {
        let k = Keys::new("main");
        let fence = FenceRecord { fence: Fence::new(FenceKind::SplitBrain, "split brain".into()), by: "p2".into() };
        let json = serde_json::to_vec(&fence).unwrap();
        let key = k.fence("pg-a");
        assert_eq!(k.decode(kv(&key, &json, 4, 7), false), Decoded::Fence("pg-a".into(), SharedFence::Set { fence, revision: 7 }));
        assert_eq!(k.decode(kv(&key, b"", 0, 8), true), Decoded::Fence("pg-a".into(), SharedFence::Lifted));
        assert_eq!(k.decode(kv(&key, br#"{"kind":"from_the_future"}"#, 4, 9), false), Decoded::Fence("pg-a".into(), SharedFence::Unreadable));
    }

    #[test]
    fn members_elections_and_requests_decode() {
        let k = Keys::new("main");
        let view = MemberView {
            name: "p2".into(),
            leader: false,
            primary: Some("pg-a".into()),
            down: vec![],
            backends: Default::default(),
            paused: None,
            drain: None,
        };
        let json = serde_json::to_vec(&view).unwrap();
        assert_eq!(k.decode(kv(&k.member("p2"), &json, 3, 3), false), Decoded::Member("p2".into(), Some(view)));
        assert_eq!(k.decode(kv(&k.member("p2"), b"", 0, 4), true), Decoded::Member("p2".into(), None));
        assert_eq!(k.decode(kv(&k.member("p2"), b"garbage", 3, 5), false), Decoded::Nothing, "a view it cannot read is ignored");

        let election = format!("{}/694d7b", k.election());
        assert_eq!(k.decode(kv(&election, b"p1", 12, 12), false), Decoded::Election(election.clone(), Some((12, "p1".into()))));
        assert_eq!(k.decode(kv(&election, b"", 0, 13), true), Decoded::Election(election, None));

        let request = Request { id: "ab12".into(), op: "trigger".into(), target: None, force: false, who: "alice".into(), via: "p2".into() };
        let json = serde_json::to_vec(&request).unwrap();
        assert_eq!(k.decode(kv(&k.request("ab12"), &json, 20, 20), false), Decoded::Request("ab12".into(), request));
        assert_eq!(k.decode(kv(&k.request("ab12"), b"", 0, 21), true), Decoded::Nothing);
        assert_eq!(k.decode(kv(&k.response("ab12"), b"{}", 22, 22), false), Decoded::Nothing);
        assert_eq!(k.decode(kv("/pgfailover/other/primary", b"{}", 1, 1), false), Decoded::Nothing);
    }

    #[test]
    fn pause_drain_and_maintenance_decode() {
        use crate::cluster::DrainPhase;
        let k = Keys::new("main");
        assert_eq!(k.parse(&k.shared(Shared::Drain)), Some(KeyKind::Shared(Shared::Drain)));
        let pause = PauseRecord { id: "x1".into(), by: "alice".into(), since: "2026-12-04T20:00:00Z".into(), timeout_ms: 10_000 };
        let json = serde_json::to_vec(&pause).unwrap();
        assert_eq!(k.decode(kv(&k.shared(Shared::Pause), &json, 5, 5), false), Decoded::Pause(Some(pause)));
        assert_eq!(k.decode(kv(&k.shared(Shared::Pause), b"", 0, 6), true), Decoded::Pause(None));
        let drain = DrainRecord { id: "p1-3".into(), from: "pg-a".into(), to: "pg-b".into(), phase: DrainPhase::Cut, drain_ms: 5000, by: "p1".into() };
        let json = serde_json::to_vec(&drain).unwrap();
        assert!(String::from_utf8_lossy(&json).contains("\"phase\":\"cut\""));
        assert_eq!(k.decode(kv(&k.shared(Shared::Drain), &json, 7, 7), false), Decoded::Drain(Some(drain)));
        let m = Maintenance { reason: "minor upgrade".into(), until: "2026-12-04T21:00:00Z".into(), by: "bob".into(), since: "2026-12-04T20:00:00Z".into() };
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(k.decode(kv(&k.shared(Shared::Maintenance), &json, 8, 8), false), Decoded::Maintenance(Some(m)));
        assert_eq!(k.decode(kv(&k.shared(Shared::Maintenance), b"{", 8, 9), false), Decoded::Maintenance(None), "unreadable counts as off");
    }
}
