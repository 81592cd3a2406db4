//! Pause, drain and maintenance: what the data path's gate holds, a switchover's drain
//! before it stops writes, the operator's pause, and maintenance mode.
//!
//! A switchover (a trigger on a healthy primary) does not cut its sessions first. It
//! **drains**: the gate holds new sessions for the old primary and the next statement of its
//! quiet sessions, open transactions finish (up to `failover.drain_timeout`), and only then
//! is it **cut**: the route leaves the old primary, whose quiet sessions end with a 57P01
//! between statements (the data path's doing) and whose sessions still in a transaction are
//! cut. Then writes are stopped, as before. Coordinated, the leader shares the drain in etcd
//! ([`DrainRecord`]) and every proxy does the same to its own sessions and answers in its
//! view ([`PauseAck`]); writes are stopped only once every live proxy confirmed the cut, and
//! a proxy that does not in time undoes the switchover (nothing was written yet).

use std::time::Duration;

use crate::cluster::{BackendId, Census, DrainPhase, DrainRecord, Maintenance, PauseAck, PauseRecord, Scope};
use crate::monitor::event::EventKind;

use super::{Action, DrainId, Machine, Now, Outcome, Step, Trigger};

/// How long a leader waits for every coordinated proxy to confirm it stopped routing to the
/// old primary, at least.
const CUT_WAIT_MIN: Duration = Duration::from_secs(2);

impl Machine {
    /// The operator's pause, if one holds everything.
    pub fn paused(&self) -> Option<&PauseRecord> {
        self.paused.as_ref()
    }

    /// Maintenance mode, if on.
    pub fn maintenance(&self) -> Option<&Maintenance> {
        self.maintenance.as_ref().map(|(m, _)| m)
    }

    /// This proxy's answers to the shared pause and drain.
    pub fn acks(&self) -> (Option<&PauseAck>, Option<&PauseAck>) {
        (self.acks.paused.as_ref(), self.acks.drain.as_ref())
    }

    /// The operator pauses (`Some`) or resumes. Coordinated, this comes from etcd.
    pub fn set_paused(&mut self, pause: Option<PauseRecord>, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        self.take_paused(pause, now, &mut acts);
        self.evaluate(now, &mut acts);
        acts
    }

    pub(super) fn take_paused(&mut self, pause: Option<PauseRecord>, now: Now, acts: &mut Vec<Action>) {
        if self.paused == pause {
            return;
        }
        let (kind, reason, who) = match (&pause, &self.paused) {
            (Some(p), _) => {
                tracing::warn!(by = %p.by, "paused: new sessions and quiet sessions' next statements are held");
                (EventKind::Pause, "paused: new sessions and quiet sessions' next statements are held".to_string(), p.by.clone())
            }
            (None, Some(old)) => {
                tracing::warn!(paused_by = %old.by, "resumed: held sessions go on");
                (EventKind::Resume, format!("resumed (paused by {} since {})", old.by, old.since), String::new())
            }
            (None, None) => return,
        };
        let trigger = if who.is_empty() { Trigger::Automatic } else { Trigger::Manual(who) };
        acts.push(self.event(now, kind, None, None, reason, trigger));
        self.acks.paused = None;
        self.paused = pause;
    }

    /// Maintenance mode turned on (`Some`) or off. Coordinated, this comes from etcd.
    pub fn set_maintenance(&mut self, m: Option<Maintenance>, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        self.take_maintenance(m, now, &mut acts);
        self.evaluate(now, &mut acts);
        acts
    }

    pub(super) fn take_maintenance(&mut self, m: Option<Maintenance>, now: Now, acts: &mut Vec<Action>) {
        let next = m.and_then(|m| {
            let until = humantime::parse_rfc3339_weak(&m.until).ok()?;
            Some((m, until))
        });
        if self.maintenance.as_ref().map(|(m, _)| m) == next.as_ref().map(|(m, _)| m) {
            return;
        }
        let (kind, who, reason) = match &next {
            Some((m, _)) => {
                tracing::warn!(by = %m.by, reason = %m.reason, until = %m.until, "maintenance mode on: no automatic failover or switchover until it ends");
                (EventKind::MaintenanceOn, m.by.clone(), format!("maintenance until {}: {}", m.until, m.reason))
            }
            None => {
                tracing::warn!("maintenance mode off");
                (EventKind::MaintenanceOff, String::new(), "maintenance mode ended".into())
            }
        };
        let trigger = if who.is_empty() { Trigger::Automatic } else { Trigger::Manual(who) };
        acts.push(self.event(now, kind, None, None, reason, trigger));
        acts.push(Action::Maintenance(next.as_ref().map(|(m, _)| m.clone())));
        self.maintenance = next;
    }

    /// A count asked for by an [`Action::AwaitDrain`] came back.
    pub fn drained(&mut self, id: DrainId, census: Census, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        match id {
            DrainId::Attempt(a) => {
                if let Some(f) = self.in_flight.as_mut().filter(|f| f.attempt == a) {
                    if let Step::Draining { census: c, .. } = &mut f.step {
                        *c = Some(census);
                    }
                }
            }
            DrainId::Shared(id) => {
                if self.coord.as_ref().and_then(|c| c.drain.as_ref()).is_some_and(|d| d.id == id) {
                    self.acks.drain = Some(PauseAck { id, phase: Some(DrainPhase::Drain), census });
                }
            }
            DrainId::Pause(id) => {
                if self.paused.as_ref().is_some_and(|p| p.id == id) {
                    self.acks.paused = Some(PauseAck { id, phase: None, census });
                }
            }
        }
        self.evaluate(now, &mut acts);
        acts
    }

    /// Maintenance mode holds automatic failovers back (it ran out: it ends here).
    pub(super) fn in_maintenance(&mut self, now: Now, acts: &mut Vec<Action>) -> bool {
        let Some((m, until)) = &self.maintenance else { return false };
        if now.wall < *until {
            return true;
        }
        tracing::warn!(reason = %m.reason, until = %m.until, "maintenance mode ran out");
        let reason = format!("maintenance mode ran out ({})", m.reason);
        acts.push(self.event(now, EventKind::MaintenanceOff, None, None, reason, Trigger::Automatic));
        acts.push(Action::Maintenance(None));
        if self.coord.as_ref().is_some_and(|c| c.is_leader) {
            acts.push(Action::EndSharedMaintenance);
        }
        self.maintenance = None;
        false
    }

    /// Why no route while maintenance waits for the primary.
    pub(super) fn maintenance_reason(&self, primary: BackendId) -> Option<String> {
        let (m, _) = self.maintenance.as_ref()?;
        Some(format!(
            "maintenance mode is on ({}, by {} until {}): no failover; waiting for {} to come back",
            m.reason, m.by, m.until, self.backends[primary].name
        ))
    }

    /// Switchover: pause for the old primary and let its transactions finish (or, with no
    /// drain timeout and nobody to wait for, cut at once).
    pub(super) fn begin_drain(&mut self, now: Now, acts: &mut Vec<Action>) {
        let timeout = self.settings.drain_timeout;
        let Some(f) = self.in_flight.as_mut() else { return };
        let Some(p) = f.from else { return };
        if timeout.is_zero() {
            return self.begin_cut(now, acts);
        }
        let until = now.mono + timeout;
        f.step = Step::Draining { until, census: None };
        let attempt = f.attempt;
        // The old primary keeps its sessions while they drain (`start` cleared the route).
        self.route = Some(p);
        tracing::warn!(primary = %self.backends[p].name, timeout = %humantime::format_duration(timeout), "switchover: paused; waiting for open transactions to finish");
        acts.push(Action::AwaitDrain { id: DrainId::Attempt(attempt), scope: Scope::Backend(p), until });
    }

    /// Switchover: the route leaves the old primary (its sessions end); then writes stop,
    /// once every coordinated proxy has done the same.
    fn begin_cut(&mut self, now: Now, acts: &mut Vec<Action>) {
        let Some(f) = self.in_flight.as_mut() else { return };
        let census = match &f.step {
            Step::Draining { census, .. } => *census,
            _ => None,
        };
        f.step = Step::Cutting { since: now.mono };
        self.route = None;
        if let (Some(p), Some(c)) = (f.from, census) {
            let cut = c.in_transaction + c.running;
            if cut > 0 {
                tracing::warn!(primary = %self.backends[p].name, sessions = cut, "switchover: sessions still in a transaction at the drain timeout are cut");
            }
        }
        if self.peers_missing(DrainPhase::Cut).is_empty() {
            self.stop_writes(now, acts);
        }
    }

    /// Switchover: writes are stopped on the old primary.
    fn stop_writes(&mut self, _now: Now, acts: &mut Vec<Action>) {
        let Some(f) = self.in_flight.as_mut() else { return };
        let (Some(p), Some(c)) = (f.from, f.to) else { return };
        f.step = Step::StoppingWrites;
        tracing::warn!(from = %self.backends[p].name, to = %self.backends[c].name, "switchover: stopping writes on the primary");
        // Until it is known to accept writes again (or the switchover completes), it may be
        // read-only: remembered across restarts.
        self.read_only_left.insert(p);
        acts.push(Action::StopWrites { attempt: f.attempt, backend: p });
    }

    /// The drain's and the cut's next step.
    pub(super) fn advance_drain(&mut self, now: Now, acts: &mut Vec<Action>) {
        let Some(f) = &self.in_flight else { return };
        match f.step {
            Step::Draining { until, census: Some(_) } if now.mono >= until || self.peers_missing(DrainPhase::Drain).is_empty() => self.begin_cut(now, acts),
            Step::Cutting { since } => {
                let missing = self.peers_missing(DrainPhase::Cut);
                if missing.is_empty() {
                    self.stop_writes(now, acts);
                } else if now.mono.saturating_duration_since(since) >= self.cut_wait() {
                    let old = f.from.map(|p| self.backends[p].name.clone()).unwrap_or_default();
                    let reason = format!(
                        "coordinated proxy {} did not confirm within {} that it stopped routing to {old}; switchover undone before any write was stopped, {old} stays primary",
                        missing.join(", "),
                        humantime::format_duration(self.cut_wait())
                    );
                    self.abort_drain(Outcome::Aborted(reason), now, acts);
                }
            }
            _ => {}
        }
    }

    fn cut_wait(&self) -> Duration {
        (self.settings.check_timeout * 4).max(CUT_WAIT_MIN)
    }

    /// Ends a switchover that never stopped writes: the route goes back to the old primary.
    fn abort_drain(&mut self, outcome: Outcome, now: Now, acts: &mut Vec<Action>) {
        let Some(f) = self.in_flight.take() else { return };
        tracing::warn!(reason = %outcome.reason(), "switchover undone");
        self.conclude_aborted(&f, outcome, now, acts);
    }

    /// Live coordinated proxies (not this one) that have not confirmed `phase` of this
    /// proxy's shared drain. Empty when it decides alone.
    fn peers_missing(&self, phase: DrainPhase) -> Vec<String> {
        let (Some(c), Some(d)) = (self.coord.as_ref(), self.wanted_drain()) else { return Vec::new() };
        c.members
            .iter()
            .filter(|(name, _)| **name != c.me)
            .filter(|(_, v)| !v.drain.as_ref().is_some_and(|a| a.id == d.id && a.phase.is_some_and(|p| p == phase || p == DrainPhase::Cut)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// A backend no proxy may route to: the leader's shared drain cut it.
    pub(super) fn cut_by_drain(&self, i: BackendId) -> bool {
        self.shared_drain().is_some_and(|(from, phase)| from == i && phase == DrainPhase::Cut)
    }

    /// Another proxy's drain, as shared in etcd, by backend (`None` for this proxy's own).
    fn shared_drain(&self) -> Option<(BackendId, DrainPhase)> {
        let c = self.coord.as_ref()?;
        let d = c.drain.as_ref().filter(|d| d.by != c.me)?;
        Some((self.backends.find(&d.from)?, d.phase))
    }

    /// What this proxy's switchover shares now, if it leads one (edge-triggered).
    fn wanted_drain(&self) -> Option<DrainRecord> {
        let c = self.coord.as_ref()?;
        let f = self.in_flight.as_ref().filter(|f| f.switchover)?;
        let phase = match f.step {
            Step::Draining { .. } => DrainPhase::Drain,
            Step::Waiting => return None,
            _ => DrainPhase::Cut,
        };
        Some(DrainRecord {
            id: format!("{}-{}", c.me, f.attempt),
            from: self.backends[f.from?].name.clone(),
            to: f.to.map(|t| self.backends[t].name.clone()).unwrap_or_default(),
            phase,
            drain_ms: self.settings.drain_timeout.as_millis() as u64,
            by: c.me.clone(),
        })
    }

    /// The gate's scope: the operator's pause holds everything; a switchover (this proxy's,
    /// or the leader's as shared) holds the old primary's sessions until it ends.
    fn wanted_gate(&self) -> Option<Scope> {
        if self.paused.is_some() {
            return Some(Scope::Everything);
        }
        if let Some(f) = self.in_flight.as_ref().filter(|f| f.switchover && f.step != Step::Waiting) {
            return f.from.map(Scope::Backend);
        }
        self.shared_drain().map(|(from, _)| Scope::Backend(from))
    }

    /// After every decision: the gate, the shared drain and this proxy's answers follow
    /// what was decided; counts are asked for once per shared drain or pause.
    pub(super) fn sync_pause(&mut self, now: Now, acts: &mut Vec<Action>) {
        let gate = self.wanted_gate();
        if gate != self.gate {
            self.gate = gate;
            acts.push(Action::Gate(gate));
        }
        let drain = self.wanted_drain();
        if drain != self.acks.shared_drain && self.coord.as_ref().is_some_and(|c| c.is_leader || drain.is_none()) {
            acts.push(Action::ShareDrain(drain.clone()));
            self.acks.shared_drain = drain;
        }
        // Following the leader's drain: count once, confirm the cut once the route left.
        match self.coord.as_ref().and_then(|c| c.drain.clone()).filter(|_| self.shared_drain().is_some()) {
            Some(d) => {
                if !self.acks.counting.contains(&d.id) {
                    self.acks.counting.push(d.id.clone());
                    if let Some((from, _)) = self.shared_drain() {
                        let until = now.mono + Duration::from_millis(d.drain_ms);
                        acts.push(Action::AwaitDrain { id: DrainId::Shared(d.id.clone()), scope: Scope::Backend(from), until });
                    }
                }
                let cut_done = d.phase == DrainPhase::Cut && self.shared_drain().is_some_and(|(from, _)| self.route != Some(from));
                let acked = self.acks.drain.as_ref().is_some_and(|a| a.id == d.id && a.phase == Some(DrainPhase::Cut));
                if cut_done && !acked {
                    let census = self.acks.drain.as_ref().filter(|a| a.id == d.id).map(|a| a.census).unwrap_or_default();
                    self.acks.drain = Some(PauseAck { id: d.id.clone(), phase: Some(DrainPhase::Cut), census });
                }
            }
            None => self.acks.drain = None,
        }
        // The operator's shared pause: count once (the proxy that took it sums the answers).
        if let Some(p) = self.paused.clone().filter(|_| self.coord.is_some()) {
            if !self.acks.counting.contains(&p.id) {
                self.acks.counting.push(p.id.clone());
                let until = now.mono + Duration::from_millis(p.timeout_ms);
                acts.push(Action::AwaitDrain { id: DrainId::Pause(p.id), scope: Scope::Everything, until });
            }
        }
        // Only the last few ids matter.
        if self.acks.counting.len() > 8 {
            self.acks.counting.remove(0);
        }
    }
}
