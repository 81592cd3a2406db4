//! What the coordinator tells the monitor: etcd's keys, decoded, and nothing decided. They
//! come in batches (one etcd read or one watch response each), to be applied together before
//! anything is re-decided. Revisions travel with what they belong to, so whoever decides can
//! make a later write conditional on them.

use std::collections::BTreeMap;

use crate::cluster::{DrainRecord, FenceRecord, Maintenance, MemberView, PauseRecord, PrimaryRecord};

/// One piece of etcd's news.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// etcd answers (a session began) or not (it ended).
    EtcdUp(bool),
    /// Who leads now (`None`: nobody known), and whether it is this proxy.
    Leadership { leader: Option<String>, is_leader: bool },
    /// A session's first read: every shared key as it is now.
    Loaded(Snapshot),
    /// The recorded primary changed (or is gone, or cannot be read), and the key's mod
    /// revision (0: no key): a new record replaces exactly this one.
    Record(Option<PrimaryRecord>, i64),
    /// A shared fence changed.
    Fence { backend: String, fence: SharedFence },
    /// A live proxy published its view (`Some`), or left (`None`).
    Member { name: String, view: Option<MemberView> },
    /// The operator's shared pause was set (`Some`) or lifted.
    Pause(Option<PauseRecord>),
    /// The leader's switchover drain changed (or ended).
    Drain(Option<DrainRecord>),
    /// Maintenance mode was turned on (`Some`) or off.
    Maintenance(Option<Maintenance>),
    /// A fence that was to be shared only while the record stayed at the revision its
    /// decision rested on was not: the record had moved (the batch brings the new one).
    FenceRefused { backend: String },
}

/// A shared fence's key, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum SharedFence {
    /// Set, at this mod revision: lifted only if nobody changed it since.
    Set { fence: FenceRecord, revision: i64 },
    /// Deleted.
    Lifted,
    /// There, but this proxy cannot read it (a newer proxy's format?): not its to judge, and
    /// never lifted from here.
    Unreadable,
}

/// Every shared key, as one read found them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The recorded primary, if any (and readable).
    pub record: Option<PrimaryRecord>,
    /// The record key's mod revision (0: no key).
    pub record_revision: i64,
    /// The fence keys there are (set or unreadable): a fence not among them is not shared
    /// any more.
    pub fences: BTreeMap<String, SharedFence>,
    /// The live proxies' views, by name.
    pub members: BTreeMap<String, MemberView>,
    /// The operator's shared pause, if any.
    pub pause: Option<PauseRecord>,
    /// The leader's switchover drain, if any.
    pub drain: Option<DrainRecord>,
    /// Maintenance mode, if on.
    pub maintenance: Option<Maintenance>,
}
