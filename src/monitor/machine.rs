//! The failover decision: a pure state machine (no sockets, no tokio, no clock of its own).
//!
//! Inputs: check results ([`Machine::observe`]), promotion outcomes ([`Machine::promoted`]),
//! operator commands ([`Machine::trigger`], [`Machine::unfence`]). Output: [`Action`]s the
//! monitor carries out (publish a route, run `pg_promote`, record history). The machine is
//! the only writer of the route.
//!
//! Transitions of [`State`] (recomputed after every input):
//! - any → `failover_in_progress`: the routed primary reached the failure threshold, reports
//!   in recovery, or was fenced, and no other primary exists; or a manual trigger. The old
//!   primary is fenced and the route cleared (its sessions are cut).
//! - `failover_in_progress` → `failover_complete`: the promoted standby (auto) or a backend
//!   promoted by someone else (never) reports not-in-recovery; the route points to it.
//! - `failover_in_progress` → `unknown`/`degraded`: no standby is eligible (auto) or nothing
//!   answers; the attempt stays pending and resumes when a standby becomes eligible. A
//!   standby is promoted only once its latest check succeeded; if it, too, stopped answering
//!   during the primary's outage (both stalled: the host, the network, this proxy), only
//!   after the old primary has also failed a whole check that began after the standby
//!   answered again.
//! - `failover_in_progress` → the previous state: the old primary answers again as a primary
//!   before any standby was promoted; the failover is abandoned, the primary unfenced and
//!   routed again (nothing else can have become primary).
//! - `failover_complete` → `healthy`: a standby is promotion-eligible again.
//! - routed primary and an eligible standby → `healthy`; routed primary and only a standby
//!   still catching up (healthy, in recovery, lag over `max_lag_bytes`) →
//!   `recovery_in_progress`; routed primary alone → `degraded` (or `failover_complete`
//!   right after a failover); no routed primary → `degraded` if anything answers, else
//!   `unknown`.

use std::time::{Duration, Instant, SystemTime};

use crate::config::PromoteMode;

use super::history::{Event, EventKind};
use super::observation::Observation;

mod backend;
mod decide;

pub use backend::{Backend, Fence, FenceKind};

/// Seed state names; the numeric codes are `failover_state`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Unknown = 0,
    Healthy = 1,
    Degraded = 2,
    FailoverInProgress = 3,
    FailoverComplete = 4,
    RecoveryInProgress = 5,
}

impl State {
    pub fn code(self) -> i64 {
        self as i64
    }
}

/// The parts of the configuration the decisions depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub failure_threshold: u32,
    pub max_lag_bytes: u64,
    pub promote: PromoteMode,
    /// `health.timeout`: no check lasts longer, so a failure that ended this long after an
    /// instant began after it.
    pub check_timeout: Duration,
}

/// Who asked for a failover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    Automatic,
    /// Another manager promoted a backend, or a split brain was resolved.
    External,
    Manual(String),
}

impl Trigger {
    pub fn label(&self) -> String {
        match self {
            Trigger::Automatic => "automatic".into(),
            Trigger::External => "external".into(),
            Trigger::Manual(who) => format!("manual:{who}"),
        }
    }
}

/// What the monitor must do after an input.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Publish a new route (sessions to other backends are cut by the data path).
    Route { target: Option<usize>, reason: String },
    /// Run `pg_promote()` on this backend and report back with [`Machine::promoted`].
    Promote(usize),
    /// Record (and log) a history event.
    Record(Event),
    /// A failover finished; its duration feeds the histogram.
    FailoverDone(Duration),
}

/// The time of an input: monotonic for durations, wall clock for what people read.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn now() -> Now {
        Now { mono: Instant::now(), wall: SystemTime::now() }
    }
}

/// A failover being carried out (or waiting for a candidate).
#[derive(Clone, Debug)]
pub struct InFlight {
    pub from: Option<usize>,
    /// The old primary's last seen WAL position.
    pub from_lsn: Option<u64>,
    /// The standby being promoted, once chosen.
    pub to: Option<usize>,
    pub to_lsn: Option<u64>,
    pub started: Instant,
    pub trigger: Trigger,
    pub reason: String,
    /// Candidates whose promotion failed in this attempt; not tried again.
    pub failed: Vec<usize>,
    /// The candidate held back because its answers do not yet show the old primary is the
    /// one that is down (logged once per candidate).
    pub held_back: Option<usize>,
}

/// Counters reported by the API and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub failovers: u64,
    pub recoveries: u64,
    pub check_failures: u64,
    pub split_brains: u64,
}

/// Why a manual trigger cannot be carried out (HTTP 409, or 400 for an unknown name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnknownBackend(String),
}

/// The whole decision state.
pub struct Machine {
    pub settings: Settings,
    pub backends: Vec<Backend>,
    pub state: State,
    /// The route as last published.
    pub route: Option<usize>,
    /// The cluster's system identifier, learned from the first backend that answers.
    pub system_identifier: Option<u64>,
    pub in_flight: Option<InFlight>,
    /// Set by a completed failover, cleared once a standby is eligible again.
    after_failover: bool,
    pub counters: Counters,
    pub last_failover_time: Option<SystemTime>,
}

impl Machine {
    /// `names` in config order (the first is the configured primary); `fenced` are names
    /// restored from the journal.
    pub fn new(settings: Settings, names: &[String], fenced: &[String]) -> Machine {
        let backends = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut b = Backend::new(n.clone(), i == 0);
                if fenced.contains(n) {
                    b.fence = Some(Fence { kind: FenceKind::Unreachable, reason: "fenced before restart (journal)".into() });
                }
                b
            })
            .collect();
        Machine {
            settings,
            backends,
            state: State::Unknown,
            route: None,
            system_identifier: None,
            in_flight: None,
            after_failover: false,
            counters: Counters::default(),
            last_failover_time: None,
        }
    }

    /// A check of backend `i` finished.
    pub fn observe(&mut self, i: usize, result: Result<Observation, String>, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        let threshold = self.settings.failure_threshold;
        match result {
            Ok(obs) => {
                if self.system_identifier.is_none() {
                    self.system_identifier = Some(obs.system_identifier);
                }
                let b = &mut self.backends[i];
                if b.record_success(obs, now) {
                    self.counters.recoveries += 1;
                    acts.push(self.event(now, EventKind::Recovery, Some(i), None, "health checks succeed again".into(), Trigger::Automatic));
                }
            }
            Err(e) => {
                self.counters.check_failures += 1;
                self.backends[i].record_failure(e, now, threshold);
            }
        }
        self.evaluate(now, &mut acts);
        acts
    }

    /// The outcome of a [`Action::Promote`].
    pub fn promoted(&mut self, i: usize, result: Result<Observation, String>, now: Now) -> Vec<Action> {
        let mut acts = Vec::new();
        let ours = self.in_flight.as_ref().and_then(|f| f.to) == Some(i);
        match result {
            Ok(obs) => {
                self.backends[i].record_success(obs, now);
            }
            Err(e) if ours => {
                let f = self.in_flight.as_mut().expect("ours implies in flight");
                f.to = None;
                f.failed.push(i);
                let (from, trigger) = (f.from, f.trigger.clone());
                let mut reason = format!("promoting {} failed: {e}", self.backends[i].name);
                // A manual switchover must never leave a half-done state: the old primary,
                // superseded while alive, takes the route back.
                if let Some(old) = from.filter(|o| matches!(self.backends[*o].fence, Some(Fence { kind: FenceKind::Superseded, .. }))) {
                    self.backends[old].fence = None;
                    self.in_flight = None;
                    reason.push_str(&format!("; {} stays primary", self.backends[old].name));
                }
                tracing::warn!(%reason, "failover attempt failed");
                acts.push(self.event(now, EventKind::FailoverFailed, from, Some(i), reason, trigger));
            }
            Err(_) => {}
        }
        self.evaluate(now, &mut acts);
        acts
    }

    /// Manual failover to `target` (a backend name) or to the best eligible standby.
    pub fn trigger(&mut self, target: Option<&str>, who: &str, now: Now) -> Result<(String, Vec<Action>), Refusal> {
        if let Some(f) = &self.in_flight {
            let to = f.to.map(|t| self.backends[t].name.clone()).unwrap_or_else(|| "a standby".into());
            return Err(Refusal::Conflict(format!("a failover is already in progress (promoting {to})")));
        }
        if self.settings.promote == PromoteMode::Never {
            return Err(Refusal::Conflict(
                "failover.promote is \"never\": pgfailover does not promote; promote a standby with your cluster manager and the proxy follows it".into(),
            ));
        }
        let candidate = match target {
            Some(name) => {
                let i = self.backends.iter().position(|b| b.name == name).ok_or_else(|| {
                    let known: Vec<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
                    Refusal::UnknownBackend(format!("no backend named {name:?} (known: {})", known.join(", ")))
                })?;
                if self.route == Some(i) {
                    return Err(Refusal::Conflict(format!("{name} is already the primary")));
                }
                if let Some(why) = self.not_eligible(i) {
                    return Err(Refusal::Conflict(format!("{name} cannot be promoted: {why}")));
                }
                i
            }
            None => self.best_eligible(&[]).ok_or_else(|| Refusal::Conflict(format!("no standby is eligible for promotion: {}", self.eligibility_report())))?,
        };
        let mut acts = Vec::new();
        let reason = format!("manual failover requested by {who}");
        self.start(self.route, reason, Trigger::Manual(who.to_string()), now, &mut acts);
        self.begin_promotion(candidate, &mut acts);
        self.state = self.compute_state();
        Ok((self.backends[candidate].name.clone(), acts))
    }

    /// Operator clears a fence.
    pub fn unfence(&mut self, name: &str, who: &str, now: Now) -> Result<Vec<Action>, Refusal> {
        let i = self
            .backends
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| Refusal::UnknownBackend(format!("no backend named {name:?}")))?;
        if self.backends[i].fence.is_none() {
            return Err(Refusal::Conflict(format!("{name} is not fenced")));
        }
        self.backends[i].fence = None;
        let mut acts = vec![self.event(now, EventKind::Unfence, Some(i), None, format!("unfenced by {who}"), Trigger::Manual(who.into()))];
        self.evaluate(now, &mut acts);
        Ok(acts)
    }

    /// Replication lag of backend `i` in bytes behind the reference primary position.
    pub fn lag_bytes(&self, i: usize) -> Option<u64> {
        let b = &self.backends[i];
        let obs = b.obs.as_ref().filter(|o| o.in_recovery)?;
        Some(self.reference_lsn()?.saturating_sub(obs.lsn()?))
    }

    /// Whether backend `i` could be promoted now; `None` = eligible, else why not.
    pub fn not_eligible(&self, i: usize) -> Option<String> {
        let b = &self.backends[i];
        if !b.healthy {
            return Some(format!("unhealthy ({})", b.last_error.as_deref().unwrap_or("not checked yet")));
        }
        let Some(obs) = &b.obs else { return Some("not checked yet".into()) };
        if !obs.in_recovery {
            return Some("not a standby (reports not-in-recovery)".into());
        }
        if Some(obs.system_identifier) != self.system_identifier {
            return Some("belongs to another cluster (system identifier differs)".into());
        }
        if let Some(f) = &b.fence {
            return Some(format!("fenced: {}", f.reason));
        }
        match self.lag_bytes(i) {
            Some(lag) if lag > self.settings.max_lag_bytes => {
                Some(format!("lag {lag} bytes exceeds max_lag_bytes {}", self.settings.max_lag_bytes))
            }
            None if obs.lsn().is_none() => Some("reports no WAL position".into()),
            _ => None,
        }
    }

    pub fn eligible(&self, i: usize) -> bool {
        self.not_eligible(i).is_none()
    }

    fn eligibility_report(&self) -> String {
        let parts: Vec<String> = (0..self.backends.len())
            .filter(|i| Some(*i) != self.route)
            .map(|i| format!("{}: {}", self.backends[i].name, self.not_eligible(i).unwrap_or_else(|| "eligible".into())))
            .collect();
        if parts.is_empty() {
            "no standbys are configured".into()
        } else {
            parts.join("; ")
        }
    }

    fn event(&self, now: Now, kind: EventKind, from: Option<usize>, to: Option<usize>, reason: String, trigger: Trigger) -> Action {
        Action::Record(Event {
            time: humantime::format_rfc3339_millis(now.wall).to_string(),
            kind,
            from: from.map(|i| self.backends[i].name.clone()),
            to: to.map(|i| self.backends[i].name.clone()),
            reason,
            trigger: trigger.label(),
            duration_ms: None,
            wal_distance_bytes: None,
        })
    }
}

#[cfg(test)]
mod tests;
