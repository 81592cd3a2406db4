//! Several proxies, one decision: coordination through etcd v3 (an existing, proven store;
//! never a consensus of our own).
//!
//! This module is the transport: it turns etcd's keys into [`Event`]s for the monitor and
//! carries out the writes the monitor asks for through the [`Coordinator`] handle. It decides
//! nothing: who may promote, which fence is shared and on what condition, and what the record
//! says are the machine's (`monitor::machine`), which keeps the one copy of what the proxies
//! share. Revisions travel inside the events and the requests, so a write can be made
//! conditional on what the decision saw.
//!
//! One `session` at a time holds an etcd lease (kept alive by `lease`, renewed every third
//! of its TTL), publishes this proxy's view under `members/<name>` on it, campaigns for
//! leadership in etcd's election (`election`), and watches the cluster's keys (`keys`, which
//! also decodes them; their values are [`crate::cluster`]'s). `connection` says how etcd is
//! reached (and `access` asks, before the start, whether etcd grants this proxy's user what
//! coordination needs), `fences` queues and writes fence changes, `gate` holds the fencing-token
//! transactions, and `forward` hands admin requests from a follower to the leader.
//!
//! - only the leader promotes, and only after a transaction that succeeds while its election
//!   key still exists with its create revision (a fencing token) and that records the new
//!   primary and the old one's fence first;
//! - every proxy follows the recorded primary and every shared fence;
//! - a leader that cannot renew its lease steps down before the lease can expire; without
//!   etcd nobody promotes.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{DrainRecord, FenceRecord, Maintenance, MemberView, PauseRecord, PrimaryRecord, Request, Response};
use crate::config::CoordinationConfig;

pub mod access;
mod connection;
mod election;
mod error;
mod event;
mod fences;
mod forward;
mod gate;
mod keys;
mod lease;
mod session;

pub use error::CoordError;
pub use event::{Event, SharedFence, Snapshot};
pub use fences::UNREADABLE;

/// What the transport itself counts, for the status: facts of this proxy's sessions, not
/// anything the proxies share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// The etcd revision of the last change seen.
    pub last_revision: i64,
    /// Failed renewals of this proxy's leases, all sessions.
    pub lease_renewal_failures: u64,
}

pub(crate) enum Cmd {
    /// Share a fence; with `while_record`, only while the record key has that mod revision.
    PutFence { backend: String, fence: FenceRecord, while_record: Option<i64> },
    /// Lift a shared fence if its key still has mod `revision` (see [`UNREADABLE`]).
    DeleteFence { backend: String, revision: i64 },
    /// The fencing-token transaction before a promotion.
    Record { record: PrimaryRecord, fences: Vec<(String, FenceRecord)>, expect: i64, reply: oneshot::Sender<Result<i64, CoordError>> },
    /// The fencing token alone: this proxy still leads (before a switchover stops writes).
    Confirm { reply: oneshot::Sender<Result<(), CoordError>> },
    /// A follower's admin request for the leader; the leader's answer comes back.
    Forward { request: Request, wait: Duration, reply: oneshot::Sender<Result<Response, CoordError>> },
    /// The leader's answer to a forwarded request.
    Respond { id: String, response: Response },
    /// Writes (or deletes) one of the single shared keys.
    Share { what: SharedWrite, reply: oneshot::Sender<Result<(), CoordError>> },
}

/// A write of one of the single shared keys (`None`: delete it).
#[derive(Clone, Debug)]
pub enum SharedWrite {
    /// The operator's pause (any proxy may write it).
    Pause(Option<PauseRecord>),
    /// The leader's switchover drain, on its lease: it goes with the leader.
    Drain(Option<DrainRecord>),
    /// Maintenance mode (any proxy may write it).
    Maintenance(Option<Maintenance>),
}

/// How the monitor and the admin port talk to the coordinator. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    /// Unbounded: fence changes must never be dropped, and they are few (one per change).
    cmds: mpsc::UnboundedSender<Cmd>,
    /// This proxy's view: only the latest matters.
    view: std::sync::Arc<watch::Sender<Option<MemberView>>>,
    /// The sessions' figures, as the transport last counted them.
    figures: watch::Receiver<Figures>,
    /// This proxy's `coordination.name`.
    pub name: String,
    /// `coordination.cluster`: the prefix of its keys.
    pub cluster: String,
}

impl Coordinator {
    /// Starts the coordinator: `events` go to the monitor, `requests` (forwarded admin
    /// requests, when this proxy leads) to the admin port.
    pub fn spawn(
        cfg: CoordinationConfig,
        events: mpsc::Sender<Vec<Event>>,
        requests: mpsc::Sender<Request>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Coordinator {
        let (cmds, rx) = mpsc::unbounded_channel();
        let (view, view_rx) = watch::channel(None);
        let (figures_tx, figures) = watch::channel(Figures::default());
        let (name, cluster) = (cfg.name.clone(), cfg.cluster.clone());
        tracker.spawn(session::run(cfg, session::Channels { events, requests, cmds: rx, view: view_rx, figures: figures_tx }, shutdown));
        Coordinator { cmds, view: std::sync::Arc::new(view), figures, name, cluster }
    }

    pub fn figures(&self) -> Figures {
        self.figures.borrow().clone()
    }

    /// Shares `fence` on `backend`; with `while_record`, only while the record key still has
    /// that mod revision (else [`Event::FenceRefused`] comes back, with the new record).
    pub fn put_fence(&self, backend: String, fence: FenceRecord, while_record: Option<i64>) {
        let _ = self.cmds.send(Cmd::PutFence { backend, fence, while_record });
    }

    /// Lifts the shared fence on `backend` if its key still has mod `revision`.
    pub fn delete_fence(&self, backend: String, revision: i64) {
        let _ = self.cmds.send(Cmd::DeleteFence { backend, revision });
    }

    pub fn publish_view(&self, view: MemberView) {
        self.view.send_if_modified(|v| {
            let changed = v.as_ref() != Some(&view);
            *v = Some(view);
            changed
        });
    }

    /// The fencing-token transaction: records `record` (and `fences`) only while this proxy
    /// still leads and the record is still the one the decision was made on (mod revision
    /// `expect`, 0 for none). Returns the new record's revision; `Err` says why not, and
    /// nothing may be promoted then.
    pub async fn record_primary(&self, record: PrimaryRecord, fences: Vec<(String, FenceRecord)>, expect: i64) -> Result<i64, CoordError> {
        self.ask(|reply| Cmd::Record { record, fences, expect, reply }).await
    }

    /// Whether this proxy still holds the leadership (its election key), asked of etcd.
    pub async fn confirm_leadership(&self) -> Result<(), CoordError> {
        self.ask(|reply| Cmd::Confirm { reply }).await
    }

    /// Hands an admin request to the leader and waits (up to `wait`) for its answer.
    pub async fn forward(&self, request: Request, wait: Duration) -> Result<Response, CoordError> {
        self.ask(|reply| Cmd::Forward { request, wait, reply }).await
    }

    /// Sends the command `make` builds around a reply channel and waits for the reply.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, CoordError>>) -> Cmd) -> Result<T, CoordError> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(make(reply)).map_err(|_| CoordError::Stopped)?;
        rx.await.map_err(|_| CoordError::Stopped)?
    }

    /// Writes (or deletes) the shared pause, drain or maintenance key.
    pub async fn share(&self, what: SharedWrite) -> Result<(), CoordError> {
        self.ask(|reply| Cmd::Share { what, reply }).await
    }

    pub fn respond(&self, id: String, response: Response) {
        let _ = self.cmds.send(Cmd::Respond { id, response });
    }
}
