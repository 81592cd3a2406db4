//! What goes into the machine besides etcd's news (`sharing`) and operators' triggers
//! (`failover`): check results, the outcomes of the operations it asked for, an operator's
//! unfence, a reload. Each records the input, re-decides everything, and returns the
//! [`Action`]s to carry out.

use crate::cluster::BackendId;
use std::time::Duration;

use crate::monitor::check_error::CheckError;
use crate::monitor::event::EventKind;
use crate::monitor::observation::Observation;
use crate::monitor::operations::{OpError, PromoteError, Repointed};

use super::{Action, Machine, Now, Refusal, Settings, Step, Trigger};

impl Machine {
    /// A check of backend `i` that took `took` finished now.
    pub fn observe(&mut self, i: BackendId, result: Result<Observation, CheckError>, took: Duration, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        let threshold = self.settings.failure_threshold;
        let started = now.mono.checked_sub(took).unwrap_or(now.mono);
        match result {
            Ok(obs) => {
                if self.system_identifier.is_none() {
                    self.system_identifier = Some(obs.system_identifier);
                }
                if self.backends[i].record_success(obs, started, now) {
                    self.counters.recoveries += 1;
                    acts.push(self.event(now, EventKind::Recovery, Some(i), None, "health checks succeed again".into(), Trigger::Automatic));
                }
                self.learn_timelines(i);
            }
            Err(e) => {
                self.counters.check_failures += 1;
                self.backends[i].record_failure(e, started, now, threshold);
            }
        }
        self.evaluate(now, &mut acts);
        acts
    }

    /// The outcome of an [`Action::Promote`].
    pub fn promoted(&mut self, attempt: u64, i: BackendId, result: Result<Observation, PromoteError>, now: Now) -> Vec<Action> {
        // A promotion that ran was recorded first (coordinated): route by that record even
        // if its watch event is still on its way.
        let mut acts = if result.is_ok() { self.take_recorded(i, now) } else { Vec::new() };
        let ours = self.in_flight.as_ref().is_some_and(|f| f.attempt == attempt && f.to == Some(i) && matches!(f.step, Step::Promoting { .. }));
        match result {
            Ok(obs) => {
                self.backends[i].record_success(obs, now.mono, now);
            }
            Err(e) if ours => self.promotion_failed(i, e, now, &mut acts),
            Err(e) => tracing::debug!(backend = %self.backends[i].name, error = %e, "late promotion result ignored"),
        }
        self.evaluate(now, &mut acts);
        acts
    }

    /// The outcome of an [`Action::StopWrites`]: the old primary's final WAL position.
    pub fn writes_stopped(&mut self, attempt: u64, i: BackendId, result: Result<u64, OpError>, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        if self.current(attempt, &Step::StoppingWrites) {
            self.after_stop_writes(i, result, now, &mut acts);
        }
        self.evaluate(now, &mut acts);
        acts
    }

    /// The outcome of an [`Action::AwaitReplay`].
    pub fn replayed(&mut self, attempt: u64, i: BackendId, result: Result<u64, OpError>, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        if self.in_flight.as_ref().is_some_and(|f| f.attempt == attempt && matches!(f.step, Step::CatchingUp { .. }) && f.to == Some(i)) {
            self.after_catch_up(i, result, now, &mut acts);
        }
        self.evaluate(now, &mut acts);
        acts
    }

    /// The outcome of an [`Action::AllowWrites`]: the undone switchover gives the route back.
    /// `attempt` 0: a leftover from an interrupted switchover was cleared.
    pub fn writes_allowed(&mut self, attempt: u64, i: BackendId, result: Result<(), OpError>, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        match &result {
            Ok(()) => {
                self.read_only_left.remove(&i);
            }
            Err(e) => {
                tracing::error!(backend = %self.backends[i].name, error = %e, "could not make the old primary writable again (ALTER SYSTEM RESET default_transaction_read_only); retrying")
            }
        }
        if self.in_flight.as_ref().is_some_and(|f| f.attempt == attempt && matches!(f.step, Step::Undoing { .. })) {
            self.finish_undo(now, &mut acts);
        }
        self.evaluate(now, &mut acts);
        acts
    }

    /// The outcome of an [`Action::Repoint`].
    pub fn repointed(&mut self, standby: BackendId, primary: BackendId, result: Result<Repointed, OpError>, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        let (s, p) = (self.backends[standby].name.clone(), self.backends[primary].name.clone());
        let outcome = match &result {
            Ok(r) => {
                let slot = r.slot.as_deref().map(|s| format!(", replication slot {s} ensured on {p}")).unwrap_or_default();
                let what = if r.changed { "primary_conninfo now names" } else { "primary_conninfo already named" };
                tracing::info!(standby = %s, primary = %p, changed = r.changed, "re-pointed standby");
                let reason = format!("{what} {p}, application_name {s}{slot}");
                acts.push(self.event(now, EventKind::Repoint, Some(standby), Some(primary), reason, Trigger::Automatic));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(standby = %s, primary = %p, error = %e, "could not re-point standby");
                Err(e.to_string())
            }
        };
        if let Some(r) = self.backends[standby].repoint.as_mut().filter(|r| r.primary == primary) {
            r.outcome = Some(outcome);
        }
        // See the new upstream soon rather than at the next interval.
        acts.push(Action::CheckNow(standby));
        self.evaluate(now, &mut acts);
        acts
    }

    /// A reload's settings (and `failover.quorum`), from the next decision on.
    pub fn reload(&mut self, settings: Settings, majority: bool, now: Now) -> Vec<Action> {
        self.settings = settings.fit(self.backends.len());
        if let Some(c) = self.coord.as_mut() {
            c.majority = majority;
        }
        let mut acts = Vec::new();
        self.evaluate(now, &mut acts);
        acts
    }

    /// Operator clears a fence.
    pub fn unfence(&mut self, name: &str, who: &str, now: Now) -> Result<Vec<Action>, Refusal> {
        let i = self.index(name)?;
        if self.backends[i].fence.is_none() {
            return Err(Refusal::Conflict(format!("{name} is not fenced")));
        }
        self.backends[i].fence = None;
        let mut acts = vec![self.event(now, EventKind::Unfence, Some(i), None, format!("unfenced by {who}"), Trigger::Manual(who.into()))];
        self.evaluate(now, &mut acts);
        Ok(acts)
    }
}
