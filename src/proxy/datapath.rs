//! What every session of the data path shares, read-only.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::live::{LiveConfig, Loaded};

use crate::cluster::BackendId;
use crate::config::BackendConfig;
use crate::metrics::Metrics;
use crate::route::{ReadRoute, Route};

/// Which listener a client came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// `listen`: sessions go to the primary.
    Primary,
    /// `listen_ro`: sessions go to a fresh-enough standby.
    Read,
    /// `read.listeners[i]`: as `Read`, within that listener's own bounds.
    ReadAt(usize),
}

impl Port {
    /// Whether sessions of this port read from standbys.
    pub fn is_read(self) -> bool {
        self != Port::Primary
    }
}

/// What every session needs; shared read-only behind an `Arc`.
pub struct DataPath {
    /// Backends in config order; the route names them by index.
    pub backends: Arc<[BackendConfig]>,
    /// The current route; sessions clone this receiver.
    pub route: watch::Receiver<Route>,
    /// The configuration in force (a reload replaces it): `[proxy]`, `[read]` and
    /// `failover.hold_timeout` are read from it when a session needs them.
    pub config: LiveConfig,
    pub metrics: Arc<Metrics>,
    /// Passive health signal: a backend whose connect just failed.
    pub connect_failed: mpsc::Sender<BackendId>,
    /// Where read-only sessions may go.
    pub read_route: watch::Receiver<ReadRoute>,
    /// The next turn of `balance = "round_robin"`.
    pub read_turn: AtomicUsize,
    /// The pause (held sessions and statements) and the census of open sessions.
    pub gate: Arc<super::gate::Gate>,
}

impl DataPath {
    /// The configuration of backend `id`.
    pub fn backend(&self, id: BackendId) -> &BackendConfig {
        &self.backends[id.index()]
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Loaded> {
        self.config.borrow().clone()
    }
}
