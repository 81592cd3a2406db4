//! The steps of a failover: start, confirm, choose, promote, complete; give up, abandon;
//! and the switchover's stop-writes, catch-up and undo.

use crate::config::PromoteMode;
use crate::monitor::event::EventKind;
use crate::monitor::operations::PromoteError;

use crate::cluster::{BackendId, Fence, FenceKind};

use super::{Action, HeldBack, InFlight, Machine, Now, Outcome, Refusal, Started, Step, Trigger, TriggerRequest};

impl Machine {
    /// Begins a failover away from `from`: the route is cleared (its sessions are cut, new
    /// clients held). Nothing is fenced or promoted yet; the standbys are checked at once so
    /// their positions are read after the primary was lost.
    pub(super) fn start(&mut self, from: Option<BackendId>, reason: String, trigger: Trigger, now: Now, acts: &mut Vec<Action>) -> u64 {
        self.attempts += 1;
        let manual = matches!(trigger, Trigger::Manual(_));
        let from_lsn = from.and_then(|i| self.backends[i].lsn());
        let from_timeline = from.and_then(|i| self.backends[i].obs.as_ref()).and_then(|o| o.timeline);
        tracing::warn!(from = from.map(|i| self.backends[i].name.as_str()).unwrap_or("(none)"), %reason, trigger = %trigger.label(), "failover started: sessions to the old primary cut, new ones held");
        self.in_flight = Some(InFlight {
            attempt: self.attempts,
            from,
            from_lsn,
            from_timeline,
            to: None,
            to_lsn: None,
            step: Step::Waiting,
            started: now.mono,
            trigger,
            reason,
            switchover: false,
            manual,
            failed: Vec::new(),
            unreached: Vec::new(),
            held_back: None,
            note: None,
        });
        // Published (once, with its reason) at the end of the evaluation.
        self.route = None;
        for i in self.backends.ids().filter(|i| Some(*i) != from) {
            acts.push(Action::CheckNow(i));
        }
        self.attempts
    }

    /// The lost primary is really gone: it has failed without interruption for
    /// `promote_after`, or it was lost for a reason other than silence (fenced, demoted,
    /// another cluster). At start-up (no known primary), some server must have been down
    /// that long.
    pub(super) fn confirmed(&self) -> bool {
        let Some(f) = &self.in_flight else { return false };
        let long_enough = |b: &super::Backend| b.marked_down && b.down_for().is_some_and(|d| d >= self.settings.promote_after());
        match f.from {
            None => !self.backends.iter().any(|b| b.problem().is_some()) && self.backends.iter().any(long_enough),
            Some(p) => {
                let b = &self.backends[p];
                let silent = !b.healthy || b.failing_since.is_some();
                !silent || b.fence.is_some() || long_enough(b)
            }
        }
    }

    /// Every standby that answers has had its position read since the lost primary's
    /// outage began, so the choice by WAL position uses final positions.
    fn positions_final(&self) -> bool {
        let Some(since) = self.in_flight.as_ref().and_then(|f| f.from).and_then(|p| self.backends[p].failing_since) else { return true };
        // Every eligible standby, answering or not: one whose latest check failed may hold
        // the most WAL, so the choice waits for its answer (or for it to be marked down).
        self.backends.ids().filter(|i| self.eligible(*i)).all(|i| self.backends[i].fresh() && self.backends[i].success_started.is_some_and(|s| s >= since))
    }

    /// Picks the standby to promote, if one may be promoted now.
    pub(super) fn choose_candidate(&mut self, now: Now, acts: &mut Vec<Action>) {
        if !self.positions_final() {
            return;
        }
        // Coordinated: an automatic failover needs a quorum of the live proxies (an
        // operator's trigger is a decision of its own).
        let manual = self.in_flight.as_ref().is_some_and(|f| f.manual);
        if let Some(veto) = self.quorum_veto().filter(|_| !manual) {
            if self.in_flight.as_ref().is_some_and(|f| f.held_back != Some(HeldBack::Quorum)) {
                tracing::warn!(%veto, "failover waits for the other proxies to agree");
                if let Some(f) = self.in_flight.as_mut() {
                    f.held_back = Some(HeldBack::Quorum);
                }
            }
            return;
        }
        let Some(f) = &self.in_flight else { return };
        let mut excluded = f.failed.clone();
        excluded.extend(f.unreached.iter().filter(|(i, at)| self.backends[*i].success_started.is_none_or(|s| s <= *at)).map(|(i, _)| *i));
        let from = f.from;
        let since = from.and_then(|p| self.backends[p].failing_since);
        let choice = self.choose(from, super::Purpose::Failover, &excluded, since);
        let Some(c) = choice.to else {
            if let Some(wait) = choice.wait.filter(|_| f.held_back != Some(HeldBack::Synchronous)) {
                tracing::warn!(%wait, "failover waits");
                if let Some(f) = self.in_flight.as_mut() {
                    f.held_back = Some(HeldBack::Synchronous);
                }
            }
            return;
        };
        if self.corroborated(from, c) {
            if let Some(f) = self.in_flight.as_mut() {
                f.note = choice.note;
            }
            self.begin_promotion(c, now, acts);
        } else if f.held_back != Some(HeldBack::Candidate(c)) {
            tracing::warn!(
                standby = %self.backends[c].name,
                "failover waits: the standby stopped answering during the primary's outage too, or its latest check failed; promoting it once it answers and the old primary then fails a whole check"
            );
            if let Some(f) = self.in_flight.as_mut() {
                f.held_back = Some(HeldBack::Candidate(c));
            }
        }
    }

    /// Whether the checks say `from` (the lost primary) is down while standby `c` is up.
    /// `c`'s latest check must have succeeded. If `c` also failed checks during `from`'s
    /// outage, both may have been stalled by something they share (the host, the network,
    /// this proxy), and `from` must fail a whole check that began after `c` answered again:
    /// one that ended a check timeout or more after it.
    fn corroborated(&self, from: Option<BackendId>, c: BackendId) -> bool {
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

    /// The lost primary answers again as itself (same cluster and timeline, writable) while
    /// no promotion is pending, and it is not fenced for another reason than this failover.
    pub(super) fn came_back(&self, p: BackendId) -> bool {
        let Some(f) = &self.in_flight else { return false };
        let b = &self.backends[p];
        // A fence another coordinated proxy set is not this failover's to lift.
        let ours = matches!(b.fence, None | Some(Fence { kind: FenceKind::Unreachable | FenceKind::Superseded, .. }))
            && b.fence.as_ref().is_none_or(|f| f.peer.is_none());
        b.fresh()
            && b.claims_primary()
            && self.same_cluster(p)
            && ours
            && self.recorded(p)
            && !self.cut_by_drain(p)
            && b.obs.as_ref().and_then(|o| o.timeline) == f.from_timeline
    }

    /// Gives the route back to `p`, the old primary: nothing was promoted, so nothing else
    /// can be primary (a split brain would still be resolved by timeline).
    pub(super) fn abandon(&mut self, p: BackendId, now: Now, acts: &mut Vec<Action>) {
        let Some(f) = self.in_flight.take() else { return };
        let reason = format!("{} answers again as the primary before any standby was promoted: failover abandoned ({})", self.backends[p].name, f.reason);
        tracing::warn!(primary = %self.backends[p].name, %reason, "failover abandoned");
        if self.backends[p].fence.take().is_some() {
            acts.push(self.event(now, EventKind::Unfence, Some(p), None, reason.clone(), f.trigger.clone()));
        }
        if f.manual {
            acts.push(Action::Concluded { attempt: f.attempt, outcome: Outcome::Failed(format!("{}; {} stays primary", f.reason, self.backends[p].name)) });
        }
        self.set_route(Some(p), String::new(), acts);
    }

    /// Asks for `c`'s promotion: from here the attempt is committed to it. The old primary
    /// is fenced first, so its reappearance as a writable server is a split brain.
    pub(super) fn begin_promotion(&mut self, c: BackendId, now: Now, acts: &mut Vec<Action>) {
        let lsn = self.backends[c].lsn();
        let Some(f) = self.in_flight.as_mut() else { return };
        f.to = Some(c);
        f.to_lsn = f.to_lsn.or(lsn);
        f.step = Step::Promoting { asked: now.mono, pending: false };
        let (attempt, from, trigger, reason) = (f.attempt, f.from, f.trigger.clone(), f.reason.clone());
        if let Some(p) = from {
            self.fence_old(p, &trigger, &reason, now, acts);
        }
        let synchronous = self.start_list(c);
        tracing::warn!(standby = %self.backends[c].name, synchronous_standby_names = synchronous.as_deref().unwrap_or("(as it is)"), "promoting standby");
        acts.push(Action::Promote { attempt, backend: c, synchronous });
    }

    /// Fences the old primary (unless demoted or fenced already).
    fn fence_old(&mut self, p: BackendId, trigger: &Trigger, reason: &str, now: Now, acts: &mut Vec<Action>) {
        let b = &self.backends[p];
        let demoted = b.fresh() && b.in_recovery();
        if b.fence.is_some() || demoted {
            return;
        }
        let kind = if matches!(trigger, Trigger::Manual(_)) && b.healthy { FenceKind::Superseded } else { FenceKind::Unreachable };
        self.backends[p].fence = Some(Fence::new(kind, reason.to_string()));
        acts.push(self.event(now, EventKind::Fence, Some(p), None, reason.to_string(), trigger.clone()));
    }

    /// The failover is done: route to `w`, count and record it.
    pub(super) fn complete(&mut self, w: BackendId, now: Now, acts: &mut Vec<Action>) {
        let Some(f) = self.in_flight.as_ref() else { return };
        let (trigger, reason) = (f.trigger.clone(), f.reason.clone());
        if let Some(p) = f.from.filter(|p| *p != w) {
            self.fence_old(p, &trigger, &reason, now, acts);
        }
        let Some(f) = self.in_flight.take() else { return };
        let duration = now.mono.saturating_duration_since(f.started);
        self.set_route(Some(w), String::new(), acts);
        self.after_failover = true;
        self.counters.failovers += 1;
        self.last_failover_time = Some(now.wall);
        let to_lsn = f.to_lsn.or(self.backends[w].last_standby_lsn);
        // Its first position as a primary: the new timeline began at or before it.
        self.backends[w].fork_lsn = self.backends[w].lsn();
        if f.switchover {
            // Read-only on purpose now: it is fenced, and promoting it later clears that.
            if let Some(p) = f.from {
                self.read_only_left.remove(&p);
            }
        }
        // A switchover promoted only after the candidate replayed the final position.
        let distance = if f.switchover { Some(0) } else { f.from_lsn.zip(to_lsn).map(|(a, b)| a.saturating_sub(b)) };
        let reason = match &f.note {
            Some(note) if !f.switchover => format!("{}; {note}", f.reason),
            _ => f.reason.clone(),
        };
        let mut ev = self.event(now, EventKind::Failover, f.from, Some(w), reason, f.trigger.clone());
        if let Action::Record(e) = &mut ev {
            e.duration_ms = Some(duration.as_millis() as u64);
            e.wal_distance_bytes = distance;
        }
        tracing::warn!(
            from = f.from.map(|i| self.backends[i].name.as_str()).unwrap_or("(none)"),
            to = %self.backends[w].name,
            reason = %f.reason,
            trigger = %f.trigger.label(),
            duration_ms = duration.as_millis() as u64,
            wal_distance_bytes = distance.map(|d| d.to_string()).unwrap_or_else(|| "unknown".into()),
            "failover complete"
        );
        acts.push(ev);
        acts.push(Action::FailoverDone(duration));
        if f.manual {
            acts.push(Action::Concluded { attempt: f.attempt, outcome: Outcome::Completed { to: self.backends[w].name.clone() } });
        }
    }

    /// A promotion request did not produce a primary. Pending: keep waiting (committed).
    /// Not sent or refused: nothing was promoted, so another candidate may be tried (a
    /// switchover is undone instead).
    pub(super) fn promotion_failed(&mut self, c: BackendId, e: PromoteError, now: Now, acts: &mut Vec<Action>) {
        let name = self.backends[c].name.clone();
        if let PromoteError::Pending(why) = &e {
            tracing::warn!(standby = %name, %why, "promotion not finished yet; the route stays empty until it reports primary");
            if let Some(Step::Promoting { pending, .. }) = self.in_flight.as_mut().map(|f| &mut f.step) {
                *pending = true;
            }
            return;
        }
        let Some(f) = self.in_flight.as_mut() else { return };
        f.to = None;
        f.step = Step::Waiting;
        match &e {
            PromoteError::NotSent(_) | PromoteError::NotAllowed(_) => f.unreached.push((c, now.mono)),
            _ => f.failed.push(c),
        }
        let (from, trigger, switchover, manual, attempt) = (f.from, f.trigger.clone(), f.switchover, f.manual, f.attempt);
        let reason = format!("promoting {name} failed: {e}");
        tracing::warn!(%reason, "failover attempt failed");
        acts.push(self.event(now, EventKind::FailoverFailed, from, Some(c), reason.clone(), trigger));
        if switchover {
            self.undo(Outcome::Failed(reason), now, acts);
        } else if manual {
            if let Some(f) = self.in_flight.as_mut() {
                f.manual = false;
            }
            let old = from.map(|p| self.backends[p].name.clone()).unwrap_or_default();
            acts.push(Action::Concluded {
                attempt,
                outcome: Outcome::Failed(format!("{reason}; nothing was promoted ({old} gets the route back if it answers)")),
            });
        }
    }

    /// A candidate asked to promote stayed down past the threshold: it is fenced (it may
    /// come back promoted) and the attempt goes on without it.
    pub(super) fn give_up(&mut self, c: BackendId, now: Now, acts: &mut Vec<Action>) {
        let name = self.backends[c].name.clone();
        let reason = format!("{name} stopped answering after its promotion was asked for; fenced, as it may come back promoted (an operator unfences it)");
        self.backends[c].fence = Some(Fence::new(FenceKind::PromotionAsked, reason.clone()));
        let Some(f) = self.in_flight.as_mut() else { return };
        f.to = None;
        f.step = Step::Waiting;
        f.failed.push(c);
        let (from, trigger, switchover) = (f.from, f.trigger.clone(), f.switchover);
        tracing::warn!(%reason, "promotion given up");
        acts.push(self.event(now, EventKind::Fence, Some(c), None, reason.clone(), trigger.clone()));
        acts.push(self.event(now, EventKind::FailoverFailed, from, Some(c), reason.clone(), trigger));
        if switchover {
            self.undo(Outcome::Failed(reason), now, acts);
        }
    }

    /// The candidate lost a split brain after promoting (another primary on a higher
    /// timeline): the attempt goes on without it.
    pub(super) fn drop_candidate(&mut self, c: BackendId, now: Now, acts: &mut Vec<Action>) {
        let Some(f) = self.in_flight.as_mut() else { return };
        f.to = None;
        f.step = Step::Waiting;
        f.failed.push(c);
        let (from, trigger) = (f.from, f.trigger.clone());
        let reason = format!("{} was fenced while promoting: another primary is on a higher timeline", self.backends[c].name);
        acts.push(self.event(now, EventKind::FailoverFailed, from, Some(c), reason, trigger));
    }

    /// An operator's failover: a switchover while the primary is healthy (unless `force`),
    /// else an immediate promotion.
    pub fn trigger(&mut self, req: &TriggerRequest, now: Now) -> Result<(Started, Vec<Action>), Refusal> {
        if self.settings.promote == PromoteMode::Never {
            return Err(Refusal::Conflict(
                "failover.promote is \"never\": pgfailover does not promote; promote a standby with your cluster manager and the proxy follows it".into(),
            ));
        }
        if let Some(why) = self.coord.as_ref().filter(|c| !(c.is_leader && c.etcd_up)).and_then(|_| self.coordination_wait()) {
            return Err(Refusal::Conflict(format!("this proxy does not lead the coordinated proxies: {why}")));
        }
        if let Some(f) = &self.in_flight {
            // A failover that is only confirming the outage (or waiting for a candidate)
            // may be hurried by an operator who knows the primary is gone.
            if !(req.force && f.step == Step::Waiting) {
                let what = match (&f.step, f.to) {
                    (Step::Waiting, _) => "waiting: retry with {\"force\": true} to promote now".to_string(),
                    (_, Some(t)) => format!("promoting {}", self.backends[t].name),
                    _ => "undoing a switchover".into(),
                };
                return Err(Refusal::Conflict(format!("a failover is already in progress ({what})")));
            }
        }
        // A routed primary is switched over, not failed over, even if its latest check
        // failed: it may be writable, and promoting beside it would lose its writes.
        let healthy_primary = self.in_flight.is_none() && self.route.is_some_and(|p| self.keepable(p));
        let (candidate, note) = self.pick(req.target.as_deref(), healthy_primary && !req.force, req.force)?;
        let mut acts = Vec::new();
        let reason = format!("manual failover requested by {}", req.who);
        if let Some(f) = self.in_flight.as_mut() {
            f.trigger = Trigger::Manual(req.who.clone());
            f.manual = true;
            f.reason = format!("{}; {reason} (forced)", f.reason);
        } else {
            self.start(self.route, reason, Trigger::Manual(req.who.clone()), now, &mut acts);
        }
        let switchover = healthy_primary && !req.force;
        let f = self.in_flight.as_mut().expect("started above");
        let attempt = f.attempt;
        f.note = note;
        if switchover {
            f.switchover = true;
            f.to = Some(candidate);
            self.begin_drain(now, &mut acts);
        } else {
            self.begin_promotion(candidate, now, &mut acts);
        }
        self.evaluate(now, &mut acts);
        Ok((Started { attempt, to: self.backends[candidate].name.clone(), switchover }, acts))
    }

    /// The trigger's candidate: the named one unless a reason stands against it (see
    /// [`Machine::named_refusal`]), else the best by the automatic rule; with the choice's
    /// note (synchronous mode).
    fn pick(&self, target: Option<&str>, switchover: bool, force: bool) -> Result<(BackendId, Option<String>), Refusal> {
        match target {
            Some(name) => {
                let i = self.index(name)?;
                if self.route == Some(i) {
                    return Err(Refusal::Conflict(format!("{name} is already the primary")));
                }
                match self.named_refusal(i, switchover, force) {
                    Some(why) => Err(Refusal::Conflict(format!("{name} cannot be promoted: {why}"))),
                    None => Ok((i, None)),
                }
            }
            None => {
                let (excluded, from) = match &self.in_flight {
                    Some(f) => (f.failed.clone(), f.from),
                    None => (Vec::new(), self.route),
                };
                let purpose = if switchover { super::Purpose::Switchover } else { super::Purpose::Failover };
                let choice = self.choose(from, purpose, &excluded, None);
                match choice.to {
                    Some(c) => Ok((c, choice.note)),
                    None => {
                        let wait = choice.wait.map(|w| format!("{w}; ")).unwrap_or_default();
                        Err(Refusal::Conflict(format!("no standby is eligible for promotion: {wait}{}", self.eligibility_report())))
                    }
                }
            }
        }
    }
}
