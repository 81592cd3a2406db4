//! How the rest of the proxy talks to the monitor: commands in, status and history out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::BackendId;

use super::check_error::CheckError;
use super::history::{Event, History};
use super::machine::{Outcome, Refusal, Started, TriggerRequest};
use super::observation::Observation;
use super::operations::{OpError, PromoteError, Repointed};
use super::status::Status;

/// Requests to a prober: check now, and acknowledge once the result reached the monitor.
pub(super) type CheckNow = Option<oneshot::Sender<()>>;

pub(super) enum Command {
    Observed {
        i: BackendId,
        result: Result<Observation, CheckError>,
        took: Duration,
    },
    Promoted {
        attempt: u64,
        i: BackendId,
        result: Result<Observation, PromoteError>,
    },
    WritesStopped {
        attempt: u64,
        i: BackendId,
        result: Result<u64, OpError>,
    },
    Replayed {
        attempt: u64,
        i: BackendId,
        result: Result<u64, OpError>,
    },
    WritesAllowed {
        attempt: u64,
        i: BackendId,
        result: Result<(), OpError>,
    },
    Repointed {
        standby: BackendId,
        primary: BackendId,
        result: Result<Repointed, OpError>,
    },
    /// A backend's `synchronous_standby_names` was set (or not).
    SynchronousSet {
        i: BackendId,
        value: Option<String>,
        result: Result<(), String>,
    },
    /// The leader's record of a primary (outside a promotion) was written, or not.
    Recorded {
        i: BackendId,
        epoch: u64,
        /// The new record's revision; `None` when it was not written.
        rev: Option<i64>,
    },
    Trigger {
        req: TriggerRequest,
        reply: oneshot::Sender<Result<Triggered, Refusal>>,
    },
    Unfence {
        name: String,
        who: String,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    /// Answered after every earlier command was handled.
    Sync(oneshot::Sender<()>),
    /// A count asked for by the machine ([`crate::monitor::machine::Action::AwaitDrain`]).
    Drained {
        id: crate::monitor::machine::DrainId,
        census: crate::cluster::Census,
    },
    /// The operator pauses (`Some`) or resumes (not coordinated: etcd carries it then).
    Pause(Option<crate::cluster::PauseRecord>),
    /// Maintenance mode on (`Some`) or off (not coordinated: etcd carries it then).
    Maintenance(Option<crate::cluster::Maintenance>),
    /// Fault injection for tests: the monitor task panics.
    #[cfg(feature = "testkit")]
    Crash,
}

/// An accepted trigger, and where its outcome will arrive.
pub struct Triggered {
    pub started: Started,
    /// Sent when the failover or switchover ends; dropped if the monitor stops first.
    pub outcome: oneshot::Receiver<Outcome>,
}

/// How the rest of the proxy talks to the monitor. Cheap to clone.
#[derive(Clone)]
pub struct MonitorHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) status: watch::Receiver<Arc<Status>>,
    /// Shared with the monitor; a std mutex because every critical section is a push or a
    /// short copy, never held across an await.
    pub(super) history: Arc<Mutex<History>>,
    pub(super) probe_now: Arc<[mpsc::Sender<CheckNow>]>,
}

/// The monitor stopped (proxy shutting down).
pub const STOPPED: &str = "the monitor is not running (proxy shutting down)";

impl MonitorHandle {
    pub fn status(&self) -> Arc<Status> {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }

    /// Newest first.
    pub fn history(&self, limit: usize) -> Vec<Event> {
        self.history.lock().map(|h| h.newest(limit)).unwrap_or_default()
    }

    /// Starts a manual failover or switchover.
    pub async fn trigger(&self, req: TriggerRequest) -> Result<Triggered, Refusal> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Trigger { req, reply }).await.map_err(|_| Refusal::Conflict(STOPPED.into()))?;
        rx.await.map_err(|_| Refusal::Conflict(STOPPED.into()))?
    }

    pub async fn unfence(&self, name: String, who: String) -> Result<(), Refusal> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Unfence { name, who, reply }).await.map_err(|_| Refusal::Conflict(STOPPED.into()))?;
        rx.await.map_err(|_| Refusal::Conflict(STOPPED.into()))?
    }

    /// Fault injection for tests: makes the monitor task panic, to show the proxy fails
    /// closed. Nothing outside the process can reach it.
    #[doc(hidden)]
    #[cfg(feature = "testkit")]
    pub async fn crash_for_test(&self) {
        let _ = self.commands.send(Command::Crash).await;
    }

    /// The operator pauses (`Some`) or resumes this proxy (decided alone; coordinated, the
    /// pause goes through etcd). Returns once the status shows it.
    pub async fn pause(&self, pause: Option<crate::cluster::PauseRecord>) -> bool {
        let want = pause.is_some();
        if self.commands.send(Command::Pause(pause)).await.is_err() {
            return false;
        }
        self.status_until(|s| s.paused == want).await
    }

    /// Maintenance mode on (`Some`) or off for this proxy (decided alone; coordinated, it
    /// goes through etcd). Returns once the status shows it.
    pub async fn maintenance(&self, m: Option<crate::cluster::Maintenance>) -> bool {
        let want = m.is_some();
        if self.commands.send(Command::Maintenance(m)).await.is_err() {
            return false;
        }
        self.status_until(|s| s.maintenance.enabled == want).await
    }

    /// Waits (up to 10 s) until the published status satisfies `ok`.
    pub async fn status_until(&self, ok: impl Fn(&Status) -> bool) -> bool {
        let mut status = self.status.clone();
        let seen = tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| ok(s))).await;
        matches!(seen, Ok(Ok(_)))
    }

    /// Waits (up to `limit`) until the monitor decides with the configuration of `digest`
    /// (see [`crate::live`]); false if it did not in time.
    pub async fn applied(&self, digest: &str, limit: Duration) -> bool {
        let mut status = self.status.clone();
        let seen = tokio::time::timeout(limit, status.wait_for(|s| s.config_digest == digest)).await;
        matches!(seen, Ok(Ok(_)))
    }

    /// Waits (blocking, up to `limit`) until every history event is on disk; false if not.
    pub fn flush_history(&self, limit: Duration) -> bool {
        self.history.lock().map(|h| h.flush(limit)).unwrap_or(false)
    }

    /// Runs every check now and returns the status that includes their results.
    pub async fn check_now(&self, limit: Duration) -> Arc<Status> {
        let acks: Vec<_> = self
            .probe_now
            .iter()
            .map(|p| {
                let (tx, rx) = oneshot::channel();
                let p = p.clone();
                async move {
                    if p.send(Some(tx)).await.is_ok() {
                        let _ = rx.await;
                    }
                }
            })
            .collect();
        let _ = tokio::time::timeout(limit, futures_util::future::join_all(acks)).await;
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Sync(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.status()
    }
}
