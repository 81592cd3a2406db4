//! Failing closed: the monitor's tasks share a [`Lifeline`], and one that ends while the proxy
//! is not stopping (a panic) cancels its `fatal` token, so the process exits non-zero and its
//! supervisor restarts it.

use tokio_util::sync::CancellationToken;

/// What the monitor's tasks share to fail closed.
#[derive(Clone)]
pub struct Lifeline {
    /// The proxy is stopping: tasks ending now is expected.
    pub shutdown: CancellationToken,
    /// Cancelled when a monitor task died unexpectedly.
    pub fatal: CancellationToken,
}

impl Lifeline {
    /// A guard that, when dropped while the proxy is not stopping, declares the monitor dead.
    pub(super) fn guard(&self, what: &'static str) -> DeathWatch {
        DeathWatch { life: self.clone(), what }
    }
}

/// Declares the monitor dead when dropped while the proxy is not stopping.
pub(super) struct DeathWatch {
    /// Whether the proxy is stopping, and the token to cancel if not.
    life: Lifeline,
    /// The task it watches, for the log.
    what: &'static str,
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if !self.life.shutdown.is_cancelled() && !self.life.fatal.is_cancelled() {
            tracing::error!(task = self.what, panicking = std::thread::panicking(), "a health-monitor task ended unexpectedly: failing closed");
            self.life.fatal.cancel();
        }
    }
}
