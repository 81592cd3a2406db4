//! The failover decision: a pure state machine (no sockets, no tokio, no clock of its own).
//!
//! Inputs: check results ([`Machine::observe`]), outcomes of the operations it asked for
//! ([`Machine::promoted`], [`Machine::writes_stopped`], [`Machine::replayed`],
//! [`Machine::writes_allowed`], [`Machine::repointed`], [`Machine::record_written`]),
//! operator commands ([`Machine::trigger`], [`Machine::unfence`]), a reload
//! ([`Machine::reload`]) and, when coordinated, etcd's news ([`Machine::coordinated`]).
//! Output: [`Action`]s the monitor carries out, including what this proxy shares with the
//! others ([`Machine::share`]). Backends are named by [`BackendId`].
//!
//! The machine owns its state: its fields are private, the rest of the proxy reads them
//! through methods, and the route is written only from its [`Action::Route`] and
//! [`Action::RouteReason`]. When coordinated it also keeps the one copy of what the proxies
//! share through etcd ([`Coordination`]) and makes every decision about it: who may
//! promote, what is recorded, which fence is shared and on what condition. Files: `inputs`
//! (the inputs above), `decide` (route, split brain, state), `failover` (a failover's steps
//! and the trigger), `eligibility` and `reads` (which standby may take over, or serve
//! reads), `coordination` (the shared view and its rules), `sharing` (etcd's news in, this
//! proxy's fences, view and records out), `choice` (which standby, and the "what if"
//! answer), `synchronous` (synchronous mode's lists), `repoints`, `switchover`, `backend`,
//! `settings`.
//!
//! A failover ([`InFlight`]) moves through [`Step`]s:
//! - **Detect fast.** The routed primary reaches `failure_threshold` consecutive *down*
//!   failures (refused, reset, silent, 57P0x): the route is cleared, which cuts its sessions
//!   and holds new clients. Nothing is fenced or promoted yet (`Waiting`, phase
//!   "confirming"). Misconfigured and overloaded checks never count.
//! - **Promote deliberately.** A standby is promoted only once the primary has failed
//!   without interruption for `promote_after` = (threshold − 1) × interval, every standby's
//!   position was read after the primary's outage began, and the candidate's latest check
//!   succeeded (if it, too, was silent during the outage, the primary must also fail a whole
//!   check that began after the candidate answered again). If the primary answers again as
//!   itself first (same cluster, same timeline, writable), the failover is abandoned and the
//!   route goes back to it.
//! - **A promotion asked for is committed** (`Promoting`). The old primary is fenced first.
//!   A `pg_promote` that times out or returns false leaves the route empty until the
//!   candidate reports primary; the route never goes back to the old primary and no second
//!   candidate is promoted meanwhile. Only a candidate that stays down past the threshold is
//!   given up, and it is fenced (it may come back promoted). A request that never reached
//!   the candidate, or that it refused, promoted nothing: the next candidate may be tried.
//! - **Switchover.** A trigger while the primary is healthy (without `force`): route cleared,
//!   writes stopped on the old primary (`StoppingWrites`), the candidate waits until it has
//!   replayed the old primary's final position (`CatchingUp`), the other standbys are
//!   re-pointed to stream from the candidate (`Cascading`: the old primary, still up, keeps
//!   writing a little background WAL that must not reach them), then `Promoting`. If it
//!   cannot catch up, or a step fails, everything is undone (`Undoing`: writes allowed
//!   again, then the route goes back). A completed switchover lost nothing.
//! - `promote = never`: no promotion; the first backend another manager promoted is
//!   followed.
//!
//! A standby is eligible only while it follows the routed primary (same cluster, streaming
//! on its timeline) or, during a failover, is on the lost primary's timeline; after a
//! failover the others are re-pointed at the new primary ([`Action::Repoint`]).
//!
//! The configured policy narrows and orders the choice (`choice`): `nofailover` standbys
//! are never promoted, `zone_policy` keeps (or prefers) the lost primary's zone, and
//! `priority` decides between standbys with the same WAL. With `failover.synchronous`, the
//! machine also owns every server's `synchronous_standby_names` ([`Action::SetSynchronous`],
//! `synchronous`), and a failover promotes only a standby sure to hold every write the lost
//! primary acknowledged.
//!
//! [`State`], recomputed after every input: `healthy` (primary routed, a standby eligible),
//! `recovery_in_progress` (a following standby still lags), `failover_complete` (after a
//! failover until a standby is eligible), `failover_in_progress` (a candidate chosen, or
//! waiting for an external promotion), `degraded` (anything else that answers, including
//! checks turned away as misconfigured or overloaded), `unknown` (nothing answers).

use std::time::{Duration, Instant, SystemTime};

use crate::cluster::{BackendId, Fence, FenceKind, FenceRecord};
use crate::cluster::{DrainRecord, Maintenance, PauseAck, PauseRecord, Scope};

use super::event::{Event, EventKind};

mod backend;
mod choice;
mod coordination;
mod decide;
mod drain;
mod eligibility;
mod failover;
mod inflight;
mod inputs;
mod reads;
mod repoints;
mod settings;
mod sharing;
mod switchover;
mod synchronous;

pub use backend::{Backend, Backends, Repoint, SyncAsk};
pub use choice::{Candidates, Choice, Purpose};
pub use coordination::Coordination;
pub use eligibility::{Reason, ReasonKind};
pub use inflight::{Counters, HeldBack, InFlight, Refusal, Started, Step, TriggerRequest};
pub use reads::ReadStanding;
pub use settings::Settings;
pub use sharing::Recording;
pub use synchronous::{SyncBook, SyncHealth, SyncSet};

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

/// How a manual failover or switchover ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The route points to the promoted backend.
    Completed { to: String },
    /// Not possible after all; everything was undone and nothing lost (HTTP 409).
    Aborted(String),
    /// A server refused a step (HTTP 502); undone where it could be.
    Failed(String),
}

impl Outcome {
    /// Why it did not complete (empty when it did).
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Aborted(r) | Outcome::Failed(r) => r,
            Outcome::Completed { .. } => "",
        }
    }
}

/// What the monitor must do after an input. `attempt` ties an operation's result to the
/// failover that asked for it; late results of an earlier attempt are ignored.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Publish a new route (sessions to other backends are cut by the data path).
    Route { target: Option<BackendId>, reason: String },
    /// The route stays empty; publish a new reason for it (held clients, `/ready`).
    RouteReason(String),
    /// Run `pg_promote()` on this backend; report with [`Machine::promoted`]. With
    /// `synchronous`, set its `synchronous_standby_names` to that first (synchronous mode:
    /// what it needs as a primary).
    Promote { attempt: u64, backend: BackendId, synchronous: Option<String> },
    /// Switchover: make the primary read-only and end its sessions; report its final WAL
    /// position with [`Machine::writes_stopped`].
    StopWrites { attempt: u64, backend: BackendId },
    /// Switchover: wait for the candidate to replay up to `lsn`; report with
    /// [`Machine::replayed`].
    AwaitReplay { attempt: u64, backend: BackendId, lsn: u64 },
    /// Undo a switchover's [`Action::StopWrites`]; report with [`Machine::writes_allowed`].
    AllowWrites { attempt: u64, backend: BackendId },
    /// Point a standby's WAL receiver at the primary (naming it by its backend name);
    /// report with [`Machine::repointed`].
    Repoint { standby: BackendId, primary: BackendId },
    /// Set a backend's `synchronous_standby_names` (`None`: reset it to the server's own
    /// configuration) and reload; report with [`Machine::synchronous_applied`].
    SetSynchronous { backend: BackendId, value: Option<String> },
    /// Check this backend now instead of at its next interval.
    CheckNow(BackendId),
    /// Record (and log) a history event.
    Record(Event),
    /// Coordinated: share this proxy's fence through etcd; with `while_record`, only while
    /// the record key still has that mod revision (the decision rested on that record).
    ShareFence { backend: String, fence: FenceRecord, while_record: Option<i64> },
    /// Coordinated: lift a shared fence, if its key still has mod `revision`.
    LiftFence { backend: String, revision: i64 },
    /// Coordinated, leading: record this primary (outside a promotion); report with
    /// [`Machine::record_written`].
    RecordPrimary { backend: BackendId, recording: Recording },
    /// Hold (or with `None` stop holding) sessions and new sessions in this scope in the
    /// data path.
    Gate(Option<Scope>),
    /// Count the sessions in `scope` until they are quiet or `until`; report with
    /// [`Machine::drained`].
    AwaitDrain { id: DrainId, scope: Scope, until: Instant },
    /// Coordinated, leading a switchover: share its drain (or with `None`, end it).
    ShareDrain(Option<DrainRecord>),
    /// Maintenance mode changed (persist it; `None`: ended).
    Maintenance(Option<Maintenance>),
    /// Coordinated: share maintenance mode's end (it ran out).
    EndSharedMaintenance,
    /// A failover finished; its duration feeds the histogram.
    FailoverDone(Duration),
    /// A manual request finished: answer the operator.
    Concluded { attempt: u64, outcome: Outcome },
}

/// What an [`Action::AwaitDrain`] counts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainId {
    /// This proxy's switchover, by attempt.
    Attempt(u64),
    /// The leader's switchover as shared in etcd, by its id (this proxy follows).
    Shared(String),
    /// The operator's shared pause, by its id.
    Pause(String),
}

/// The time of an input: monotonic for durations, wall clock for what people read.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// For durations and the order of checks.
    pub mono: Instant,
    /// For the history and the status.
    pub wall: SystemTime,
}

impl Now {
    pub fn current() -> Now {
        Now { mono: Instant::now(), wall: SystemTime::now() }
    }
}

/// The whole decision state. Only the machine changes it (its inputs are its methods), and
/// the rest of the proxy reads it through the methods below.
pub struct Machine {
    /// The configuration the decisions depend on.
    settings: Settings,
    /// Every backend, in config order.
    backends: Backends,
    /// As last computed, after every input.
    state: State,
    /// Where new sessions go (the route's target as decided).
    route: Option<BackendId>,
    /// Why nowhere, while `route` is `None`.
    route_reason: String,
    /// The target last handed out in an [`Action::Route`].
    published: Option<BackendId>,
    /// The cluster's system identifier, learned from the first backend that answers.
    system_identifier: Option<u64>,
    /// The failover being carried out, if any.
    in_flight: Option<InFlight>,
    /// Set by a completed failover, cleared once a standby is eligible again.
    after_failover: bool,
    /// What the API and the metrics count.
    counters: Counters,
    /// When the last failover completed.
    last_failover_time: Option<SystemTime>,
    /// Numbers failover attempts.
    attempts: u64,
    /// Backends whose writes a switchover stopped and that are not known to accept them
    /// again (restored after a restart): made writable again once they are the primary.
    read_only_left: std::collections::BTreeSet<BackendId>,
    /// When an [`Action::AllowWrites`] for a leftover was last asked for.
    allow_asked: Option<Instant>,
    /// Coordination through etcd (`None`: this proxy decides alone).
    coord: Option<Coordination>,
    /// The operator's pause (coordinated: as etcd shares it).
    paused: Option<PauseRecord>,
    /// Maintenance mode (coordinated: as etcd shares it), and when it ends.
    maintenance: Option<(Maintenance, SystemTime)>,
    /// The gate's scope last handed out in an [`Action::Gate`].
    gate: Option<Scope>,
    /// This proxy's answers to the shared pause and drain, for its view.
    acks: Acks,
    /// Synchronous mode's book on the routed primary's list.
    sync: SyncBook,
}

/// This proxy's answers to what the coordinated proxies share (see [`PauseAck`]), and which
/// shared drain or pause it already counted for.
#[derive(Clone, Debug, Default)]
pub struct Acks {
    /// To the operator's pause.
    pub paused: Option<PauseAck>,
    /// To the leader's drain.
    pub drain: Option<PauseAck>,
    /// The shared drain or pause this proxy asked to count for (once each).
    counting: Vec<String>,
    /// The drain record this proxy, leading, shared last.
    shared_drain: Option<DrainRecord>,
}

impl Machine {
    /// `names` in config order (the first is the configured primary); `fenced` are fences
    /// restored from the journal.
    pub fn new(settings: Settings, names: &[String], fenced: &[(String, Fence)]) -> Machine {
        let backends = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut b = Backend::new(n.clone(), i == 0);
                if let Some((_, f)) = fenced.iter().find(|(name, _)| name == n) {
                    // A fence restored after a restart means "do not route here; writable
                    // again is a split brain" (a candidate given up keeps its stricter kind).
                    let kind = if f.kind == FenceKind::PromotionAsked { FenceKind::PromotionAsked } else { FenceKind::Unreachable };
                    b.fence = Some(Fence::new(kind, format!("fenced before restart: {}", f.reason)));
                }
                b
            })
            .collect();
        Machine {
            settings: settings.fit(names.len()),
            backends: Backends::new(backends),
            state: State::Unknown,
            route: None,
            route_reason: String::new(),
            published: None,
            system_identifier: None,
            in_flight: None,
            after_failover: false,
            counters: Counters::default(),
            last_failover_time: None,
            attempts: 0,
            read_only_left: Default::default(),
            allow_asked: None,
            coord: None,
            paused: None,
            maintenance: None,
            gate: None,
            acks: Acks::default(),
            sync: SyncBook::default(),
        }
    }

    /// Each backend's configured `host:port`, in config order: how a standby's upstream
    /// (`sender_host:sender_port`) is recognised.
    pub fn with_addresses(mut self, addresses: impl IntoIterator<Item = String>) -> Machine {
        for (b, a) in self.backends.iter_mut().zip(addresses) {
            b.address = a;
        }
        self
    }

    /// Backends a switchover left read-only before a restart (from the state directory).
    pub fn with_read_only(mut self, read_only: impl IntoIterator<Item = BackendId>) -> Machine {
        self.read_only_left.extend(read_only);
        self
    }

    /// Maintenance mode restored from the state directory (it ends when it ran out).
    pub fn with_maintenance(mut self, m: Option<Maintenance>) -> Machine {
        self.maintenance = m.and_then(|m| Some((humantime::parse_rfc3339_weak(&m.until).ok()?, m)).map(|(until, m)| (m, until)));
        self
    }

    /// The monitor is dying (a panic): nothing may be routed any more, for `reason`.
    /// Returns the route's action; nothing else is decided.
    pub fn stop_routing(&mut self, reason: &str) -> Vec<Action> {
        let mut acts = Vec::new();
        self.set_route(None, reason.to_string(), &mut acts);
        acts
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every backend, in config order.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Where new sessions go, as decided.
    pub fn route(&self) -> Option<BackendId> {
        self.route
    }

    /// The failover being carried out, if any.
    pub fn in_flight(&self) -> Option<&InFlight> {
        self.in_flight.as_ref()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// When the last failover completed.
    pub fn last_failover_time(&self) -> Option<SystemTime> {
        self.last_failover_time
    }

    /// Backends a switchover left read-only, not yet known to accept writes again.
    pub fn read_only_left(&self) -> &std::collections::BTreeSet<BackendId> {
        &self.read_only_left
    }

    fn index(&self, name: &str) -> Result<BackendId, Refusal> {
        self.backends.find(name).ok_or_else(|| {
            let known: Vec<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
            Refusal::UnknownBackend(format!("no backend named {name:?} (known: {})", known.join(", ")))
        })
    }

    fn current(&self, attempt: u64, step: &Step) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.attempt == attempt && &f.step == step)
    }

    fn event(&self, now: Now, kind: EventKind, from: Option<BackendId>, to: Option<BackendId>, reason: String, trigger: Trigger) -> Action {
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
