//! One backend as the machine sees it: the seed's health record plus the server's answers.

use std::time::{Duration, Instant, SystemTime};

use crate::cluster::{BackendId, Fence};
use crate::duration::as_millis_f64;
use crate::monitor::check_error::{CheckError, ErrorKind};
use crate::monitor::observation::Observation;

use super::Now;

/// The last attempt to point a standby's WAL receiver at the routed primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repoint {
    /// The primary it was pointed at.
    pub primary: BackendId,
    /// When it was asked for: a failed or ignored one is tried again some time later.
    pub at: Instant,
    /// `None` while running; then the outcome (an error text, or done).
    pub outcome: Option<Result<(), String>>,
}

/// The last change of a backend's `synchronous_standby_names` the machine asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncAsk {
    /// The value asked for; `None`: back to the server's own configuration (`RESET`).
    pub value: Option<String>,
    /// When it was asked for: one that failed, or that the checks do not show yet, is
    /// asked again some time later.
    pub at: Instant,
    /// When it ended, and how (`None` while running).
    pub done: Option<(Instant, Result<(), String>)>,
}

/// Health and facts of one backend.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Its configured name: how people, the history and the other proxies name it.
    pub name: String,
    /// `host:port` as configured, to recognise it as another standby's upstream.
    pub address: String,
    /// Configured as `[primary]`: a starting hint only.
    pub configured_primary: bool,
    /// One success makes it healthy; `failure_threshold` consecutive *down* failures
    /// unhealthy. Other failures (misconfigured, overloaded) leave it as it was.
    pub healthy: bool,
    /// Set when the threshold was reached, so the next success counts as a recovery.
    pub marked_down: bool,
    /// Consecutive failed checks of any kind (the seed's `failureCount`).
    pub failure_count: u32,
    /// Consecutive failed checks that say the server may be gone.
    pub down_count: u32,
    /// When its latest check ended.
    pub last_check: Option<SystemTime>,
    /// How long its latest successful check took.
    pub response_time_ms: Option<f64>,
    /// First failure of the current run of failures.
    pub down_since: Option<SystemTime>,
    /// The last successful observation (stale while checks fail).
    pub obs: Option<Observation>,
    /// Why its latest check failed (`None` once one succeeds).
    pub last_error: Option<CheckError>,
    /// Set: no session may be routed to it.
    pub fence: Option<Fence>,
    /// WAL position of the last check that found it in recovery: what a promoted standby
    /// had received, for the data-loss window of a failover.
    pub last_standby_lsn: Option<u64>,
    /// Monotonic times, to order checks of different backends: when the first check of the
    /// current run of *down* failures began (None once it answers again), when the latest
    /// down failure ended, when it last answered again after such a run, and when its
    /// latest successful check began.
    pub failing_since: Option<Instant>,
    /// See `failing_since`.
    pub failed_at: Option<Instant>,
    /// See `failing_since`.
    pub back_at: Option<Instant>,
    /// See `failing_since`.
    pub success_started: Option<Instant>,
    /// The timeline it last streamed on (a standby's WAL receiver), kept while the receiver
    /// is down: a standby's timeline only grows.
    pub streamed_timeline: Option<u32>,
    /// A standby without a streaming WAL receiver since.
    pub not_streaming_since: Option<Instant>,
    /// A standby whose WAL receiver streams, since (the start of the first check that saw
    /// it): how long the primary has had to list it under its name.
    pub streaming_since: Option<Instant>,
    /// A standby with received WAL it has not replayed, since (as the checks saw it): its
    /// replay delay when the server cannot say (no commit replayed since it started).
    pub behind_since: Option<Instant>,
    /// The last attempt to point it at the routed primary.
    pub repoint: Option<Repoint>,
    /// The last change of its `synchronous_standby_names` asked for.
    pub sync_asked: Option<SyncAsk>,
    /// Set when it was promoted: its first WAL position as a primary (its new timeline began
    /// at or before it). A standby still on the old timeline with more WAL than this has
    /// diverged from it.
    pub fork_lsn: Option<u64>,
}

impl Backend {
    /// What it said at its last check; nothing once it is down (a dead old primary is not a
    /// "primary" any more).
    pub fn role(&self) -> &'static str {
        match &self.obs {
            _ if self.marked_down => "unknown",
            Some(o) if o.in_recovery => "standby",
            Some(_) => "primary",
            None => "unknown",
        }
    }

    pub fn new(name: String, configured_primary: bool) -> Backend {
        Backend {
            name,
            address: String::new(),
            configured_primary,
            healthy: false,
            marked_down: false,
            failure_count: 0,
            down_count: 0,
            last_check: None,
            response_time_ms: None,
            down_since: None,
            obs: None,
            last_error: None,
            fence: None,
            last_standby_lsn: None,
            failing_since: None,
            failed_at: None,
            back_at: None,
            success_started: None,
            streamed_timeline: None,
            not_streaming_since: None,
            streaming_since: None,
            behind_since: None,
            repoint: None,
            sync_asked: None,
            fork_lsn: None,
        }
    }

    /// Returns true when this success is a recovery (the backend had been marked down).
    /// `started` is when the check began.
    pub fn record_success(&mut self, obs: Observation, started: Instant, now: Now) -> bool {
        let recovered = self.marked_down;
        if self.failing_since.take().is_some() {
            self.back_at = Some(now.mono);
        }
        self.healthy = true;
        self.marked_down = false;
        self.failure_count = 0;
        self.down_count = 0;
        self.down_since = None;
        self.last_check = Some(now.wall);
        self.response_time_ms = Some(as_millis_f64(obs.response_time));
        self.success_started = Some(started);
        if self.obs.as_ref().is_some_and(|o| o.system_identifier != obs.system_identifier) {
            self.streamed_timeline = None;
        }
        if obs.in_recovery {
            self.last_standby_lsn = obs.lsn();
            if let Some(tl) = obs.receiver.as_ref().filter(|r| r.streaming()).and_then(|r| r.timeline) {
                self.streamed_timeline = self.streamed_timeline.max(Some(tl));
            }
            if obs.streaming() {
                self.not_streaming_since = None;
                self.streaming_since.get_or_insert(started);
            } else {
                self.not_streaming_since.get_or_insert(now.mono);
                self.streaming_since = None;
            }
            if obs.replay_delay == Some(std::time::Duration::ZERO) {
                self.behind_since = None;
            } else {
                self.behind_since.get_or_insert(started);
            }
        } else {
            self.streamed_timeline = None;
            self.not_streaming_since = None;
            self.streaming_since = None;
            self.behind_since = None;
        }
        self.obs = Some(obs);
        self.last_error = None;
        recovered
    }

    /// A failed check that began at `started`. Only a *down* error counts toward the
    /// threshold; any other error shows the server is there, so it ends a run of down
    /// failures.
    pub fn record_failure(&mut self, error: CheckError, started: Instant, now: Now, threshold: u32) {
        self.failure_count = self.failure_count.saturating_add(1);
        self.down_since.get_or_insert(now.wall);
        self.last_check = Some(now.wall);
        if error.kind() == ErrorKind::Down {
            self.failing_since.get_or_insert(started);
            self.failed_at = Some(now.mono);
            self.down_count = self.down_count.saturating_add(1);
            if self.down_count >= threshold {
                self.healthy = false;
                self.marked_down = true;
            }
        } else {
            if self.failing_since.take().is_some() {
                self.back_at = Some(now.mono);
            }
            self.down_count = 0;
        }
        self.last_error = Some(error);
    }

    /// How long it has been failing without interruption: from the start of the first check
    /// of the current run of down failures to the end of the latest (a timed-out check was
    /// silent all along).
    pub fn down_for(&self) -> Option<Duration> {
        Some(self.failed_at?.saturating_duration_since(self.failing_since?))
    }

    /// Its latest check succeeded.
    pub fn fresh(&self) -> bool {
        self.failure_count == 0 && self.obs.is_some()
    }

    /// Its latest check failed with an error that is not "down": the checker is refused or
    /// turned away, and the server's state is unknown.
    pub fn problem(&self) -> Option<&CheckError> {
        self.last_error.as_ref().filter(|e| self.failure_count > 0 && e.kind() != ErrorKind::Down)
    }

    /// Healthy and says it is a primary (fence and cluster identity are checked elsewhere).
    pub fn claims_primary(&self) -> bool {
        self.healthy && self.obs.as_ref().is_some_and(|o| !o.in_recovery)
    }

    pub fn in_recovery(&self) -> bool {
        self.obs.as_ref().is_some_and(|o| o.in_recovery)
    }

    pub fn lsn(&self) -> Option<u64> {
        self.obs.as_ref().and_then(Observation::lsn)
    }

    /// The timeline it is on: a primary's current one; a standby's latest known (streamed or
    /// replayed).
    pub fn timeline(&self) -> u32 {
        let seen = self.obs.as_ref().and_then(|o| o.timeline).unwrap_or(0);
        if self.in_recovery() {
            seen.max(self.streamed_timeline.unwrap_or(0))
        } else {
            seen
        }
    }

    pub fn streaming(&self) -> bool {
        self.obs.as_ref().is_some_and(Observation::streaming)
    }

    pub fn upstream(&self) -> Option<&str> {
        self.obs.as_ref()?.receiver.as_ref()?.upstream.as_deref()
    }
}

/// Every backend, in config order, by [`BackendId`].
#[derive(Clone, Debug)]
pub struct Backends(Vec<Backend>);

impl Backends {
    pub fn new(backends: Vec<Backend>) -> Backends {
        Backends(backends)
    }

    /// Every backend's id, in config order.
    pub fn ids(&self) -> impl DoubleEndedIterator<Item = BackendId> + Clone {
        BackendId::all(self.0.len())
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Backend> {
        self.0.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Backend> {
        self.0.iter_mut()
    }

    /// Every backend with its id, in config order.
    pub fn with_ids(&self) -> impl Iterator<Item = (BackendId, &Backend)> {
        self.ids().zip(self.0.iter())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The backend configured under `name`.
    pub fn find(&self, name: &str) -> Option<BackendId> {
        self.0.iter().position(|b| b.name == name).map(BackendId::new)
    }
}

impl std::ops::Index<BackendId> for Backends {
    type Output = Backend;
    fn index(&self, i: BackendId) -> &Backend {
        &self.0[i.index()]
    }
}

impl std::ops::IndexMut<BackendId> for Backends {
    fn index_mut(&mut self, i: BackendId) -> &mut Backend {
        &mut self.0[i.index()]
    }
}
