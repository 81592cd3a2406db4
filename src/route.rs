//! The route: the one backend new client connections go to, plus an epoch; and the read
//! route, the backends the read-only port may use.
//!
//! Only the monitor writes it (through [`RouteWriter`]), as the machine's route actions say;
//! sessions and the listener read a `watch` and clone the small value out, never holding a
//! borrow across an `.await`. Backends are named by [`BackendId`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::BackendId;

/// Where new sessions go right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Increases on every change, so a reader can tell "moved" from "same".
    pub epoch: u64,
    /// The routable primary, or `None` while no backend is routable.
    pub target: Option<BackendId>,
    /// Why there is no target, shown to refused clients and operators.
    pub reason: Arc<str>,
}

impl Route {
    pub fn none(reason: &str) -> Route {
        Route { epoch: 0, target: None, reason: reason.into() }
    }
}

/// The writing end; the monitor owns the only one.
#[derive(Debug)]
pub struct RouteWriter {
    /// Every reader's receiver hangs off it.
    tx: watch::Sender<Route>,
}

impl RouteWriter {
    /// A new route table starting with no target.
    pub fn new(reason: &str) -> RouteWriter {
        RouteWriter { tx: watch::Sender::new(Route::none(reason)) }
    }

    pub fn subscribe(&self) -> watch::Receiver<Route> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Route {
        self.tx.borrow().clone()
    }

    /// Points new sessions at `target` (or nowhere). Publishes, and bumps the epoch, only
    /// when something changed; returns whether it did.
    pub fn set(&self, target: Option<BackendId>, reason: &str) -> bool {
        self.tx.send_if_modified(|r| {
            if r.target == target && (target.is_some() || &*r.reason == reason) {
                return false;
            }
            r.epoch += 1;
            r.target = target;
            r.reason = reason.into();
            true
        })
    }
}

/// One standby (or the primary, with `include_primary`) that may take new read sessions.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadTarget {
    /// The backend.
    pub backend: BackendId,
    /// WAL bytes its replay is behind the primary's last seen position.
    pub lag_bytes: u64,
    /// Its replay delay (see [`crate::config::ReadConfig::max_lag`]).
    pub lag: Duration,
    /// The WAL position it has replayed, as last checked (`u64::MAX` for the primary): a
    /// session's `pgfailover.min_lsn` is held against it.
    pub replay_lsn: u64,
}

/// Where new sessions of the read-only port may go: the counterpart of [`Route`], written by
/// the monitor after every check.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadRoute {
    /// Increases on every change.
    pub epoch: u64,
    /// Backends within the configured `[read]` bounds, with their lag, in config order.
    pub targets: Vec<ReadTarget>,
    /// The routed primary: the fallback when no standby qualifies.
    pub primary: Option<BackendId>,
    /// Backends whose open read sessions may stay (answering, not fenced); a read session
    /// on any other is cut.
    pub live: Vec<BackendId>,
    /// Why no standby qualifies, when none does.
    pub reason: Arc<str>,
}

/// The writing end of the [`ReadRoute`]; the monitor owns it.
#[derive(Debug)]
pub struct ReadRouteWriter {
    /// Every reader's receiver hangs off it.
    tx: watch::Sender<ReadRoute>,
}

impl Default for ReadRouteWriter {
    fn default() -> Self {
        let none = ReadRoute { epoch: 0, targets: Vec::new(), primary: None, live: Vec::new(), reason: "waiting for the first health checks".into() };
        ReadRouteWriter { tx: watch::Sender::new(none) }
    }
}

impl ReadRouteWriter {
    pub fn subscribe(&self) -> watch::Receiver<ReadRoute> {
        self.tx.subscribe()
    }

    /// Publishes `next` (its epoch is ignored) if anything in it changed.
    pub fn set(&self, next: ReadRoute) -> bool {
        self.tx.send_if_modified(|r| {
            let epoch = r.epoch;
            let same = r.targets == next.targets && r.primary == next.primary && r.live == next.live && r.reason == next.reason;
            if same {
                return false;
            }
            *r = ReadRoute { epoch: epoch + 1, ..next };
            true
        })
    }

    /// Nothing may be read any more (the monitor died).
    pub fn clear(&self, reason: &str) {
        self.set(ReadRoute { epoch: 0, targets: Vec::new(), primary: None, live: Vec::new(), reason: reason.into() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_moves_only_on_change() {
        let (a, b) = (BackendId::new(0), BackendId::new(1));
        let w = RouteWriter::new("starting");
        let rx = w.subscribe();
        assert_eq!(rx.borrow().epoch, 0);
        assert!(w.set(Some(a), ""));
        assert_eq!(rx.borrow().epoch, 1);
        assert!(!w.set(Some(a), "other text"));
        assert!(w.set(None, "primary down"));
        assert_eq!(rx.borrow().epoch, 2);
        assert_eq!(&*rx.borrow().reason, "primary down");
        assert!(w.set(Some(b), ""));
        assert_eq!(w.current().target, Some(b));
        assert_eq!(w.current().epoch, 3);
    }
}
