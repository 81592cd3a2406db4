//! A switchover's steps after the drain: writes stopped on the old primary, the candidate
//! catching up, the other standbys cascading from it, and the undo when it cannot finish.

use crate::monitor::event::EventKind;
use crate::monitor::operations::OpError;

use crate::cluster::{BackendId, Fence, FenceKind};

use super::inflight::InFlight;
use super::{Action, Machine, Now, Outcome, Step};

impl Machine {
    /// Switchover: the old primary refuses writes and its final position is known, or
    /// stopping failed (then everything is undone).
    pub(super) fn after_stop_writes(&mut self, p: BackendId, result: Result<u64, OpError>, now: Now, acts: &mut Vec<Action>) {
        let name = self.backends[p].name.clone();
        match result {
            Ok(lsn) => {
                let Some(f) = self.in_flight.as_mut() else { return };
                let Some(c) = f.to else { return };
                f.step = Step::CatchingUp { lsn };
                f.from_lsn = Some(lsn);
                f.to_lsn = Some(lsn);
                let attempt = f.attempt;
                tracing::info!(primary = %name, final_lsn = %crate::monitor::observation::format_lsn(lsn), "switchover: writes stopped; waiting for the standby to replay up to the final position");
                acts.push(Action::AwaitReplay { attempt, backend: c, lsn });
            }
            Err(e) => self.undo(Outcome::Failed(format!("stopping writes on {name} failed: {e}; switchover undone")), now, acts),
        }
    }

    /// Switchover: the candidate replayed everything the old primary wrote (promote it),
    /// or could not in time (undo).
    pub(super) fn after_catch_up(&mut self, c: BackendId, result: Result<u64, OpError>, now: Now, acts: &mut Vec<Action>) {
        match result {
            Ok(_) => {
                let others = self.cascade_candidates(c);
                if others.is_empty() || !self.settings.repoint_standbys {
                    return self.begin_promotion(c, now, acts);
                }
                if let Some(f) = self.in_flight.as_mut() {
                    f.step = Step::Cascading { since: now.mono };
                }
                for s in others {
                    tracing::info!(standby = %self.backends[s].name, upstream = %self.backends[c].name, "switchover: the standby will stream from the candidate");
                    self.backends[s].repoint = Some(super::Repoint { primary: c, at: now.mono, outcome: None });
                    acts.push(Action::Repoint { standby: s, primary: c });
                }
            }
            Err(e) => {
                let old = self.in_flight.as_ref().and_then(|f| f.from).map(|p| self.backends[p].name.clone()).unwrap_or_default();
                let reason = format!("{} did not catch up: {e}; switchover undone, {old} stays primary and nothing was lost", self.backends[c].name);
                self.undo(Outcome::Aborted(reason), now, acts);
            }
        }
    }

    /// Standbys (other than the candidate) that should stream from the candidate before it
    /// is promoted.
    pub(super) fn cascade_candidates(&self, c: BackendId) -> Vec<BackendId> {
        let from = self.in_flight.as_ref().and_then(|f| f.from);
        self.backends
            .ids()
            .filter(|s| *s != c && Some(*s) != from)
            .filter(|s| {
                let b = &self.backends[*s];
                b.healthy && b.in_recovery() && self.same_cluster(*s) && b.fence.is_none()
            })
            .collect()
    }

    /// Switchover: promotes the candidate once every other standby streams from it (or its
    /// re-point failed, or the wait is over: it may then need rebuilding, which its status
    /// will say).
    pub(super) fn after_cascade(&mut self, c: BackendId, since: std::time::Instant, now: Now, acts: &mut Vec<Action>) {
        let addr = self.backends[c].address.clone();
        let pending: Vec<BackendId> = self
            .cascade_candidates(c)
            .into_iter()
            .filter(|s| {
                let b = &self.backends[*s];
                let done = b.streaming() && b.upstream() == Some(addr.as_str());
                let failed = matches!(b.repoint.as_ref().map(|r| &r.outcome), Some(Some(Err(_))));
                !done && !failed
            })
            .collect();
        let waited = now.mono.saturating_duration_since(since);
        if !pending.is_empty() && waited < self.settings.switchover_wait.max(crate::monitor::operations::MIN_WAIT) {
            return;
        }
        if !pending.is_empty() {
            let names: Vec<&str> = pending.iter().map(|s| self.backends[*s].name.as_str()).collect();
            tracing::warn!(standbys = %names.join(", "), "switchover: promoting although these standbys do not stream from the candidate yet");
        }
        self.begin_promotion(c, now, acts);
    }

    /// Undoes a switchover: the old primary is made writable again; once it is, it gets the
    /// route back ([`finish_undo`](Self::finish_undo)).
    pub(super) fn undo(&mut self, outcome: Outcome, _now: Now, acts: &mut Vec<Action>) {
        let Some(f) = self.in_flight.as_mut() else { return };
        let Some(p) = f.from else {
            self.in_flight = None;
            return;
        };
        tracing::warn!(reason = %outcome.reason(), "switchover undone");
        f.step = Step::Undoing { outcome };
        acts.push(Action::AllowWrites { attempt: f.attempt, backend: p });
    }

    /// The old primary accepts writes again (or could not be reached): the switchover is
    /// over; its fence (if any) is lifted and the next evaluation routes to it.
    pub(super) fn finish_undo(&mut self, now: Now, acts: &mut Vec<Action>) {
        let Some(mut f) = self.in_flight.take() else { return };
        let Step::Undoing { outcome } = std::mem::replace(&mut f.step, Step::Waiting) else { return };
        if let Some(p) = f.from {
            if matches!(self.backends[p].fence, Some(Fence { kind: FenceKind::Superseded, .. })) {
                self.backends[p].fence = None;
                acts.push(self.event(now, EventKind::Unfence, Some(p), None, outcome.reason().to_string(), f.trigger.clone()));
            }
        }
        self.conclude_aborted(&f, outcome, now, acts);
    }

    /// A switchover undone: its history event, and the answer to the operator who asked.
    pub(super) fn conclude_aborted(&self, f: &InFlight, outcome: Outcome, now: Now, acts: &mut Vec<Action>) {
        acts.push(self.event(now, EventKind::SwitchoverAborted, f.from, f.to, outcome.reason().to_string(), f.trigger.clone()));
        if f.manual {
            acts.push(Action::Concluded { attempt: f.attempt, outcome });
        }
    }
}
