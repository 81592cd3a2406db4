//! The rules: route choice, split-brain resolution, the failover's next step, the state.

use std::cmp::Reverse;

use crate::config::PromoteMode;
use crate::monitor::event::EventKind;

use crate::cluster::{BackendId, Fence, FenceKind};

use super::{Action, Machine, Now, ReasonKind, State, Step, Trigger};

impl Machine {
    /// Re-decides everything after an input. Order matters: fences first (they change who
    /// may be routed), then the route, then the failover's next step, then the state.
    pub(super) fn evaluate(&mut self, now: Now, acts: &mut Vec<Action>) {
        self.in_maintenance(now, acts);
        self.auto_unfence(now, acts);
        self.resolve_split_brain(now, acts);
        if self.in_flight.is_none() {
            match self.route {
                Some(t) if self.keepable(t) => {}
                Some(t) => {
                    let why = self.lost_reason(t);
                    // Someone else's primary may already be there (external promotion, or
                    // the winner of a split brain): follow it at once.
                    let trigger = if self.best_claimant().is_some() || self.cut_by_drain(t) { Trigger::External } else { Trigger::Automatic };
                    self.start(Some(t), why, trigger, now, acts);
                }
                // The first route waits for every backend's first check: routing to the first
                // writable server heard from could be a stale old primary.
                None if !self.backends.iter().all(|b| b.last_check.is_some()) || self.unsettled() => {}
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
        self.advance(now, acts);
        self.clear_leftover_read_only(now, acts);
        self.plan_repoints(now, acts);
        self.plan_synchronous(now, acts);
        self.state = self.compute_state();
        if self.state == State::Healthy {
            self.after_failover = false;
        }
        if self.route.is_none() {
            let reason = self.no_route_reason();
            self.set_route(None, reason, acts);
        }
        self.sync_pause(now, acts);
    }

    /// The failover's next step, if one is running.
    fn advance(&mut self, now: Now, acts: &mut Vec<Action>) {
        let Some(f) = &self.in_flight else { return };
        match (&f.step, f.to) {
            (Step::Promoting { asked, pending }, Some(c)) => {
                let (asked, pending, attempt) = (*asked, *pending, f.attempt);
                let b = &self.backends[c];
                if self.is_claimant(c) {
                    self.complete(c, now, acts);
                } else if b.marked_down {
                    self.give_up(c, now, acts);
                    // The attempt goes on without it: choose again.
                    self.advance(now, acts);
                } else if b.fence.is_some() {
                    // It became primary but lost a split brain to another (an external
                    // promotion on a higher timeline): that one is followed.
                    self.drop_candidate(c, now, acts);
                    self.advance(now, acts);
                } else if pending && b.fresh() && b.in_recovery() && now.mono.saturating_duration_since(asked) >= self.settings.promote_timeout {
                    // Still a standby long after an unfinished request (which may not have
                    // reached it): ask again; pg_promote is idempotent.
                    tracing::warn!(standby = %b.name, "promotion still not finished; asking again");
                    if let Some(f) = self.in_flight.as_mut() {
                        f.step = Step::Promoting { asked: now.mono, pending: false };
                    }
                    acts.push(Action::Promote { attempt, backend: c, synchronous: self.start_list(c) });
                }
            }
            (Step::Cascading { since }, Some(c)) => {
                let since = *since;
                self.after_cascade(c, since, now, acts);
            }
            (Step::Waiting, _) => {
                let (from, manual) = (f.from, f.manual);
                if let Some(p) = from.filter(|p| self.came_back(*p)) {
                    self.abandon(p, now, acts);
                } else if let Some(w) = self.best_claimant().filter(|w| Some(*w) != from) {
                    self.complete(w, now, acts);
                } else if self.may_promote() && self.confirmed() && (manual || self.maintenance.is_none()) {
                    // Maintenance mode waits for the primary (an operator's trigger still works).
                    self.choose_candidate(now, acts);
                }
            }
            (Step::Draining { .. } | Step::Cutting { .. }, _) => self.advance_drain(now, acts),
            _ => {}
        }
    }

    /// A routed primary whose writes a switchover stopped and never allowed again (the undo
    /// failed, or the proxy stopped mid-switchover): ask again every 2 s until it accepts
    /// writes.
    fn clear_leftover_read_only(&mut self, now: Now, acts: &mut Vec<Action>) {
        let Some(p) = self.route.filter(|p| self.in_flight.is_none() && self.read_only_left.contains(p) && self.backends[*p].fresh()) else { return };
        if self.allow_asked.is_some_and(|t| now.mono.saturating_duration_since(t) < std::time::Duration::from_secs(2)) {
            return;
        }
        tracing::warn!(primary = %self.backends[p].name, "the primary was left read-only by a switchover; making it writable again");
        self.allow_asked = Some(now.mono);
        acts.push(Action::AllowWrites { attempt: 0, backend: p });
    }

    /// The running failover's phase, as the status shows it.
    pub fn phase(&self) -> &'static str {
        match self.in_flight.as_ref().map(|f| &f.step) {
            None => "none",
            Some(Step::Waiting) if !self.may_promote() => "waiting_for_external_promotion",
            Some(Step::Waiting) if self.maintenance.is_some() && self.in_flight.as_ref().is_some_and(|f| !f.manual) => "maintenance",
            Some(Step::Waiting) if !self.confirmed() => "confirming",
            Some(Step::Waiting) => "waiting_for_candidate",
            Some(Step::Draining { .. }) => "draining",
            Some(Step::Cutting { .. }) => "cutting",
            Some(Step::StoppingWrites) => "stopping_writes",
            Some(Step::CatchingUp { .. }) => "catching_up",
            Some(Step::Cascading { .. }) => "cascading",
            Some(Step::Promoting { .. }) => "promoting",
            Some(Step::Undoing { .. }) => "undoing",
        }
    }

    /// The current route target may stay: healthy (below the failure threshold), primary,
    /// of this cluster, not fenced.
    pub(super) fn keepable(&self, t: BackendId) -> bool {
        let b = &self.backends[t];
        b.claims_primary() && self.same_cluster(t) && b.fence.is_none() && self.recorded(t) && !self.cut_by_drain(t)
    }

    /// May become the route target now: as keepable, and its latest check succeeded.
    pub(super) fn is_claimant(&self, i: BackendId) -> bool {
        self.backends[i].fresh() && self.keepable(i)
    }

    /// The primary to route to: highest timeline, then the current target, then most WAL,
    /// then config order.
    pub(super) fn best_claimant(&self) -> Option<BackendId> {
        self.backends
            .ids()
            .filter(|i| self.is_claimant(*i))
            .max_by_key(|i| (self.backends[*i].timeline(), self.route == Some(*i), self.backends[*i].lsn(), Reverse(*i)))
    }

    fn lost_reason(&self, t: BackendId) -> String {
        let b = &self.backends[t];
        if let Some(f) = &b.fence {
            format!("primary {} was fenced: {}", b.name, f.reason)
        } else if !b.healthy {
            format!(
                "primary {} failed {} consecutive health checks: {}",
                b.name,
                b.down_count,
                b.last_error.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "unknown error".into())
            )
        } else if self.cut_by_drain(t) {
            let to = self.coord.as_ref().and_then(|c| c.drain.as_ref()).map(|d| d.to.clone()).unwrap_or_default();
            format!("the coordinated proxies' leader is switching the primary over from {} to {to}", b.name)
        } else if !self.recorded(t) {
            format!("primary {} is no longer the recorded primary: {}", b.name, self.record_note())
        } else if b.in_recovery() {
            format!("primary {} reports in recovery (demoted)", b.name)
        } else {
            format!("primary {} belongs to another cluster (system identifier changed)", b.name)
        }
    }

    /// Start-up without a primary: promote only when some server is down (it may have been
    /// the primary) and every backend has answered or failed at least once.
    fn primary_lost_at_start(&self) -> bool {
        self.backends.iter().all(|b| b.last_check.is_some())
            && self.backends.iter().any(|b| b.marked_down)
            // A backend whose checks are turned away may be the primary: its role is unknown.
            && !self.backends.iter().any(|b| b.problem().is_some())
    }

    /// Publishes the route when its target or (while empty) its reason changed.
    pub(super) fn set_route(&mut self, target: Option<BackendId>, reason: String, acts: &mut Vec<Action>) {
        self.route = target;
        if self.published != target {
            self.published = target;
            self.route_reason = if target.is_some() { String::new() } else { reason.clone() };
            acts.push(Action::Route { target, reason });
        } else if target.is_none() && self.route_reason != reason {
            self.route_reason = reason.clone();
            acts.push(Action::RouteReason(reason));
        }
    }

    /// Why nothing is routed, for held and refused clients and `/ready`.
    fn no_route_reason(&self) -> String {
        if let Some(f) = &self.in_flight {
            let waiting_for_peers = self.coordination_wait();
            let phase = match &f.step {
                Step::Waiting if !f.manual && self.maintenance.is_some() && f.from.is_some() => {
                    f.from.and_then(|p| self.maintenance_reason(p)).unwrap_or_default()
                }
                Step::Waiting if f.from.is_some_and(|p| self.cut_by_drain(p)) => {
                    let (from, to) = self.coord.as_ref().and_then(|c| c.drain.as_ref()).map(|d| (d.from.clone(), d.to.clone())).unwrap_or_default();
                    format!("the primary is being switched over from {from} to {to}")
                }
                Step::Waiting if waiting_for_peers.is_some() => waiting_for_peers.unwrap_or_default(),
                Step::Waiting if self.settings.promote == PromoteMode::Never => "waiting for another manager to promote a standby".to_string(),
                Step::Waiting if !self.confirmed() => {
                    format!("promoting a standby if it stays down for {}", humantime::format_duration(self.settings.promote_after()))
                }
                Step::Waiting => {
                    let since = f.from.and_then(|p| self.backends[p].failing_since);
                    let wait = self.choose(f.from, super::Purpose::Failover, &f.failed, since).wait.map(|w| format!("{w}; ")).unwrap_or_default();
                    format!("no standby can be promoted: {wait}{}", self.eligibility_report())
                }
                Step::Draining { .. } => "switchover: waiting for open transactions on the old primary to finish".into(),
                Step::Cutting { .. } => "switchover: the old primary's sessions are ending on every proxy".into(),
                Step::StoppingWrites => "switchover: stopping writes on the old primary".into(),
                Step::CatchingUp { .. } => "switchover: the standby is replaying the old primary's last writes".into(),
                Step::Cascading { .. } => "switchover: the other standbys are switching to stream from the new primary".into(),
                Step::Promoting { .. } => format!("promoting {}", f.to.map(|c| self.backends[c].name.as_str()).unwrap_or("a standby")),
                Step::Undoing { .. } => "switchover undone: the old primary is being made writable again".into(),
            };
            if f.switchover {
                let name = |i: Option<BackendId>| i.map(|i| self.backends[i].name.clone()).unwrap_or_else(|| "?".into());
                return format!("the primary is being switched over from {} to {} ({phase})", name(f.from), name(f.to));
            }
            return format!("failover in progress: {}; {phase}", f.reason);
        }
        let problems: Vec<String> =
            self.backends.iter().filter_map(|b| b.problem().map(|e| format!("checks to {} fail: {e} [{}]", b.name, e.kind().as_str()))).collect();
        if !problems.is_empty() {
            return format!("no primary is known: {}", problems.join("; "));
        }
        if self.backends.iter().any(|b| b.last_check.is_none()) {
            return "waiting for the first health checks".into();
        }
        if self.unsettled() {
            return "waiting for the coordinated proxies' record of the primary (first read of etcd)".into();
        }
        let each: Vec<String> = self
            .backends
            .with_ids()
            .map(|(i, b)| {
                let what = if let Some(f) = &b.fence {
                    format!("fenced ({})", f.reason)
                } else if b.claims_primary() && !self.recorded(i) {
                    format!("primary, but not the recorded one: {}", self.record_note())
                } else if !b.healthy {
                    format!("down ({})", b.last_error.as_ref().map(|e| e.to_string()).unwrap_or_default())
                } else if b.in_recovery() {
                    "a standby".into()
                } else {
                    "another cluster".into()
                };
                format!("{}: {what}", b.name)
            })
            .collect();
        format!("no backend reports itself primary ({})", each.join("; "))
    }

    /// Two writable servers: route to the higher timeline, fence the other. A backend
    /// fenced while unreachable that comes back writable is a split brain too.
    fn resolve_split_brain(&mut self, now: Now, acts: &mut Vec<Action>) {
        let claimants: Vec<BackendId> =
            self.backends.ids().filter(|i| self.backends[*i].fresh() && self.backends[*i].claims_primary() && self.same_cluster(*i)).collect();
        if claimants.len() < 2 {
            return;
        }
        let Some(winner) = claimants
            .iter()
            .copied()
            .filter(|i| self.backends[*i].fence.is_none())
            // Coordinated, the recorded primary wins while etcd answers (every proxy follows
            // the record); a record seen before etcd went away may be stale.
            .max_by_key(|i| (self.record_current(*i), self.backends[*i].timeline(), self.route == Some(*i), self.backends[*i].lsn(), Reverse(*i)))
        else {
            return;
        };
        for o in claimants.into_iter().filter(|o| *o != winner) {
            let counted = match &self.backends[o].fence {
                None | Some(Fence { kind: FenceKind::Unreachable | FenceKind::PromotionAsked, .. }) => true,
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
            self.backends[o].fence = Some(Fence::new(FenceKind::SplitBrain, reason.clone()));
            self.counters.split_brains += 1;
            acts.push(self.event(now, EventKind::SplitBrain, Some(o), Some(winner), reason, Trigger::Automatic));
        }
    }

    /// A fenced backend that reports in recovery was rebuilt as a standby: unfence it.
    fn auto_unfence(&mut self, now: Now, acts: &mut Vec<Action>) {
        for i in self.backends.ids() {
            let b = &self.backends[i];
            let may_still_promote = matches!(b.fence, Some(Fence { kind: FenceKind::PromotionAsked, .. }));
            let seen_since = b.fence.as_ref().and_then(|f| f.peer).is_none_or(|f| b.success_started.is_some_and(|s| s > f));
            if b.fence.is_some() && !may_still_promote && seen_since && b.fresh() && b.in_recovery() && self.same_cluster(i) {
                self.backends[i].fence = None;
                tracing::info!(backend = %self.backends[i].name, "unfenced: reports in recovery");
                acts.push(self.event(now, EventKind::Unfence, Some(i), None, "reports in recovery (rebuilt as a standby)".into(), Trigger::Automatic));
            }
        }
    }

    pub(super) fn compute_state(&self) -> State {
        if !self.backends.iter().any(|b| b.healthy || b.problem().is_some()) {
            return State::Unknown;
        }
        if let Some(f) = &self.in_flight {
            return if f.to.is_some() || !self.may_promote() { State::FailoverInProgress } else { State::Degraded };
        }
        let Some(route) = self.route else { return State::Degraded };
        if self.backends.iter().any(|b| b.problem().is_some()) {
            return State::Degraded;
        }
        let standbys: Vec<BackendId> = self.backends.ids().filter(|i| *i != route).collect();
        if standbys.iter().any(|i| self.eligible(*i)) {
            State::Healthy
        } else if standbys.iter().any(|i| {
            let b = &self.backends[*i];
            // Catching up (or about to be listed as synchronous): it will be eligible by
            // itself. A policy that excludes it (nofailover, zone) is no recovery.
            let catching_up = self.reasons(*i, super::Purpose::Failover).iter().all(|r| matches!(r.kind, ReasonKind::Lagging | ReasonKind::NotSynchronous));
            b.healthy && b.fence.is_none() && self.same_cluster(*i) && self.following(*i, route) && catching_up
        }) {
            State::RecoveryInProgress
        } else if self.after_failover {
            State::FailoverComplete
        } else {
            State::Degraded
        }
    }
}
