//! The route: the one backend new client connections go to, plus an epoch.
//!
//! Only the monitor writes it (through [`RouteWriter`]); sessions and the listener read a
//! `watch` and clone the small value out, never holding a borrow across an `.await`.

use std::sync::Arc;

use tokio::sync::watch;

/// Where new sessions go right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Increases on every change, so a reader can tell "moved" from "same".
    pub epoch: u64,
    /// Index (config order) of the routable primary, or `None` while no backend is routable.
    pub target: Option<usize>,
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
    pub fn set(&self, target: Option<usize>, reason: &str) -> bool {
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

/// Resolves when the route no longer names `backend` (checked at once, then on every change).
pub async fn left(route: &mut watch::Receiver<Route>, backend: usize) {
    loop {
        if route.borrow_and_update().target != Some(backend) {
            return;
        }
        if route.changed().await.is_err() {
            // The writer is gone (proxy stopping); shutdown ends the session instead.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_moves_only_on_change() {
        let w = RouteWriter::new("starting");
        let rx = w.subscribe();
        assert_eq!(rx.borrow().epoch, 0);
        assert!(w.set(Some(0), ""));
        assert_eq!(rx.borrow().epoch, 1);
        assert!(!w.set(Some(0), "other text"));
        assert!(w.set(None, "primary down"));
        assert_eq!(rx.borrow().epoch, 2);
        assert_eq!(&*rx.borrow().reason, "primary down");
        assert!(w.set(Some(1), ""));
        assert_eq!(w.current().target, Some(1));
        assert_eq!(w.current().epoch, 3);
    }
}
