//! One backend as the machine sees it: the seed's health record plus the server's answers.

use std::time::{Instant, SystemTime};

use crate::duration::as_millis_f64;
use crate::monitor::observation::Observation;

use super::Now;

/// Why a backend is fenced; decides whether its reappearance as a primary is a split brain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceKind {
    /// Fenced while unreachable (automatic failover, or restored from the journal): coming
    /// back writable is a split brain.
    Unreachable,
    /// Replaced by a manual failover while alive: still being writable is expected.
    Superseded,
    /// Lost a split brain (already counted).
    SplitBrain,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub kind: FenceKind,
    pub reason: String,
}

/// Health and facts of one backend.
#[derive(Clone, Debug)]
pub struct Backend {
    pub name: String,
    /// Configured as `[primary]`: a starting hint only.
    pub configured_primary: bool,
    /// One success makes it healthy; `failure_threshold` consecutive failures unhealthy.
    pub healthy: bool,
    /// Set when the threshold was reached, so the next success counts as a recovery.
    pub marked_down: bool,
    pub failure_count: u32,
    pub last_check: Option<SystemTime>,
    pub response_time_ms: Option<f64>,
    /// First failure of the current run of failures.
    pub down_since: Option<SystemTime>,
    /// The last successful observation (stale while checks fail).
    pub obs: Option<Observation>,
    pub last_error: Option<String>,
    pub fence: Option<Fence>,
    /// WAL position of the last check that found it in recovery: what a promoted standby
    /// had received, for the data-loss window of a failover.
    pub last_standby_lsn: Option<u64>,
    /// Monotonic times, to order checks of different backends: when the current run of
    /// failures began (None while the latest check succeeded), the latest failure, and the
    /// latest return to success after failures.
    pub failing_since: Option<Instant>,
    pub failed_at: Option<Instant>,
    pub back_at: Option<Instant>,
}

impl Backend {
    pub fn new(name: String, configured_primary: bool) -> Backend {
        Backend {
            name,
            configured_primary,
            healthy: false,
            marked_down: false,
            failure_count: 0,
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
        }
    }

    /// Returns true when this success is a recovery (the backend had been marked down).
    pub fn record_success(&mut self, obs: Observation, now: Now) -> bool {
        let (recovered, at) = (self.marked_down, now.wall);
        if self.failing_since.take().is_some() {
            self.back_at = Some(now.mono);
        }
        self.healthy = true;
        self.marked_down = false;
        self.failure_count = 0;
        self.down_since = None;
        self.last_check = Some(at);
        self.response_time_ms = Some(as_millis_f64(obs.response_time));
        if obs.in_recovery {
            self.last_standby_lsn = obs.lsn();
        }
        self.obs = Some(obs);
        self.last_error = None;
        recovered
    }

    pub fn record_failure(&mut self, error: String, now: Now, threshold: u32) {
        let at = now.wall;
        self.failing_since.get_or_insert(now.mono);
        self.failed_at = Some(now.mono);
        self.failure_count = self.failure_count.saturating_add(1);
        self.down_since.get_or_insert(at);
        self.last_check = Some(at);
        self.last_error = Some(error);
        if self.failure_count >= threshold {
            self.healthy = false;
            self.marked_down = true;
        }
    }

    /// Its latest check succeeded.
    pub fn fresh(&self) -> bool {
        self.failure_count == 0 && self.obs.is_some()
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

    pub fn timeline(&self) -> u32 {
        self.obs.as_ref().and_then(|o| o.timeline).unwrap_or(0)
    }
}
