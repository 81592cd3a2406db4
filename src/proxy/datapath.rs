//! What every session of the data path shares, read-only.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{BackendConfig, ProxyConfig};
use crate::metrics::Metrics;
use crate::route::Route;

/// What every session needs; shared read-only behind an `Arc`.
pub struct DataPath {
    /// Backends in config order; the route names them by index.
    pub backends: Arc<[BackendConfig]>,
    /// The current route; sessions clone this receiver.
    pub route: watch::Receiver<Route>,
    pub proxy: ProxyConfig,
    /// How long a new client waits for a routable primary before it is refused.
    pub hold_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Passive health signal: a backend index whose connect just failed.
    pub connect_failed: mpsc::Sender<usize>,
}
