//! What passes between this proxy's machine and the others, through etcd: their news in
//! ([`Machine::coordinated`], one batch at a time, applied whole and then re-decided once),
//! and what this proxy tells them ([`Machine::share`]: its own fence changes, and the record
//! the leader writes when the record names no primary it can route to; [`Machine::own_view`];
//! [`Machine::promotion_record`], written before a promotion).

use std::time::Duration;

use crate::cluster::{BackendId, Fence, FenceKind, FenceRecord, MemberView, PrimaryRecord};
use crate::coord::{Event, SharedFence, Snapshot, UNREADABLE};
use crate::monitor::event::EventKind;

use super::coordination::Coordination;
use super::{Action, Machine, Now, Trigger};

/// A record to write through the fencing-token transaction: the new record, the fences to
/// write before it, and the record revision the decision rests on (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recording {
    /// The new record.
    pub record: PrimaryRecord,
    /// Fences written in the same transaction, before the record (the old primary's).
    pub fences: Vec<(String, FenceRecord)>,
    /// The record key's mod revision the decision saw: the new record replaces exactly it.
    pub expect: i64,
}

/// After a failed record outside a promotion, the next try waits this long.
const RECORD_RETRY: Duration = Duration::from_secs(1);

/// Fences shared by [`Machine::share`]. An old primary's fence (unreachable, superseded) is
/// written by the leader in the transaction that records the new primary, and only then: a
/// proxy that does not lead never fences a primary for all.
fn shared_by_sync(kind: FenceKind) -> bool {
    matches!(kind, FenceKind::SplitBrain | FenceKind::PromotionAsked)
}

/// Sharing this proxy's own fence `f` on `backend`, if it is one to share. A split-brain
/// fence on the recorded primary was decided on a stale view (the record wins) and is not
/// shared; any other split-brain fence only while the record stays the one it was decided
/// on.
fn share_fence(c: &Coordination, backend: &str, f: &Fence) -> Option<Action> {
    if f.peer.is_some() || !shared_by_sync(f.kind) {
        return None;
    }
    let split = f.kind == FenceKind::SplitBrain;
    if split && c.record.as_ref().is_some_and(|r| r.name == backend) {
        tracing::warn!(%backend, "not sharing a split-brain fence on the recorded primary (decided on a stale view)");
        return None;
    }
    let fence = FenceRecord { fence: f.clone(), by: c.me.clone() };
    Some(Action::ShareFence { backend: backend.to_string(), fence, while_record: split.then_some(c.record_rev) })
}

impl Machine {
    /// Coordinated from the start: neither routing nor promoting before etcd has spoken.
    /// Call once, after the fences restored from disk are in.
    pub fn join(&mut self, me: String, majority: bool) {
        let known = self.backends.iter().map(|b| (b.name.clone(), b.fence.clone())).collect();
        let restored = Some(self.backends.iter().filter(|b| b.fence.is_some()).map(|b| b.name.clone()).collect());
        self.coord = Some(Coordination { me, majority, known, restored, ..Default::default() });
    }

    /// One batch of etcd's news (a session's first read, or one watch response): applied
    /// whole, then re-decided once.
    pub fn coordinated(&mut self, batch: Vec<Event>, now: Now) -> Vec<Action> {
        let Some(before) = self.coord.as_ref().map(Coordination::footing) else { return Vec::new() };
        let mut acts = Vec::new();
        let mut changed = false;
        let mut touched = Vec::new();
        for ev in batch {
            match ev {
                Event::EtcdUp(up) => {
                    if let Some(c) = self.coord.as_mut() {
                        c.etcd_up = up;
                        // Without etcd, route by this proxy's own checks (and the last record).
                        c.settled |= !up;
                    }
                }
                Event::Leadership { leader, is_leader } => {
                    if let Some(c) = self.coord.as_mut() {
                        (c.leader, c.is_leader) = (leader, is_leader);
                    }
                }
                Event::Record(record, rev) => self.take_record(record, rev),
                Event::Fence { backend, fence } => changed |= self.take_fence(backend, fence, now, &mut acts, &mut touched),
                Event::Member { name, view } => {
                    if let Some(c) = self.coord.as_mut() {
                        match view {
                            Some(v) => c.members.insert(name, v),
                            None => c.members.remove(&name),
                        };
                    }
                }
                Event::Loaded(snapshot) => {
                    self.load(snapshot, now, &mut acts, &mut touched);
                    changed = true;
                }
                Event::Pause(p) => {
                    self.take_paused(p, now, &mut acts);
                    changed = true;
                }
                Event::Drain(d) => {
                    if let Some(c) = self.coord.as_mut() {
                        c.drain = d;
                    }
                }
                Event::Maintenance(m) => {
                    self.take_maintenance(m, now, &mut acts);
                    changed = true;
                }
                Event::FenceRefused { backend } => {
                    // Not in etcd: shared again by the next share if it still stands.
                    if let Some(c) = self.coord.as_mut() {
                        c.known.insert(backend, None);
                    }
                }
            }
        }
        // What peers set or lifted is known now: not this proxy's to share back.
        if let Some(c) = self.coord.as_mut() {
            for name in touched {
                if let Some(b) = self.backends.iter().find(|b| b.name == name) {
                    c.known.insert(name, b.fence.clone());
                }
            }
        }
        // A split-brain fence on the recorded primary (set here or shared by a peer, in this
        // batch or before the record came) was decided on a stale view, e.g. by a proxy
        // frozen through a failover: the record wins, and the lift goes to etcd with the
        // next share.
        let recorded = self.coord.as_ref().and_then(|c| c.recorded);
        if let Some(i) = recorded.filter(|i| matches!(self.backends[*i].fence, Some(Fence { kind: FenceKind::SplitBrain, .. }))) {
            tracing::warn!(backend = %self.backends[i].name, "lifting a split-brain fence on the recorded primary");
            acts.extend(self.lift_fence(i, "the coordinated proxies recorded it as the primary".into(), now));
            changed = true;
        }
        if changed || self.coord.as_ref().map(Coordination::footing) != Some(before) {
            self.evaluate(now, &mut acts);
        }
        acts
    }

    /// The recorded primary changed (or is gone), at mod revision `rev`.
    fn take_record(&mut self, record: Option<PrimaryRecord>, rev: i64) {
        let index = record.as_ref().and_then(|r| self.backends.find(&r.name));
        let foreign = record.as_ref().filter(|_| index.is_none()).map(|r| r.name.clone());
        if foreign.is_some() {
            tracing::error!(record = ?record, "the recorded primary is none of this proxy's backends: every proxy must name the backends alike");
        }
        let Some(c) = self.coord.as_mut() else { return };
        c.epoch = c.epoch.max(record.as_ref().map(|r| r.epoch).unwrap_or(0));
        c.record_rev = rev;
        c.record = record;
        c.recorded = index;
        c.record_foreign = foreign;
    }

    /// A shared fence changed. Returns whether it concerns one of this proxy's backends.
    fn take_fence(&mut self, backend: String, fence: SharedFence, now: Now, acts: &mut Vec<Action>, touched: &mut Vec<String>) -> bool {
        let Some(c) = self.coord.as_mut() else { return false };
        let fence = match fence {
            SharedFence::Set { fence, revision } => {
                c.fence_revs.insert(backend.clone(), revision);
                Some(fence)
            }
            SharedFence::Lifted => {
                c.fence_revs.remove(&backend);
                None
            }
            // Not this proxy's to judge: the fence stays as it was, and is never lifted here.
            SharedFence::Unreadable => {
                c.fence_revs.insert(backend, UNREADABLE);
                return false;
            }
        };
        self.peer_change(backend, fence, now, acts, touched)
    }

    /// Another proxy's fence on `backend` as etcd has it now (`None`: lifted), applied to the
    /// backend of that name. Returns whether there is one.
    fn peer_change(&mut self, backend: String, fence: Option<FenceRecord>, now: Now, acts: &mut Vec<Action>, touched: &mut Vec<String>) -> bool {
        if let Some(c) = self.coord.as_mut() {
            match &fence {
                Some(f) => c.fences.insert(backend.clone(), f.clone()),
                None => c.fences.remove(&backend),
            };
        }
        let Some(i) = self.backends.find(&backend) else { return false };
        let by = fence.as_ref().map(|f| f.by.clone()).unwrap_or_else(|| "another proxy".into());
        acts.extend(self.peer_fence(i, fence.map(|f| f.fence), &by, now));
        touched.push(backend);
        true
    }

    /// A session's first read: every shared key as it is now. Fences gone since the last
    /// session are lifted, a fence key this proxy cannot read keeps what it had; then fences
    /// restored from disk that etcd does not have are lifted (etcd's fences win), and fences
    /// this proxy set while etcd was away are shared.
    fn load(&mut self, s: Snapshot, now: Now, acts: &mut Vec<Action>, touched: &mut Vec<String>) {
        self.take_record(s.record, s.record_revision);
        let Some(c) = self.coord.as_mut() else { return };
        let old = std::mem::take(&mut c.fences);
        c.fence_revs.clear();
        let mut fences = std::collections::BTreeMap::new();
        for (b, f) in s.fences {
            match f {
                SharedFence::Set { fence, revision } => {
                    c.fence_revs.insert(b.clone(), revision);
                    fences.insert(b, fence);
                }
                SharedFence::Unreadable => {
                    c.fence_revs.insert(b.clone(), UNREADABLE);
                    if let Some(f) = old.get(&b) {
                        fences.insert(b, f.clone());
                    }
                }
                SharedFence::Lifted => {}
            }
        }
        c.members = s.members;
        c.settled = true;
        c.drain = s.drain;
        self.take_paused(s.pause, now, acts);
        self.take_maintenance(s.maintenance, now, acts);
        for b in old.into_keys().filter(|b| !fences.contains_key(b)) {
            self.peer_change(b, None, now, acts, touched);
        }
        for (b, f) in fences {
            self.peer_change(b, Some(f), now, acts, touched);
        }
        self.after_first_read(now, acts);
    }

    fn after_first_read(&mut self, now: Now, acts: &mut Vec<Action>) {
        let Some(c) = self.coord.as_mut() else { return };
        let restored = c.restored.take().unwrap_or_default();
        for i in self.backends.ids() {
            let (name, Some(f)) = (self.backends[i].name.clone(), self.backends[i].fence.clone()) else { continue };
            let Some(c) = self.coord.as_ref() else { return };
            if c.fences.contains_key(&name) || f.peer.is_some() {
                continue;
            }
            if restored.contains(&name) {
                tracing::warn!(backend = %name, "fence restored from disk is not in etcd: lifted (the coordinated proxies' fences win)");
                acts.extend(self.lift_fence(i, "not fenced in etcd: the coordinated proxies' fences win".into(), now));
            } else {
                acts.extend(share_fence(c, &name, &f));
            }
        }
    }

    /// Lifts backend `i`'s fence for `reason` (a fence restored from disk that the shared
    /// fences do not have, or a split-brain fence on the recorded primary). Returns the
    /// history event; the caller re-decides.
    fn lift_fence(&mut self, i: BackendId, reason: String, now: Now) -> Vec<Action> {
        if self.backends[i].fence.take().is_none() {
            return Vec::new();
        }
        vec![self.event(now, EventKind::Unfence, Some(i), None, reason, Trigger::External)]
    }

    /// Another proxy set (`Some`) or lifted (`None`) a shared fence on backend `i`. Returns
    /// the history events; the caller re-decides.
    fn peer_fence(&mut self, i: BackendId, fence: Option<Fence>, by: &str, now: Now) -> Vec<Action> {
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

    /// After every input, what this proxy must tell the others: its own fence changes since
    /// the last share, and a record when it leads and the record names no primary it can
    /// route to (a new cluster, or a promotion that was refused and undone), so every proxy
    /// follows the same one.
    pub fn share(&mut self, now: Now) -> Vec<Action> {
        let Some(c) = self.coord.as_mut() else { return Vec::new() };
        let mut acts = Vec::new();
        for b in self.backends.iter() {
            let before = c.known.insert(b.name.clone(), b.fence.clone());
            if before.as_ref() == Some(&b.fence) {
                continue;
            }
            match &b.fence {
                Some(f) => acts.extend(share_fence(c, &b.name, f)),
                None if c.fences.contains_key(&b.name) => {
                    acts.push(Action::LiftFence { backend: b.name.clone(), revision: c.fence_revs.get(&b.name).copied().unwrap_or(0) })
                }
                None => {}
            }
        }
        acts.extend(self.bootstrap_record(now));
        acts
    }

    /// The record the leader writes outside a promotion, when one is wanted and none is
    /// being written (nor failed a moment ago). The transaction replaces exactly the record
    /// this proxy saw.
    fn bootstrap_record(&mut self, now: Now) -> Option<Action> {
        let c = self.coord.as_ref()?;
        if c.bootstrapping || c.bootstrap_after.is_some_and(|t| now.mono < t) {
            return None;
        }
        let w = self.record_wanted()?;
        let recording = Recording { record: self.record_for(c, w), fences: Vec::new(), expect: c.record_rev };
        self.coord.as_mut()?.bootstrapping = true;
        Some(Action::RecordPrimary { backend: w, recording })
    }

    /// The outcome of an [`Action::RecordPrimary`] for backend `i` (the new record's revision,
    /// `None` when it was not written): route by it at once (its watch event may still be on
    /// its way); after a failure the next input a second later tries again.
    pub fn record_written(&mut self, i: BackendId, epoch: u64, rev: Option<i64>, now: Now) -> Vec<Action> {
        let Some(c) = self.coord.as_mut() else { return Vec::new() };
        c.bootstrapping = false;
        let Some(rev) = rev else {
            c.bootstrap_after = Some(now.mono + RECORD_RETRY);
            return Vec::new();
        };
        c.bootstrap_after = None;
        c.epoch = c.epoch.max(epoch);
        c.record_rev = c.record_rev.max(rev);
        self.take_recorded(i, now)
    }

    /// This proxy recorded backend `i` itself: it is routed by that record at once.
    pub(super) fn take_recorded(&mut self, i: BackendId, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        match self.coord.as_mut() {
            Some(c) if c.recorded != Some(i) => c.recorded = Some(i),
            _ => return acts,
        }
        self.evaluate(now, &mut acts);
        acts
    }

    fn record_for(&self, c: &Coordination, i: BackendId) -> PrimaryRecord {
        let b = &self.backends[i];
        PrimaryRecord {
            name: b.name.clone(),
            timeline: b.obs.as_ref().and_then(|o| o.timeline),
            system_identifier: b.obs.as_ref().map(|o| o.system_identifier.to_string()),
            epoch: c.epoch + 1,
            by: c.me.clone(),
        }
    }

    /// The record (and the old primary's fence) to write before promoting backend `i`, when
    /// coordinated: no promotion without it.
    pub fn promotion_record(&self, i: BackendId) -> Option<Recording> {
        let c = self.coord.as_ref()?;
        let fences = self
            .in_flight
            .as_ref()
            .and_then(|f| f.from)
            .and_then(|p| self.backends[p].fence.clone().map(|f| (self.backends[p].name.clone(), FenceRecord { fence: f, by: c.me.clone() })))
            .into_iter()
            .collect();
        Some(Recording { record: self.record_for(c, i), fences, expect: c.record_rev })
    }

    /// This proxy's own view, published for the others (the leader counts them for a
    /// quorum), when coordinated.
    pub fn own_view(&self) -> Option<MemberView> {
        let c = self.coord.as_ref()?;
        let backends = self
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
        Some(MemberView {
            name: c.me.clone(),
            leader: c.is_leader,
            primary: self.route.map(|i| self.backends[i].name.clone()),
            down: self.backends.iter().filter(|b| b.marked_down).map(|b| b.name.clone()).collect(),
            backends,
            paused: self.acks().0.cloned(),
            drain: self.acks().1.cloned(),
        })
    }
}
