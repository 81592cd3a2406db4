//! The machine's side of coordination through etcd (see [`crate::coord`]): whether this
//! proxy may promote (it leads, etcd answers, a quorum of the live proxies sees the primary
//! down), the recorded primary every proxy routes to, and fences shared by any of them.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::PromoteMode;
use crate::monitor::event::EventKind;

use crate::cluster::Fence;

use super::{Action, Machine, Now, Trigger};

/// What coordination tells the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coord {
    /// This proxy's name among the coordinated ones.
    pub me: String,
    /// `failover.quorum = "majority"` (else the leader acts alone).
    pub majority: bool,
    pub etcd_up: bool,
    /// The first read of etcd is done, or etcd could not be reached: until then nothing is
    /// routed (the record may name another primary than the checks would choose).
    pub settled: bool,
    /// The leading proxy's name, when known.
    pub leader: Option<String>,
    pub is_leader: bool,
    /// The recorded primary (a backend index): the only one routed, once there is a record.
    pub record: Option<usize>,
    /// A recorded primary that is none of this proxy's backends (a misconfiguration):
    /// nothing is routed and nothing recorded over it.
    pub record_foreign: Option<String>,
    /// The other live proxies' views: name → the backends their checks find down.
    pub views: BTreeMap<String, BTreeSet<String>>,
}

impl Coord {
    /// A coordinated proxy before etcd has said anything: may neither route nor promote.
    pub fn new(me: String, majority: bool) -> Coord {
        Coord { me, majority, ..Default::default() }
    }
}

impl Machine {
    /// This proxy may promote: auto mode and, when coordinated, it leads while etcd answers.
    pub fn may_promote(&self) -> bool {
        self.settings.promote == PromoteMode::Auto && self.coord.as_ref().is_none_or(|c| c.is_leader && c.etcd_up)
    }

    /// Backend `i` may be routed as far as coordination goes: it is the recorded primary, or
    /// nothing is recorded yet.
    pub(super) fn recorded(&self, i: usize) -> bool {
        match &self.coord {
            None => true,
            Some(c) if c.record_foreign.is_some() => false,
            Some(c) => c.record.is_none_or(|r| r == i),
        }
    }

    /// Backend `i` is the recorded primary and etcd answers (the record is current).
    pub(super) fn record_current(&self, i: usize) -> bool {
        self.coord.as_ref().is_some_and(|c| c.etcd_up && c.record == Some(i))
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
        let primary = self.in_flight.as_ref().and_then(|f| f.from).or(c.record).or(self.route)?;
        let b = &self.backends[primary];
        if b.healthy && !b.marked_down {
            // Not lost to silence (fenced, demoted, another cluster): a fact every proxy
            // would see the same way, nothing to vote on.
            return None;
        }
        let name = &b.name;
        let others = c.views.iter().filter(|(n, _)| **n != c.me);
        let live = 1 + others.clone().count();
        let down = usize::from(self.backends[primary].marked_down) + others.filter(|(_, down)| down.contains(name)).count();
        if down * 2 > live {
            None
        } else {
            Some(format!("{down} of {live} live proxies see {name} down (failover.quorum = \"majority\")"))
        }
    }

    /// Which backend the coordinated proxies recorded, in words.
    pub(super) fn record_note(&self) -> String {
        match self.coord.as_ref() {
            Some(Coord { record_foreign: Some(name), .. }) => format!("the coordinated proxies recorded {name:?}, which is none of this proxy's backends"),
            Some(Coord { record: Some(r), .. }) => format!("the coordinated proxies recorded {} (etcd)", self.backends[*r].name),
            _ => "nothing is recorded in etcd".into(),
        }
    }

    /// The backend the leader should record when the record does not name a primary it can
    /// route to: nothing is recorded yet (a new cluster: the routed primary), or the recorded
    /// backend is a healthy standby (a promotion that was refused and undone) while exactly
    /// one unfenced server of the cluster is primary. `None` while a failover runs.
    pub fn record_wanted(&self) -> Option<usize> {
        let c = self.coord.as_ref()?;
        if !(c.is_leader && c.etcd_up && c.settled) || c.record_foreign.is_some() || self.in_flight.is_some() {
            return None;
        }
        match c.record {
            None => self.route,
            Some(r) if self.backends[r].fresh() && self.backends[r].in_recovery() && self.route.is_none() => {
                let mut primaries = (0..self.backends.len()).filter(|i| {
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

    /// Coordination changed: updates what the machine knows and re-decides.
    pub fn coordinate(&mut self, update: impl FnOnce(&mut Coord), now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        if self.update_coord(update) {
            self.evaluate(now, &mut acts);
        }
        acts
    }

    /// Updates what the machine knows of coordination without re-deciding (a batch of
    /// changes is applied whole, then [`Machine::reevaluate`]). Returns whether it changed.
    pub fn update_coord(&mut self, update: impl FnOnce(&mut Coord)) -> bool {
        let mut c = self.coord.clone().unwrap_or_default();
        update(&mut c);
        if self.coord.as_ref() == Some(&c) {
            return false;
        }
        self.coord = Some(c);
        true
    }

    /// Re-decides everything (after a batch of coordination changes).
    pub fn reevaluate(&mut self, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        self.evaluate(now, &mut acts);
        acts
    }

    /// Lifts backend `i`'s fence for `reason` (a fence restored from disk that the shared
    /// fences do not have). Returns the history event; the caller re-decides.
    pub fn lift_fence(&mut self, i: usize, reason: String, now: Now) -> Vec<Action> {
        if self.backends[i].fence.take().is_none() {
            return Vec::new();
        }
        vec![self.event(now, EventKind::Unfence, Some(i), None, reason, Trigger::External)]
    }

    /// Another proxy set (`Some`) or lifted (`None`) a shared fence on backend `i`. Returns
    /// the history events; the caller re-decides.
    pub fn peer_fence(&mut self, i: usize, fence: Option<Fence>, by: &str, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        match fence {
            Some(f) if self.backends[i].fence.is_none() => {
                tracing::warn!(backend = %self.backends[i].name, by, reason = %f.reason, "fenced by another proxy");
                let reason = format!("fenced by {by}: {}", f.reason);
                self.backends[i].fence = Some(Fence { kind: f.kind, reason: reason.clone(), peer: Some(now.mono) });
                acts.push(self.event(now, EventKind::Fence, Some(i), None, reason, Trigger::External));
            }
            None if self.backends[i].fence.is_some() => {
                tracing::info!(backend = %self.backends[i].name, by, "unfenced by another proxy");
                self.backends[i].fence = None;
                acts.push(self.event(now, EventKind::Unfence, Some(i), None, format!("unfenced by {by}"), Trigger::External));
            }
            _ => {}
        }
        acts
    }
}
