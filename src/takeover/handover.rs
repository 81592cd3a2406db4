//! The running process's side of a takeover: it answers on the control socket, hands its
//! listening sockets to the new process, stops accepting and its monitor, and lets go of the
//! state lock once the history is on disk.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::peer::{own_uid, Peer};
use super::{handshake, Hold, StateLock};
use crate::monitor::MonitorHandle;

/// Whether, and to whom, this process has handed over.
#[derive(Clone, Debug, Default)]
pub struct HandedOver {
    /// Cancelled once another process took over the listeners and the monitor.
    done: CancellationToken,
    /// That process's id (0: none yet).
    pid: Arc<AtomicU32>,
}

impl HandedOver {
    /// Resolves once another process has taken over.
    pub async fn wait(&self) {
        self.done.cancelled().await
    }

    /// The process that took over (0: none).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }
}

impl Hold {
    /// Once this process's monitor runs: listens for the next process on the control socket
    /// and hands over to it (on `tasks`). `shutdown` stops this process's accepting and
    /// tasks; `monitor_tasks` are the monitor and the coordinator, which end before the lock
    /// goes; `refused` counts peers of another user, who get nothing. Without a state
    /// directory there is nobody to hand over to.
    pub fn serve(
        self,
        monitor: MonitorHandle,
        shutdown: CancellationToken,
        monitor_tasks: TaskTracker,
        tasks: &TaskTracker,
        refused: metrics::Counter,
    ) -> HandedOver {
        let handed_over = HandedOver::default();
        let (Some(dir), Some(sockets)) = (&self.dir, self.sockets) else { return handed_over };
        let control = match bind_control(dir) {
            Ok(c) => c,
            Err(e) => {
                // Serving matters more than a later takeover. The lock stays held until this
                // process's monitor has stopped, so a new process refuses to start beside it
                // instead of running a second monitor.
                tracing::error!(error = %e, path = %handshake::socket_path(dir).display(), "cannot listen for takeovers; a new process will refuse to start beside this one");
                let lock = self.lock;
                tasks.spawn(async move {
                    shutdown.cancelled().await;
                    monitor_tasks.close();
                    monitor_tasks.wait().await;
                    drop(lock);
                });
                return handed_over;
            }
        };
        let h = Handover { sockets: Arc::new(sockets), lock: self.lock, shutdown, monitor_tasks, done: handed_over.clone(), monitor, refused };
        tasks.spawn(h.serve(control));
        handed_over
    }
}

/// The control socket, replacing a stale one (the lock is held: nobody else serves it);
/// `0600` whatever the umask. (Until the `chmod` the `0700` state directory keeps others out.)
fn bind_control(dir: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = handshake::socket_path(dir);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The running process's side of a takeover.
struct Handover {
    /// Each listening socket (a duplicate) with its configuration key; shared with the
    /// blocking handshake while it runs.
    sockets: Arc<Vec<(&'static str, OwnedFd)>>,
    /// Asked whether a failover is in progress, and to flush the history before the lock goes.
    monitor: MonitorHandle,
    /// Released only after the monitor's last history write.
    lock: Option<StateLock>,
    /// This process's stop: cancelled to stop accepting once the new process is ready.
    shutdown: CancellationToken,
    /// The monitor and the coordinator, awaited before the lock goes.
    monitor_tasks: TaskTracker,
    /// Told once the new process has the monitor.
    done: HandedOver,
    /// `pgfailover_takeover_refused_total`: peers of another user.
    refused: metrics::Counter,
}

impl Handover {
    async fn serve(mut self, control: UnixListener) {
        loop {
            let conn = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    // Stopping: the sockets close with the accept loops (no connection is
                    // queued that nobody will accept). The lock goes only after the
                    // monitor's last history write.
                    self.sockets = Arc::default();
                    self.monitor_tasks.close();
                    self.monitor_tasks.wait().await;
                    return;
                }
                c = control.accept() => c,
            };
            let stream = match conn.and_then(|(s, _)| s.into_std()).and_then(|s| s.set_nonblocking(false).map(|_| s)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "takeover socket: accept failed");
                    continue;
                }
            };
            // Before a byte is read or written: another user gets no answer at all.
            match Peer::of(&stream) {
                Ok(peer) if peer.may_take_over(own_uid()) => {}
                Ok(peer) => {
                    self.refused.increment(1);
                    tracing::warn!(
                        uid = peer.uid,
                        pid = peer.pid,
                        own_uid = own_uid(),
                        "refused a takeover from a process of another user: it gets no socket, this process serves on"
                    );
                    continue;
                }
                Err(e) => {
                    self.refused.increment(1);
                    tracing::warn!(error = %e, "refused a takeover whose peer credentials cannot be read");
                    continue;
                }
            }
            // Not in the middle of a failover or switchover (its steps are this monitor's to
            // finish): the new process asks again.
            let status = self.monitor.status();
            let busy = move || status.failover_in_progress.as_ref().map(|_| "a failover or switchover is in progress".to_string());
            // The sockets stay open here (the duplicates) until the handshake is over.
            let sockets = self.sockets.clone();
            let served = tokio::task::spawn_blocking(move || {
                let fds: Vec<(&str, BorrowedFd<'_>)> = sockets.iter().map(|(k, f)| (*k, f.as_fd())).collect();
                handshake::serve(stream, &fds, busy)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let (pid, stream) = match served {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tracing::debug!(error = %e, "a takeover asked while busy; the new process asks again");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a takeover did not happen; this process carries on");
                    continue;
                }
            };
            tracing::warn!(pid, "handing over to a new process: no longer accepting; sessions drain");
            self.done.pid.store(pid, Ordering::Relaxed);
            self.sockets = Arc::default();
            // Stops accepting, the monitor (its last history write included) and the
            // coordinator (its etcd lease revoked); then the lock goes.
            self.shutdown.cancel();
            self.monitor_tasks.close();
            self.monitor_tasks.wait().await;
            // The monitor waited up to 5 s for its journal; the next process reads it, so
            // the lock goes only once it is on disk (a disk stalled for a minute is given up).
            let monitor = self.monitor.clone();
            let flushed = tokio::task::spawn_blocking(move || monitor.flush_history(std::time::Duration::from_secs(60))).await.unwrap_or(false);
            if !flushed {
                tracing::error!("the history journal did not reach the disk; handing over anyway");
            }
            self.lock.take();
            let _ = tokio::task::spawn_blocking(move || handshake::say_released(stream)).await;
            tracing::info!(pid, "handed over the health monitor");
            self.done.done.cancel();
            return;
        }
    }
}
