//! The machine's side of coordination through etcd (see [`crate::coord`]): what the
//! coordinated proxies share, as this proxy last heard it ([`Coordination`], the one copy),
//! and the rules that read it: whether this proxy may promote (it leads, etcd answers, a
//! quorum of the live proxies sees the primary down), the recorded primary every proxy routes
//! to, and what the leader records. How etcd's news get in and what this proxy shares back is
//! `sharing`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::cluster::{BackendId, Fence, FenceRecord, MemberView, PrimaryRecord};
use crate::config::PromoteMode;

use super::Machine;

/// What the coordinated proxies share, as this proxy knows it, and what it shared itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coordination {
    /// This proxy's name among the coordinated ones.
    pub(super) me: String,
    /// `failover.quorum = "majority"` (else the leader acts alone).
    pub(super) majority: bool,
    /// etcd answers (a session runs).
    pub(super) etcd_up: bool,
    /// The first read of etcd is done, or etcd could not be reached: until then nothing is
    /// routed (the record may name another primary than the checks would choose).
    pub(super) settled: bool,
    /// The leading proxy's name, when known.
    pub(super) leader: Option<String>,
    /// This proxy leads.
    pub(super) is_leader: bool,
    /// The recorded primary as etcd has it.
    pub(super) record: Option<PrimaryRecord>,
    /// The record key's mod revision as this proxy last saw it (0: none): what decisions are
    /// based on, and what a new record must replace.
    pub(super) record_rev: i64,
    /// The highest record epoch seen: the next record's is one more.
    pub(super) epoch: u64,
    /// The recorded primary as one of this proxy's backends: the only one routed, once there
    /// is a record. Ahead of `record` right after this proxy wrote one (its watch event may
    /// still be on its way).
    pub(super) recorded: Option<BackendId>,
    /// A recorded primary that is none of this proxy's backends (a misconfiguration):
    /// nothing is routed and nothing recorded over it.
    pub(super) record_foreign: Option<String>,
    /// The live proxies' views (this one's included), by name.
    pub(super) members: BTreeMap<String, MemberView>,
    /// The leader's switchover drain, as etcd has it.
    pub(super) drain: Option<crate::cluster::DrainRecord>,
    /// Fences as etcd has them, by backend name (a fence key this proxy cannot read keeps
    /// what it had).
    pub(super) fences: BTreeMap<String, FenceRecord>,
    /// Each shared fence key's mod revision ([`crate::coord::UNREADABLE`] when it cannot be
    /// read): a fence is lifted only if nobody changed it since.
    pub(super) fence_revs: BTreeMap<String, i64>,
    /// The machine's fences as of the last share, by backend name: only what changed since
    /// is shared, so a peer's fence is never put back and a fence restored from disk is not
    /// shared.
    pub(super) known: BTreeMap<String, Option<Fence>>,
    /// Fences restored from the state directory, until etcd's first read: those etcd does
    /// not have are lifted (the shared fences win).
    pub(super) restored: Option<BTreeSet<String>>,
    /// No record outside a promotion is tried before this (after a failed one).
    pub(super) bootstrap_after: Option<Instant>,
    /// A record outside a promotion is being written.
    pub(super) bootstrapping: bool,
}

impl Coordination {
    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn etcd_up(&self) -> bool {
        self.etcd_up
    }

    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader
    }

    /// The recorded primary as etcd has it.
    pub fn record(&self) -> Option<&PrimaryRecord> {
        self.record.as_ref()
    }

    /// The live proxies' views, by name.
    pub fn members(&self) -> &BTreeMap<String, MemberView> {
        &self.members
    }

    /// What decisions rest on: a batch of news that leaves it as it was needs no new
    /// decision. The other proxies' views count only by the backends they find down.
    pub(super) fn footing(&self) -> impl PartialEq {
        let down: BTreeMap<String, BTreeSet<String>> =
            self.members.iter().filter(|(n, _)| **n != self.me).map(|(n, v)| (n.clone(), v.down.iter().cloned().collect())).collect();
        // A switchover's drain waits for the others' answers.
        let acks: BTreeMap<String, Option<crate::cluster::PauseAck>> =
            self.members.iter().filter(|(n, _)| **n != self.me).map(|(n, v)| (n.clone(), v.drain.clone())).collect();
        (
            self.etcd_up,
            self.settled,
            self.leader.clone(),
            self.is_leader,
            self.recorded,
            self.record_foreign.clone(),
            self.majority,
            down,
            acks,
            self.drain.clone(),
        )
    }
}

impl Machine {
    /// What the coordinated proxies share, as this proxy knows it (`None`: it decides
    /// alone).
    pub fn coordination(&self) -> Option<&Coordination> {
        self.coord.as_ref()
    }

    /// This proxy may promote: auto mode and, when coordinated, it leads while etcd answers.
    pub fn may_promote(&self) -> bool {
        self.settings.promote == PromoteMode::Auto && self.coord.as_ref().is_none_or(|c| c.is_leader && c.etcd_up)
    }

    /// Backend `i` may be routed as far as coordination goes: it is the recorded primary, or
    /// nothing is recorded yet.
    pub(super) fn recorded(&self, i: BackendId) -> bool {
        match &self.coord {
            None => true,
            Some(c) if c.record_foreign.is_some() => false,
            Some(c) => c.recorded.is_none_or(|r| r == i),
        }
    }

    /// Backend `i` is the recorded primary and etcd answers (the record is current).
    pub(super) fn record_current(&self, i: BackendId) -> bool {
        self.coord.as_ref().is_some_and(|c| c.etcd_up && c.recorded == Some(i))
    }

    /// Coordinated and etcd not read yet: the first route waits.
    pub(super) fn unsettled(&self) -> bool {
        self.coord.as_ref().is_some_and(|c| !c.settled)
    }

    /// Why the leader may not fail over now: fewer than a majority of the live proxies (this
    /// one included) see the primary down. Computed from the latest views at every decision.
    pub fn quorum_veto(&self) -> Option<String> {
        let c = self.coord.as_ref()?;
        if !c.majority {
            return None;
        }
        // The primary this failover started from (a record may already name the candidate
        // of an attempt that failed), else the recorded or routed one.
        let primary = self.in_flight.as_ref().and_then(|f| f.from).or(c.recorded).or(self.route)?;
        let b = &self.backends[primary];
        if b.healthy && !b.marked_down {
            // Not lost to silence (fenced, demoted, another cluster): a fact every proxy
            // would see the same way, nothing to vote on.
            return None;
        }
        let name = &b.name;
        let others = c.members.iter().filter(|(n, _)| **n != c.me);
        let live = 1 + others.clone().count();
        let down = usize::from(self.backends[primary].marked_down) + others.filter(|(_, v)| v.down.contains(name)).count();
        if down * 2 > live {
            None
        } else {
            Some(format!("{down} of {live} live proxies see {name} down (failover.quorum = \"majority\")"))
        }
    }

    /// Which backend the coordinated proxies recorded, in words.
    pub(super) fn record_note(&self) -> String {
        match self.coord.as_ref() {
            Some(Coordination { record_foreign: Some(name), .. }) => {
                format!("the coordinated proxies recorded {name:?}, which is none of this proxy's backends")
            }
            Some(Coordination { recorded: Some(r), .. }) => format!("the coordinated proxies recorded {} (etcd)", self.backends[*r].name),
            _ => "nothing is recorded in etcd".into(),
        }
    }

    /// The backend the leader should record when the record does not name a primary it can
    /// route to: nothing is recorded yet (a new cluster: the routed primary), or the recorded
    /// backend is a healthy standby (a promotion that was refused and undone) while exactly
    /// one unfenced server of the cluster is primary. `None` while a failover runs.
    pub fn record_wanted(&self) -> Option<BackendId> {
        let c = self.coord.as_ref()?;
        if !(c.is_leader && c.etcd_up && c.settled) || c.record_foreign.is_some() || self.in_flight.is_some() {
            return None;
        }
        match c.recorded {
            None => self.route,
            Some(r) if self.backends[r].fresh() && self.backends[r].in_recovery() && self.route.is_none() => {
                let mut primaries = self.backends.ids().filter(|i| {
                    let b = &self.backends[*i];
                    *i != r && b.fresh() && b.claims_primary() && b.fence.is_none() && self.same_cluster(*i)
                });
                match (primaries.next(), primaries.next()) {
                    (Some(w), None) => Some(w),
                    _ => None,
                }
            }
            Some(_) => None,
        }
    }

    /// Why this proxy does not promote now (for the route's reason), when coordinated.
    pub(super) fn coordination_wait(&self) -> Option<String> {
        let c = self.coord.as_ref()?;
        Some(if !c.etcd_up {
            "etcd is unreachable: no proxy may promote until it answers again".into()
        } else if !c.is_leader {
            match &c.leader {
                Some(l) => format!("waiting for the coordinating leader ({l}) to promote a standby"),
                None => "waiting for a coordinating leader to be elected".into(),
            }
        } else if let Some(v) = self.quorum_veto() {
            format!("waiting for the other proxies to agree: {v}")
        } else {
            return None;
        })
    }
}
