//! What every session of the data path shares, read-only.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::cluster::BackendId;
use crate::config::{BackendConfig, ProxyConfig, ReadConfig};
use crate::metrics::Metrics;
use crate::route::{ReadRoute, Route};

/// Which listener a client came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// `listen`: sessions go to the primary.
    Primary,
    /// `listen_ro`: sessions go to a fresh-enough standby.
    Read,
}

/// The data path's settings a reload can change (`[proxy]`, `failover.hold_timeout`,
/// `[read]`): each session reads them as it needs them.
#[derive(Clone, Debug)]
pub struct Knobs {
    pub proxy: ProxyConfig,
    /// How long a new client waits for a routable primary before it is refused.
    pub hold_timeout: Duration,
    pub read: ReadConfig,
}

impl Knobs {
    pub fn of(cfg: &crate::config::Config) -> Knobs {
        Knobs { proxy: cfg.proxy.clone(), hold_timeout: cfg.failover.hold_timeout, read: cfg.read.clone() }
    }
}

/// What every session needs; shared read-only behind an `Arc`.
pub struct DataPath {
    /// Backends in config order; the route names them by index.
    pub backends: Arc<[BackendConfig]>,
    /// The current route; sessions clone this receiver.
    pub route: watch::Receiver<Route>,
    /// The current settings (replaced by a reload).
    pub knobs: watch::Sender<Arc<Knobs>>,
    pub metrics: Arc<Metrics>,
    /// Passive health signal: a backend whose connect just failed.
    pub connect_failed: mpsc::Sender<BackendId>,
    /// Where read-only sessions may go.
    pub read_route: watch::Receiver<ReadRoute>,
    /// The next turn of `balance = "round_robin"`.
    pub read_turn: AtomicUsize,
}

impl DataPath {
    /// The configuration of backend `id`.
    pub fn backend(&self, id: BackendId) -> &BackendConfig {
        &self.backends[id.index()]
    }

    /// The settings as they are now.
    pub fn knobs(&self) -> Arc<Knobs> {
        self.knobs.borrow().clone()
    }
}
