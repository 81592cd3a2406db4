//! The failover's own words: where it stands ([`Step`], [`InFlight`]), what it counts
//! ([`Counters`]), and an operator's trigger ([`TriggerRequest`], [`Started`], [`Refusal`]).

use std::time::Instant;

use crate::cluster::{BackendId, Census};

use super::{Outcome, Trigger};

/// Where a failover stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No candidate yet: confirming the primary is down, waiting for an eligible standby, or
    /// (promote = never) for another manager's promotion.
    Waiting,
    /// Switchover: paused for the old primary; open transactions finish (until `until`).
    /// `census`: this proxy's sessions on it once they settled or the time ran out.
    Draining { until: Instant, census: Option<Census> },
    /// Switchover: no proxy routes to the old primary any more (its sessions end); writes
    /// are stopped once every coordinated proxy confirmed it, waited for since `since`.
    Cutting { since: Instant },
    /// Switchover: writes are being stopped on the old primary.
    StoppingWrites,
    /// Switchover: the candidate is replaying up to the old primary's final position.
    CatchingUp { lsn: u64 },
    /// Switchover: the other standbys are re-pointed at the candidate (cascading from it),
    /// so they receive nothing the candidate lacks and follow its promotion; waited for up
    /// to `switchover_wait` since `since`.
    Cascading { since: Instant },
    /// `pg_promote` was asked for on the candidate (last at `asked`; `pending` once the
    /// request came back unfinished): committed.
    Promoting { asked: Instant, pending: bool },
    /// Switchover undone: writes are being allowed again on the old primary, which then
    /// gets the route back.
    Undoing { outcome: Outcome },
}

/// A failover being carried out (or waiting for a candidate).
#[derive(Clone, Debug)]
pub struct InFlight {
    /// Ties the outcomes of the operations it asked for to it (late ones are ignored).
    pub attempt: u64,
    /// The lost (or switched-over) primary; `None` when none was known (start-up).
    pub from: Option<BackendId>,
    /// The old primary's last seen WAL position and timeline.
    pub from_lsn: Option<u64>,
    /// Its timeline: standbys on it may still be candidates.
    pub from_timeline: Option<u32>,
    /// The candidate, once chosen.
    pub to: Option<BackendId>,
    /// The candidate's WAL position when chosen: the data-loss window's far end.
    pub to_lsn: Option<u64>,
    /// Where it stands.
    pub step: Step,
    /// When it began: its duration feeds the histogram.
    pub started: Instant,
    /// Who asked for it.
    pub trigger: Trigger,
    /// Why, for people (the history, the route's reason).
    pub reason: String,
    /// A planned switchover (writes stopped first, nothing lost).
    pub switchover: bool,
    /// An operator waits for the outcome.
    pub manual: bool,
    /// Candidates that refused promotion in this attempt; not tried again.
    pub failed: Vec<BackendId>,
    /// Candidates a promotion request never reached, and when: tried again only after a
    /// check that began later succeeds.
    pub unreached: Vec<(BackendId, Instant)>,
    /// Why the choice of a candidate waits, as last logged (logged once per reason).
    pub held_back: Option<HeldBack>,
    /// Synchronous mode: why the candidate holds every acknowledged write (its history
    /// event says so).
    pub note: Option<String>,
}

/// Why a failover's choice of a candidate waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldBack {
    /// Fewer than a majority of the live coordinated proxies see the primary down.
    Quorum,
    /// This candidate's answers do not yet show the old primary is the one that is down.
    Candidate(BackendId),
    /// Synchronous mode: not enough synchronous standbys answer, or the one with the most
    /// WAL cannot be promoted.
    Synchronous,
}

/// Counters reported by the API and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Completed failovers (automatic and manual).
    pub failovers: u64,
    /// Backends that answered again after being marked down.
    pub recoveries: u64,
    /// Failed health checks, all backends.
    pub check_failures: u64,
    /// Split brains resolved by fencing one side.
    pub split_brains: u64,
    /// Synchronous mode `on`: times the primary's list was emptied (no standby left).
    pub sync_emptied: u64,
}

/// Why a manual trigger cannot be carried out (HTTP 409, or 400 for an unknown name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnknownBackend(String),
}

/// An operator's `POST /failover/trigger`.
#[derive(Clone, Debug, Default)]
pub struct TriggerRequest {
    /// A backend name; the best eligible standby when absent.
    pub target: Option<String>,
    /// Promote at once, without stopping writes on a healthy primary first.
    pub force: bool,
    /// The caller, for the history.
    pub who: String,
}

/// A trigger that was accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The failover attempt: its outcome is concluded under this number.
    pub attempt: u64,
    /// The standby being promoted.
    pub to: String,
    /// A switchover (writes stopped first), not an immediate promotion.
    pub switchover: bool,
}
