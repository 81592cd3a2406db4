//! The monitor task's side of coordination: feeding etcd's news into the machine, sharing
//! this proxy's fences and view, the quorum, and the record written before a promotion.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::mpsc;

use crate::config::Quorum;
use crate::coord::{Coordinator, Event as CoordEvent, FenceRecord, MemberView, PrimaryRecord};
use crate::monitor::handle::Command;
use crate::monitor::machine::{Action, Now};
use crate::monitor::status::Status;

use super::MonitorTask;

/// What a promotion records first: through whom, the new primary, the fences.
pub(super) type PromotionRecord = (Coordinator, PrimaryRecord, Vec<(String, FenceRecord)>);

/// What the other proxies say.
#[derive(Default)]
pub(super) struct Peers {
    pub quorum: Option<Quorum>,
    /// Live proxies' views (their `members/` keys), this one's included once published.
    members: BTreeMap<String, MemberView>,
    /// Fences as etcd has them (updated from its watch only).
    shared: BTreeMap<String, FenceRecord>,
    /// The recorded primary's epoch, for the next record.
    epoch: u64,
    /// A first record is being written (leader, nothing recorded yet).
    bootstrapping: bool,
}

impl Peers {
    pub(super) fn new(quorum: Quorum) -> Self {
        Peers { quorum: Some(quorum), ..Default::default() }
    }
}

/// The next coordination event, or never when this proxy is not coordinated.
pub(super) async fn next_coord_event(events: &mut Option<mpsc::Receiver<CoordEvent>>) -> CoordEvent {
    match events {
        Some(rx) => match rx.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl MonitorTask {
    pub(super) fn coordination_event(&mut self, ev: CoordEvent) {
        let now = Now::current();
        let acts = match ev {
            CoordEvent::EtcdUp(up) => self.machine.coordinate(|c| c.etcd_up = up, now),
            CoordEvent::Leadership { leader, is_leader } => self.machine.coordinate(
                |c| {
                    c.leader = leader;
                    c.is_leader = is_leader;
                },
                now,
            ),
            CoordEvent::Record(record) => {
                self.peers.epoch = record.as_ref().map(|r| r.epoch).unwrap_or(0);
                self.peers.bootstrapping = false;
                let index = record.as_ref().and_then(|r| self.machine.backends.iter().position(|b| b.name == r.name));
                if record.is_some() && index.is_none() {
                    tracing::error!(record = ?record, "the recorded primary is not one of this proxy's backends: check that every proxy names the backends alike");
                }
                self.machine.coordinate(|c| c.record = index, now)
            }
            CoordEvent::Fence { backend, fence } => {
                match &fence {
                    Some(f) => self.peers.shared.insert(backend.clone(), f.clone()),
                    None => self.peers.shared.remove(&backend),
                };
                match self.machine.backends.iter().position(|b| b.name == backend) {
                    Some(i) => {
                        let by = fence.as_ref().map(|f| f.by.clone()).unwrap_or_else(|| "another proxy".into());
                        self.machine.peer_fence(i, fence.map(|f| f.fence), &by, now)
                    }
                    None => Vec::new(),
                }
            }
            CoordEvent::Members(members) => {
                self.peers.members = members;
                Vec::new()
            }
        };
        self.apply_all(acts);
    }

    /// After every change: fences and view to etcd, the quorum to the machine, and a first
    /// record when this proxy leads and nothing is recorded.
    pub(super) fn sync_coordination(&mut self) {
        let Some(coord) = self.coord.clone() else { return };
        let m = &self.machine;
        for b in &m.backends {
            match (&b.fence, self.peers.shared.get(&b.name)) {
                (Some(f), None) => coord.put_fence(b.name.clone(), FenceRecord { fence: f.clone(), by: coord.name.clone() }),
                (None, Some(_)) => coord.delete_fence(b.name.clone()),
                _ => {}
            }
        }
        coord.publish_view(self.own_view(&coord.name));
        let veto = self.quorum_veto(&coord.name);
        if m.coord.as_ref().is_some_and(|c| c.veto != veto) {
            let acts = self.machine.coordinate(|c| c.veto = veto, Now::current());
            if !acts.is_empty() {
                // Re-entering apply_all is fine: the veto is settled now.
                self.apply_all(acts);
            }
        }
        self.bootstrap_record(&coord);
    }

    fn own_view(&self, name: &str) -> MemberView {
        let m = &self.machine;
        let backends = m
            .backends
            .iter()
            .map(|b| {
                let what = if b.marked_down {
                    "down"
                } else if b.claims_primary() {
                    "primary"
                } else if b.in_recovery() {
                    "standby"
                } else {
                    "unknown"
                };
                (b.name.clone(), what.to_string())
            })
            .collect();
        MemberView {
            name: name.to_string(),
            leader: m.coord.as_ref().is_some_and(|c| c.is_leader),
            primary: m.route.map(|i| m.backends[i].name.clone()),
            down: m.backends.iter().filter(|b| b.marked_down).map(|b| b.name.clone()).collect(),
            backends,
        }
    }

    /// Whether enough live proxies see the primary down for the leader to fail over.
    fn quorum_veto(&self, me: &str) -> Option<String> {
        let m = &self.machine;
        let c = m.coord.as_ref()?;
        if !c.is_leader || self.peers.quorum == Some(Quorum::Leader) {
            return None;
        }
        let primary = c.record.or(m.route).or(m.in_flight.as_ref().and_then(|f| f.from))?;
        let name = &m.backends[primary].name;
        let mut live: BTreeSet<&str> = self.peers.members.keys().map(String::as_str).collect();
        live.insert(me);
        let down = live
            .iter()
            .filter(|n| if **n == me { m.backends[primary].marked_down } else { self.peers.members.get(**n).is_some_and(|v| v.down.contains(name)) })
            .count();
        if down * 2 > live.len() {
            None
        } else {
            Some(format!("{down} of {} live proxies see {name} down (failover.quorum = \"majority\")", live.len()))
        }
    }

    /// The leader records a primary when the record names none it can route to (a new
    /// cluster, or a promotion that was refused and undone), so every proxy follows the same
    /// one.
    fn bootstrap_record(&mut self, coord: &Coordinator) {
        if self.peers.bootstrapping {
            return;
        }
        let Some(w) = self.machine.record_wanted() else { return };
        self.peers.bootstrapping = true;
        let record = self.record_for(w, &coord.name);
        let (coord, epoch) = (coord.clone(), record.epoch);
        let failed = Command::Recorded { i: w, epoch, ok: false };
        self.run_op(
            async move {
                let ok = match coord.record_primary(record.clone(), Vec::new()).await {
                    Ok(()) => {
                        tracing::info!(primary = %record.name, epoch, "recorded the primary in etcd");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not record the primary in etcd");
                        false
                    }
                };
                Command::Recorded { i: w, epoch, ok }
            },
            failed,
        );
    }

    /// A record written outside a promotion: route by it at once (its watch event may still
    /// be on its way); after a failure the next change tries again.
    pub(super) fn recorded(&mut self, i: usize, epoch: u64, ok: bool, now: Now) -> Vec<Action> {
        self.peers.bootstrapping = false;
        if !ok {
            return Vec::new();
        }
        self.peers.epoch = self.peers.epoch.max(epoch);
        self.machine.coordinate(|c| c.record = Some(i), now)
    }

    fn record_for(&self, i: usize, by: &str) -> PrimaryRecord {
        let b = &self.machine.backends[i];
        PrimaryRecord {
            name: b.name.clone(),
            timeline: b.obs.as_ref().and_then(|o| o.timeline),
            system_identifier: b.obs.as_ref().map(|o| o.system_identifier.to_string()),
            epoch: self.peers.epoch + 1,
            by: by.to_string(),
        }
    }

    /// The record (and the old primary's fence) to write before promoting backend `i`, when
    /// coordinated.
    pub(super) fn promotion_record(&self, i: usize) -> Option<PromotionRecord> {
        let coord = self.coord.clone()?;
        let m = &self.machine;
        let record = self.record_for(i, &coord.name);
        let fences = m
            .in_flight
            .as_ref()
            .and_then(|f| f.from)
            .and_then(|p| m.backends[p].fence.clone().map(|f| (m.backends[p].name.clone(), FenceRecord { fence: f, by: coord.name.clone() })))
            .into_iter()
            .collect();
        Some((coord, record, fences))
    }

    pub(super) fn coordination_metrics(&self, status: &Status) {
        let x = &self.metrics;
        match &status.coordination {
            Some(c) => {
                x.coordination_enabled.set(1.0);
                x.coordination_leader.set(if c.is_leader { 1.0 } else { 0.0 });
                x.coordination_etcd_up.set(if c.etcd_reachable { 1.0 } else { 0.0 });
                x.coordination_lease_failures.absolute(c.lease_renewal_failures);
            }
            None => x.coordination_enabled.set(0.0),
        }
        for (i, g) in x.routed_primary.iter().enumerate() {
            g.set(if self.machine.route == Some(i) { 1.0 } else { 0.0 });
        }
    }
}
