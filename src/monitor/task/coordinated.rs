//! The monitor task's side of coordination: feeding etcd's news into the machine, sharing
//! this proxy's fences and view, and the record written before a promotion.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::mpsc;

use crate::cluster::{Fence, FenceKind, FenceRecord, MemberView, PrimaryRecord};
use crate::coord::{Coordinator, Event as CoordEvent};
use crate::monitor::handle::Command;
use crate::monitor::machine::{Action, Machine, Now};
use crate::monitor::status::Status;

use super::MonitorTask;

/// What a promotion records first: through whom, the new primary, the fences.
pub(super) type PromotionRecord = (Coordinator, PrimaryRecord, Vec<(String, FenceRecord)>, i64);

/// What this proxy knows of the shared fences and the record.
#[derive(Default)]
pub(super) struct Peers {
    /// Fences as etcd has them (updated from its events only).
    shared: BTreeMap<String, FenceRecord>,
    /// The machine's fences as of the last sync: only what changed since is shared, so a
    /// peer's fence is never put back and a fence restored from disk is not shared.
    known: BTreeMap<String, Option<Fence>>,
    /// Fences restored from the state directory, until etcd's first read: those etcd does
    /// not have are lifted (the shared fences win).
    restored: Option<BTreeSet<String>>,
    /// The recorded primary's epoch, for the next record.
    epoch: u64,
    /// The record's mod revision as this proxy last saw it (0: none): what its decisions are
    /// based on, and what a new record must replace.
    record_rev: i64,
    /// No record outside a promotion is tried before this (after a failed one).
    bootstrap_after: Option<std::time::Instant>,
    /// A record outside a promotion is being written.
    bootstrapping: bool,
}

impl Peers {
    pub(super) fn new(m: &Machine) -> Peers {
        let known = m.backends.iter().map(|b| (b.name.clone(), b.fence.clone())).collect();
        let restored = Some(m.backends.iter().filter(|b| b.fence.is_some()).map(|b| b.name.clone()).collect());
        Peers { known, restored, ..Default::default() }
    }
}

/// Fences that travel through [`MonitorTask::sync_coordination`]. An old primary's fence
/// (unreachable, superseded) is written by the leader in the transaction that records the
/// new primary, and only then: a proxy that does not lead never fences a primary for all.
fn shared_by_sync(kind: FenceKind) -> bool {
    matches!(kind, FenceKind::SplitBrain | FenceKind::PromotionAsked)
}

/// The next batch of coordination events, or never when this proxy is not coordinated.
pub(super) async fn next_coord_events(events: &mut Option<mpsc::Receiver<Vec<CoordEvent>>>) -> Vec<CoordEvent> {
    match events {
        Some(rx) => match rx.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl MonitorTask {
    /// One batch (an etcd read or one watch response): applied whole, then re-decided once.
    pub(super) fn coordination_events(&mut self, batch: Vec<CoordEvent>) {
        let Some(coord) = self.coord.clone() else { return };
        let now = Now::current();
        let mut acts = Vec::new();
        let mut changed = false;
        let mut touched = Vec::new();
        for ev in batch {
            match ev {
                CoordEvent::EtcdUp(up) => {
                    changed |= self.machine.update_coord(|c| {
                        c.etcd_up = up;
                        // Without etcd, route by this proxy's own checks (and the last record).
                        c.settled |= !up;
                    })
                }
                CoordEvent::Leadership { leader, is_leader } => {
                    changed |= self.machine.update_coord(|c| {
                        c.leader = leader;
                        c.is_leader = is_leader;
                    })
                }
                CoordEvent::Record(record, rev) => {
                    let epoch = record.as_ref().map(|r| r.epoch).unwrap_or(0);
                    self.peers.epoch = self.peers.epoch.max(epoch);
                    self.peers.record_rev = rev;
                    let index = record.as_ref().and_then(|r| self.machine.backends.iter().position(|b| b.name == r.name));
                    let foreign = record.as_ref().filter(|_| index.is_none()).map(|r| r.name.clone());
                    if foreign.is_some() {
                        tracing::error!(record = ?record, "the recorded primary is none of this proxy's backends: every proxy must name the backends alike");
                    }
                    changed |= self.machine.update_coord(|c| {
                        c.record = index;
                        c.record_foreign = foreign;
                    });
                }
                CoordEvent::Fence { backend, fence } => {
                    match &fence {
                        Some(f) => self.peers.shared.insert(backend.clone(), f.clone()),
                        None => self.peers.shared.remove(&backend),
                    };
                    if let Some(i) = self.machine.backends.iter().position(|b| b.name == backend) {
                        let by = fence.as_ref().map(|f| f.by.clone()).unwrap_or_else(|| "another proxy".into());
                        acts.extend(self.machine.peer_fence(i, fence.map(|f| f.fence), &by, now));
                        touched.push(backend);
                        changed = true;
                    }
                }
                CoordEvent::Members(members) => {
                    let views = members.into_iter().filter(|(n, _)| *n != coord.name).map(|(n, v)| (n, v.down.into_iter().collect())).collect();
                    changed |= self.machine.update_coord(|c| c.views = views);
                }
                CoordEvent::Loaded => {
                    self.machine.update_coord(|c| c.settled = true);
                    acts.extend(self.after_first_read(&coord, now));
                    changed = true;
                }
            }
        }
        // What peers set or lifted is known now: not this proxy's to share back.
        for name in touched {
            if let Some(b) = self.machine.backends.iter().find(|b| b.name == name) {
                self.peers.known.insert(name, b.fence.clone());
            }
        }
        // A split-brain fence on the recorded primary (set here or shared by a peer, in this
        // batch or before the record came) was decided on a stale view, e.g. by a proxy
        // frozen through a failover: the record wins, and the lift goes to etcd with the
        // next sync.
        let recorded = self.machine.coord.as_ref().and_then(|c| c.record);
        if let Some(i) = recorded.filter(|i| matches!(self.machine.backends[*i].fence, Some(Fence { kind: FenceKind::SplitBrain, .. }))) {
            tracing::warn!(backend = %self.machine.backends[i].name, "lifting a split-brain fence on the recorded primary");
            acts.extend(self.machine.lift_fence(i, "the coordinated proxies recorded it as the primary".into(), now));
            changed = true;
        }
        if changed {
            acts.extend(self.machine.reevaluate(now));
        }
        self.apply_all(acts);
    }

    /// After a session's first read: fences restored from disk that etcd does not have are
    /// lifted (etcd's fences win), and fences this proxy set while etcd was away are shared.
    fn after_first_read(&mut self, coord: &Coordinator, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        let restored = self.peers.restored.take().unwrap_or_default();
        for i in 0..self.machine.backends.len() {
            let b = &self.machine.backends[i];
            let (name, fence) = (b.name.clone(), b.fence.clone());
            let Some(f) = fence else { continue };
            if self.peers.shared.contains_key(&name) || f.peer.is_some() {
                continue;
            }
            if restored.contains(&name) {
                tracing::warn!(backend = %name, "fence restored from disk is not in etcd: lifted (the coordinated proxies' fences win)");
                acts.extend(self.machine.lift_fence(i, "not fenced in etcd: the coordinated proxies' fences win".into(), now));
            } else if shared_by_sync(f.kind) {
                coord.put_fence(name, FenceRecord { fence: f, by: coord.name.clone() });
            }
        }
        acts
    }

    /// After every change: this proxy's own fence changes and its view to etcd, and a record
    /// when this proxy leads and the record names no primary it can route to.
    pub(super) fn sync_coordination(&mut self) {
        let Some(coord) = self.coord.clone() else { return };
        for b in &self.machine.backends {
            let before = self.peers.known.insert(b.name.clone(), b.fence.clone());
            if before.as_ref() == Some(&b.fence) {
                continue;
            }
            match &b.fence {
                Some(f) if f.peer.is_none() && shared_by_sync(f.kind) => {
                    coord.put_fence(b.name.clone(), FenceRecord { fence: f.clone(), by: coord.name.clone() })
                }
                None if self.peers.shared.contains_key(&b.name) => coord.delete_fence(b.name.clone()),
                _ => {}
            }
        }
        coord.publish_view(self.own_view(&coord.name));
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

    /// The leader records a primary when the record names none it can route to (a new
    /// cluster, or a promotion that was refused and undone), so every proxy follows the same
    /// one. The transaction replaces exactly the record this proxy saw.
    fn bootstrap_record(&mut self, coord: &Coordinator) {
        if self.peers.bootstrapping || self.peers.bootstrap_after.is_some_and(|t| std::time::Instant::now() < t) {
            return;
        }
        let Some(w) = self.machine.record_wanted() else { return };
        self.peers.bootstrapping = true;
        let record = self.record_for(w, &coord.name);
        let (coord, epoch, expect) = (coord.clone(), record.epoch, self.peers.record_rev);
        let failed = Command::Recorded { i: w, epoch, rev: None };
        self.run_op(
            async move {
                let rev = match coord.record_primary(record.clone(), Vec::new(), expect).await {
                    Ok(rev) => {
                        tracing::info!(primary = %record.name, epoch, "recorded the primary in etcd");
                        Some(rev)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not record the primary in etcd");
                        None
                    }
                };
                Command::Recorded { i: w, epoch, rev }
            },
            failed,
        );
    }

    /// A record written outside a promotion: route by it at once (its watch event may still
    /// be on its way); after a failure the next change tries again.
    pub(super) fn recorded(&mut self, i: usize, epoch: u64, rev: Option<i64>, now: Now) -> Vec<Action> {
        self.peers.bootstrapping = false;
        let Some(rev) = rev else {
            self.peers.bootstrap_after = Some(std::time::Instant::now() + std::time::Duration::from_secs(1));
            return Vec::new();
        };
        self.peers.bootstrap_after = None;
        self.peers.epoch = self.peers.epoch.max(epoch);
        self.peers.record_rev = self.peers.record_rev.max(rev);
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
        Some((coord, record, fences, self.peers.record_rev))
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
