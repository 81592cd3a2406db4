//! The machine's side of coordination through etcd (see [`crate::coord`]): whether this
//! proxy may promote (it leads, etcd answers, the other proxies agree), the recorded primary
//! every proxy routes to, and fences shared by any of them.

use crate::config::PromoteMode;
use crate::monitor::event::EventKind;

use super::{Action, Fence, Machine, Now, Trigger};

/// What coordination tells the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coord {
    pub etcd_up: bool,
    /// The leading proxy's name, when known.
    pub leader: Option<String>,
    pub is_leader: bool,
    /// The recorded primary (a backend index): the only one routed, once there is a record.
    pub record: Option<usize>,
    /// Why an automatic failover may not happen now (no quorum), when it may not.
    pub veto: Option<String>,
}

impl Machine {
    /// This proxy may promote: auto mode and, when coordinated, it leads while etcd answers.
    pub fn may_promote(&self) -> bool {
        self.settings.promote == PromoteMode::Auto && self.coord.as_ref().is_none_or(|c| c.is_leader && c.etcd_up)
    }

    /// Backend `i` may be routed as far as coordination goes: it is the recorded primary, or
    /// nothing is recorded yet.
    pub(super) fn recorded(&self, i: usize) -> bool {
        self.coord.as_ref().and_then(|c| c.record).is_none_or(|r| r == i)
    }

    /// Which backend the coordinated proxies recorded, in words.
    pub(super) fn record_note(&self) -> String {
        match self.coord.as_ref().and_then(|c| c.record) {
            Some(r) => format!("the coordinated proxies recorded {} (etcd)", self.backends[r].name),
            None => "nothing is recorded in etcd".into(),
        }
    }

    /// The backend the leader should record when the record does not name a primary it can
    /// route to: nothing is recorded yet (a new cluster: the routed primary), or the recorded
    /// backend is a healthy standby (a promotion that was refused and undone) while exactly
    /// one unfenced server of the cluster is primary. `None` while a failover runs.
    pub fn record_wanted(&self) -> Option<usize> {
        let c = self.coord.as_ref()?;
        if !(c.is_leader && c.etcd_up) || self.in_flight.is_some() {
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
        } else if let Some(v) = &c.veto {
            format!("waiting for the other proxies to agree: {v}")
        } else {
            return None;
        })
    }

    /// Coordination changed: updates what the machine knows and re-decides.
    pub fn coordinate(&mut self, update: impl FnOnce(&mut Coord), now: Now) -> Vec<Action> {
        let mut c = self.coord.clone().unwrap_or_default();
        update(&mut c);
        if self.coord.as_ref() == Some(&c) {
            return Vec::new();
        }
        self.coord = Some(c);
        let mut acts = Vec::new();
        self.evaluate(now, &mut acts);
        acts
    }

    /// Another proxy set (`Some`) or lifted (`None`) a shared fence on backend `i`.
    pub fn peer_fence(&mut self, i: usize, fence: Option<Fence>, by: &str, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        match fence {
            Some(f) if self.backends[i].fence.is_none() => {
                tracing::warn!(backend = %self.backends[i].name, by, reason = %f.reason, "fenced by another proxy");
                let reason = format!("fenced by {by}: {}", f.reason);
                self.backends[i].fence = Some(Fence { kind: f.kind, reason: reason.clone() });
                self.backends[i].peer_fenced_at = Some(now.mono);
                acts.push(self.event(now, EventKind::Fence, Some(i), None, reason, Trigger::External));
            }
            None if self.backends[i].fence.is_some() => {
                tracing::info!(backend = %self.backends[i].name, by, "unfenced by another proxy");
                self.backends[i].fence = None;
                self.backends[i].peer_fenced_at = None;
                acts.push(self.event(now, EventKind::Unfence, Some(i), None, format!("unfenced by {by}"), Trigger::External));
            }
            _ => {}
        }
        self.evaluate(now, &mut acts);
        acts
    }
}
