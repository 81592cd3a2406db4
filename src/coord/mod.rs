//! Several proxies, one decision: coordination through etcd v3 (an existing, proven store;
//! never a consensus of our own).
//!
//! One `session` at a time holds an etcd lease (renewed every third of its TTL), publishes
//! this proxy's view under `members/<name>` on it, campaigns for leadership in etcd's
//! election, and watches the cluster's keys ([`keys`]; their values are [`crate::cluster`]'s). The monitor learns everything
//! through [`Event`]s and asks for writes through the [`Coordinator`] handle:
//!
//! - only the leader promotes, and only after a transaction that succeeds while its election
//!   key still exists with its create revision (a fencing token) and that records the new
//!   primary and the old one's fence first;
//! - every proxy follows the recorded primary and every shared fence;
//! - a leader that cannot renew its lease steps down before the lease can expire; without
//!   etcd nobody promotes.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CoordinationConfig;

mod error;
pub mod keys;
mod session;

pub use crate::cluster::{FenceRecord, MemberView, PrimaryRecord, Request, Response};
pub use error::CoordError;

/// What the coordinator tells the monitor. They come in batches (one etcd read or one watch
/// response each), to be applied together before anything is re-decided.
#[derive(Clone, Debug)]
pub enum Event {
    /// etcd answers (or not).
    EtcdUp(bool),
    /// Who leads now (`None`: nobody known), and whether it is this proxy.
    Leadership { leader: Option<String>, is_leader: bool },
    /// The recorded primary changed (or is gone), and the key's mod revision (0: none): a new
    /// record replaces exactly this one.
    Record(Option<PrimaryRecord>, i64),
    /// A shared fence was set (`Some`) or lifted (`None`).
    Fence { backend: String, fence: Option<FenceRecord> },
    /// The live proxies' views changed.
    Members(BTreeMap<String, MemberView>),
    /// The end of a session's first read: every shared key is known now (fences missing
    /// from etcd are not shared any more).
    Loaded,
}

/// What the coordinator shows (`/failover/status`, metrics).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordStatus {
    pub mode: &'static str,
    pub name: String,
    pub cluster: String,
    pub leader: Option<String>,
    pub is_leader: bool,
    pub etcd_reachable: bool,
    /// The etcd revision of the last change seen.
    pub last_revision: i64,
    pub members: Vec<MemberView>,
    pub recorded_primary: Option<PrimaryRecord>,
    pub lease_renewal_failures: u64,
}

pub(crate) enum Cmd {
    PutFence(String, FenceRecord),
    DeleteFence(String),
    /// The fencing-token transaction before a promotion.
    Record {
        record: PrimaryRecord,
        fences: Vec<(String, FenceRecord)>,
        expect: i64,
        reply: oneshot::Sender<Result<i64, CoordError>>,
    },
    /// The fencing token alone: this proxy still leads (before a switchover stops writes).
    Confirm {
        reply: oneshot::Sender<Result<(), CoordError>>,
    },
    /// A follower's admin request for the leader; the leader's answer comes back.
    Forward {
        request: Request,
        wait: Duration,
        reply: oneshot::Sender<Result<Response, CoordError>>,
    },
    /// The leader's answer to a forwarded request.
    Respond {
        id: String,
        response: Response,
    },
}

/// How the monitor and the admin port talk to the coordinator. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    /// Unbounded: fence changes must never be dropped, and they are few (one per change).
    cmds: mpsc::UnboundedSender<Cmd>,
    /// This proxy's view: only the latest matters.
    view: std::sync::Arc<watch::Sender<Option<MemberView>>>,
    status: watch::Receiver<CoordStatus>,
    pub name: String,
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
        let first = CoordStatus { mode: "etcd", name: cfg.name.clone(), cluster: cfg.cluster.clone(), ..Default::default() };
        let (status_tx, status) = watch::channel(first);
        let name = cfg.name.clone();
        tracker.spawn(session::run(cfg, session::Channels { events, requests, cmds: rx, view: view_rx, status: status_tx }, shutdown));
        Coordinator { cmds, view: std::sync::Arc::new(view), status, name }
    }

    pub fn status(&self) -> CoordStatus {
        self.status.borrow().clone()
    }

    pub fn put_fence(&self, backend: String, fence: FenceRecord) {
        let _ = self.cmds.send(Cmd::PutFence(backend, fence));
    }

    pub fn delete_fence(&self, backend: String) {
        let _ = self.cmds.send(Cmd::DeleteFence(backend));
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

    pub fn respond(&self, id: String, response: Response) {
        let _ = self.cmds.send(Cmd::Respond { id, response });
    }
}
