//! The rules: route choice, split-brain resolution, failover steps, the state.

use std::cmp::Reverse;

use crate::config::PromoteMode;
use crate::monitor::history::EventKind;

use super::{Action, Fence, FenceKind, InFlight, Machine, Now, State, Trigger};

impl Machine {
    /// Re-decides everything after an input. Order matters: fences first (they change who
    /// may be routed), then the route, then the state.
    pub(super) fn evaluate(&mut self, now: Now, acts: &mut Vec<Action>) {
        self.auto_unfence(now, acts);
        self.resolve_split_brain(now, acts);
        if self.in_flight.is_none() {
            match self.route {
                Some(t) if self.keepable(t) => {}
                Some(t) => {
                    let why = self.lost_reason(t);
                    // Someone else's primary may already be there (external promotion, or
                    // the winner of a split brain): follow it at once.
                    let trigger = if self.best_claimant().is_some() { Trigger::External } else { Trigger::Automatic };
                    self.start(Some(t), why, trigger, now, acts);
                }
                None => {
                    if let Some(w) = self.best_claimant() {
                        tracing::info!(primary = %self.backends[w].name, "routing to the primary");
                        self.set_route(Some(w), String::new(), acts);
                    } else if self.primary_lost_at_start() {
                        self.start(None, "no backend reports itself primary and a server is down".into(), Trigger::Automatic, now, acts);
                    }
                }
            }
        }
        if let Some(f) = &self.in_flight {
            match f.to {
                Some(c) => {
                    if self.is_claimant(c) {
                        self.complete(c, now, acts);
                    }
                }
                None => {
                    if let Some(w) = self.best_claimant() {
                        self.complete(w, now, acts);
                    } else if let Some(p) = f.from.filter(|p| self.came_back(*p)) {
                        self.abandon(p, now, acts);
                    } else if self.settings.promote == PromoteMode::Auto {
                        if let Some(c) = self.best_eligible(&f.failed.clone()) {
                            if self.corroborated(f.from, c) {
                                self.begin_promotion(c, acts);
                            } else if f.held_back != Some(c) {
                                tracing::warn!(
                                    standby = %self.backends[c].name,
                                    "failover waits: the standby stopped answering during the primary's outage too, or its latest check failed; promoting it once it answers and the old primary then fails a whole check"
                                );
                                if let Some(f) = self.in_flight.as_mut() {
                                    f.held_back = Some(c);
                                }
                            }
                        }
                    }
                }
            }
        }
        self.state = self.compute_state();
        if self.state == State::Healthy {
            self.after_failover = false;
        }
    }

    fn same_cluster(&self, i: usize) -> bool {
        self.backends[i].obs.as_ref().map(|o| o.system_identifier) == self.system_identifier
    }

    /// The current route target may stay: healthy (below the failure threshold), primary,
    /// of this cluster, not fenced.
    fn keepable(&self, t: usize) -> bool {
        let b = &self.backends[t];
        b.claims_primary() && self.same_cluster(t) && b.fence.is_none()
    }

    /// May become the route target now: as keepable, and its latest check succeeded.
    fn is_claimant(&self, i: usize) -> bool {
        self.backends[i].fresh() && self.keepable(i)
    }

    /// The primary to route to: highest timeline, then the current target, then most WAL,
    /// then config order.
    pub(super) fn best_claimant(&self) -> Option<usize> {
        (0..self.backends.len())
            .filter(|i| self.is_claimant(*i))
            .max_by_key(|i| (self.backends[*i].timeline(), self.route == Some(*i), self.backends[*i].lsn(), Reverse(*i)))
    }

    /// The eligible standby with the most WAL (ties: config order).
    pub(super) fn best_eligible(&self, excluding: &[usize]) -> Option<usize> {
        (0..self.backends.len())
            .filter(|i| !excluding.contains(i) && self.eligible(*i))
            .max_by_key(|i| (self.backends[*i].lsn(), Reverse(*i)))
    }

    /// The furthest WAL position known in this cluster: the reference for standby lag.
    pub(super) fn reference_lsn(&self) -> Option<u64> {
        let from = self.in_flight.as_ref().and_then(|f| f.from_lsn);
        (0..self.backends.len())
            .filter(|i| self.backends[*i].fence.is_none() && self.same_cluster(*i))
            .filter_map(|i| self.backends[i].lsn())
            .chain(from)
            .max()
    }

    fn lost_reason(&self, t: usize) -> String {
        let b = &self.backends[t];
        if let Some(f) = &b.fence {
            format!("primary {} was fenced: {}", b.name, f.reason)
        } else if !b.healthy {
            format!(
                "primary {} failed {} consecutive health checks: {}",
                b.name,
                b.failure_count,
                b.last_error.as_deref().unwrap_or("unknown error")
            )
        } else if b.in_recovery() {
            format!("primary {} reports in recovery (demoted)", b.name)
        } else {
            format!("primary {} belongs to another cluster (system identifier changed)", b.name)
        }
    }

    /// Start-up without a primary: promote only when some server is down (it may have been
    /// the primary) and every backend has answered or failed at least once.
    fn primary_lost_at_start(&self) -> bool {
        self.backends.iter().all(|b| b.last_check.is_some()) && self.backends.iter().any(|b| b.marked_down)
    }

    /// Begins a failover away from `from`: fence it, clear the route (cutting its sessions).
    pub(super) fn start(&mut self, from: Option<usize>, reason: String, trigger: Trigger, now: Now, acts: &mut Vec<Action>) {
        let from_lsn = from.and_then(|i| self.backends[i].lsn());
        if let Some(i) = from {
            let b = &self.backends[i];
            let demoted = b.fresh() && b.in_recovery();
            if b.fence.is_none() && !demoted {
                let kind = if matches!(trigger, Trigger::Manual(_)) && b.healthy { FenceKind::Superseded } else { FenceKind::Unreachable };
                self.backends[i].fence = Some(Fence { kind, reason: reason.clone() });
                acts.push(self.event(now, EventKind::Fence, Some(i), None, reason.clone(), trigger.clone()));
            }
        }
        tracing::warn!(from = from.map(|i| self.backends[i].name.as_str()), %reason, trigger = %trigger.label(), "failover started");
        self.in_flight = Some(InFlight { from, from_lsn, to: None, to_lsn: None, started: now.mono, trigger, reason: reason.clone(), failed: Vec::new(), held_back: None });
        self.set_route(None, format!("failover in progress: {reason}"), acts);
    }

    /// Whether the checks say `from` (the lost primary) is down while standby `c` is up.
    /// `c`'s latest check must have succeeded. If `c` also failed checks during `from`'s
    /// outage, both may have been stalled by something they share (the host, the network,
    /// this proxy), and `from` must fail a whole check that began after `c` answered again:
    /// one that ended a check timeout or more after it.
    fn corroborated(&self, from: Option<usize>, c: usize) -> bool {
        let cand = &self.backends[c];
        if !cand.fresh() {
            return false;
        }
        let Some(old) = from.map(|p| &self.backends[p]) else { return true };
        let Some(since) = old.failing_since else { return true };
        let timeout = self.settings.check_timeout;
        let overlapped = cand.failed_at.is_some_and(|f| f + timeout >= since);
        match cand.back_at {
            Some(back) if overlapped => old.failed_at.is_some_and(|f| f >= back + timeout),
            _ => true,
        }
    }

    /// The lost primary answers again as a primary, and this failover has promoted nobody.
    fn came_back(&self, p: usize) -> bool {
        let b = &self.backends[p];
        b.fresh() && b.claims_primary() && self.same_cluster(p) && matches!(b.fence, Some(Fence { kind: FenceKind::Unreachable, .. }))
    }

    /// Gives the route back to `p`, the old primary: the failover promoted nobody, so
    /// nothing else can be primary (a split brain would still be resolved by timeline).
    fn abandon(&mut self, p: usize, now: Now, acts: &mut Vec<Action>) {
        let Some(f) = self.in_flight.take() else { return };
        self.backends[p].fence = None;
        let reason = format!("{} answers again as the primary before any standby was promoted: failover abandoned ({})", self.backends[p].name, f.reason);
        tracing::warn!(primary = %self.backends[p].name, %reason, "failover abandoned");
        acts.push(self.event(now, EventKind::Unfence, Some(p), None, reason, f.trigger));
        self.set_route(Some(p), String::new(), acts);
    }

    pub(super) fn begin_promotion(&mut self, c: usize, acts: &mut Vec<Action>) {
        let lsn = self.backends[c].lsn();
        if let Some(f) = self.in_flight.as_mut() {
            f.to = Some(c);
            f.to_lsn = lsn;
        }
        tracing::warn!(standby = %self.backends[c].name, "promoting standby");
        acts.push(Action::Promote(c));
    }

    /// The failover is done: route to `w`, count and record it.
    fn complete(&mut self, w: usize, now: Now, acts: &mut Vec<Action>) {
        let Some(f) = self.in_flight.take() else { return };
        let duration = now.mono.saturating_duration_since(f.started);
        self.set_route(Some(w), String::new(), acts);
        self.after_failover = true;
        self.counters.failovers += 1;
        self.last_failover_time = Some(now.wall);
        let to_lsn = f.to_lsn.or(self.backends[w].last_standby_lsn);
        let distance = f.from_lsn.zip(to_lsn).map(|(a, b)| a.saturating_sub(b));
        let mut ev = self.event(now, EventKind::Failover, f.from, Some(w), f.reason.clone(), f.trigger.clone());
        if let Action::Record(e) = &mut ev {
            e.duration_ms = Some(duration.as_millis() as u64);
            e.wal_distance_bytes = distance;
        }
        tracing::warn!(
            from = f.from.map(|i| self.backends[i].name.as_str()),
            to = %self.backends[w].name,
            reason = %f.reason,
            trigger = %f.trigger.label(),
            duration_ms = duration.as_millis() as u64,
            wal_distance_bytes = distance,
            "failover complete"
        );
        acts.push(ev);
        acts.push(Action::FailoverDone(duration));
    }

    fn set_route(&mut self, target: Option<usize>, reason: String, acts: &mut Vec<Action>) {
        if self.route != target || target.is_none() {
            self.route = target;
            acts.push(Action::Route { target, reason });
        }
    }

    /// Two writable servers: route to the higher timeline, fence the other. A backend
    /// fenced while unreachable that comes back writable is a split brain too.
    fn resolve_split_brain(&mut self, now: Now, acts: &mut Vec<Action>) {
        let claimants: Vec<usize> = (0..self.backends.len())
            .filter(|i| self.backends[*i].fresh() && self.backends[*i].claims_primary() && self.same_cluster(*i))
            .collect();
        if claimants.len() < 2 {
            return;
        }
        let Some(winner) = claimants
            .iter()
            .copied()
            .filter(|i| self.backends[*i].fence.is_none())
            .max_by_key(|i| (self.backends[*i].timeline(), self.route == Some(*i), self.backends[*i].lsn(), Reverse(*i)))
        else {
            return;
        };
        for o in claimants.into_iter().filter(|o| *o != winner) {
            let counted = match &self.backends[o].fence {
                None | Some(Fence { kind: FenceKind::Unreachable, .. }) => true,
                Some(_) => false,
            };
            if !counted {
                continue;
            }
            let (w, l) = (&self.backends[winner], &self.backends[o]);
            let reason = format!(
                "split brain: {} (timeline {}) and {} (timeline {}) both report not-in-recovery; {} fenced",
                w.name,
                w.timeline(),
                l.name,
                l.timeline(),
                l.name
            );
            tracing::warn!(winner = %w.name, fenced = %l.name, %reason, "split brain");
            self.backends[o].fence = Some(Fence { kind: FenceKind::SplitBrain, reason: reason.clone() });
            self.counters.split_brains += 1;
            acts.push(self.event(now, EventKind::SplitBrain, Some(o), Some(winner), reason, Trigger::Automatic));
        }
    }

    /// A fenced backend that reports in recovery was rebuilt as a standby: unfence it.
    fn auto_unfence(&mut self, now: Now, acts: &mut Vec<Action>) {
        for i in 0..self.backends.len() {
            let b = &self.backends[i];
            if b.fence.is_some() && b.fresh() && b.in_recovery() && self.same_cluster(i) {
                self.backends[i].fence = None;
                tracing::info!(backend = %self.backends[i].name, "unfenced: reports in recovery");
                acts.push(self.event(now, EventKind::Unfence, Some(i), None, "reports in recovery (rebuilt as a standby)".into(), Trigger::Automatic));
            }
        }
    }

    pub(super) fn compute_state(&self) -> State {
        if !self.backends.iter().any(|b| b.healthy) {
            return State::Unknown;
        }
        if let Some(f) = &self.in_flight {
            return if f.to.is_some() || self.settings.promote == PromoteMode::Never {
                State::FailoverInProgress
            } else {
                State::Degraded
            };
        }
        let Some(route) = self.route else { return State::Degraded };
        let standbys: Vec<usize> = (0..self.backends.len()).filter(|i| *i != route).collect();
        if standbys.iter().any(|i| self.eligible(*i)) {
            State::Healthy
        } else if standbys.iter().any(|i| {
            let b = &self.backends[*i];
            b.healthy && b.in_recovery() && b.fence.is_none() && self.same_cluster(*i)
        }) {
            State::RecoveryInProgress
        } else if self.after_failover {
            State::FailoverComplete
        } else {
            State::Degraded
        }
    }
}
