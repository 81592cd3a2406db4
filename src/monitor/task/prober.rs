//! The probers: one task per backend that checks it and reports every result to the monitor
//! task, and the log of a backend's failing checks.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::cluster::BackendId;
use crate::config::BackendConfig;
use crate::live::LiveConfig;
use crate::monitor::check_error::CheckError;
use crate::monitor::handle::{CheckNow, Command};
use crate::monitor::probe::Prober;

use super::Lifeline;

/// One backend's prober: checks it every interval (sooner after a failure, at once when
/// asked) and sends each result to the monitor.
pub(super) struct ProberTask {
    /// The backend it checks.
    pub(super) i: BackendId,
    /// Its configuration.
    pub(super) backend: BackendConfig,
    /// The configuration in force: `health.interval` and `health.timeout`, as a reload
    /// leaves them.
    pub(super) config: LiveConfig,
    /// Where its results go (the monitor task).
    pub(super) commands: mpsc::Sender<Command>,
    /// Requests to check now (an operator's check-health, a passive signal, the machine).
    pub(super) now_rx: mpsc::Receiver<CheckNow>,
    /// Its death while the proxy is not stopping fails the proxy closed.
    pub(super) life: Lifeline,
}

impl ProberTask {
    pub(super) async fn run(mut self) {
        let _watch = self.life.guard("prober");
        let (broken_tx, mut broken_rx) = mpsc::channel(1);
        let timeout = self.config.borrow().health.timeout;
        let mut prober = Prober::new(self.backend.clone(), timeout, Some(broken_tx));
        let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
        let mut failing = FailureLog::default();
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = prober.check() => r,
                _ = self.life.shutdown.cancelled() => return,
            };
            let took = started.elapsed();
            let failed = result.is_err();
            failing.note(&self.backend.name, result.as_ref().err(), took);
            if self.commands.send(Command::Observed { i: self.i, result, took }).await.is_err() {
                return;
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            // As a reload left them (seen here, or by the wait below).
            let (interval, timeout) = {
                let cfg = self.config.borrow_and_update();
                (cfg.health.interval, cfg.health.timeout)
            };
            prober.set_timeout(timeout);
            // After a failure the next check comes sooner, so a crash reaches the threshold
            // in a fraction of the interval; a timed-out check already waited its share.
            let fast = (interval / 4).clamp(Duration::from_millis(10), interval);
            let delay = if failed { fast.saturating_sub(took) } else { interval };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // A reload's new interval takes effect at once.
                _ = self.config.changed() => {}
                req = self.now_rx.recv() => match req {
                    Some(ack) => acks.extend(ack),
                    None => return,
                },
                _ = broken_rx.recv() => {}
                _ = self.life.shutdown.cancelled() => return,
            }
            while let Ok(more) = self.now_rx.try_recv() {
                acks.extend(more);
            }
        }
    }
}

/// Logs a backend's failing checks for people: the first failure, then at most once a
/// minute while it keeps failing, then its return. (Every failure is counted in the metrics
/// and shown in `/failover/health`; every one is logged at debug.)
#[derive(Default)]
struct FailureLog {
    /// When the current run of failures began, how many so far, and when last logged.
    run: Option<(Instant, u64, Instant)>,
}

/// How often a backend that stays down is logged again.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

impl FailureLog {
    fn note(&mut self, backend: &str, error: Option<&CheckError>, took: Duration) {
        let now = Instant::now();
        match (error, self.run.as_mut()) {
            (Some(e), None) => {
                tracing::info!(backend, error = %e, kind = e.kind().as_str(), took_ms = took.as_millis() as u64, "health check failed");
                self.run = Some((now, 1, now));
            }
            (Some(e), Some((since, count, logged))) => {
                *count += 1;
                if now.duration_since(*logged) >= FAILURE_LOG_EVERY {
                    let secs = now.duration_since(*since).as_secs();
                    tracing::info!(backend, error = %e, kind = e.kind().as_str(), failed_checks = *count, failing_for_s = secs, "health checks still failing");
                    *logged = now;
                } else {
                    tracing::debug!(backend, error = %e, kind = e.kind().as_str(), took_ms = took.as_millis() as u64, "health check failed");
                }
            }
            (None, Some((since, count, _))) => {
                let ms = now.duration_since(*since).as_millis() as u64;
                tracing::info!(backend, failed_checks = *count, failing_for_ms = ms, "health checks succeed again");
                self.run = None;
            }
            (None, None) => {}
        }
    }
}
