//! The client listener: accepts connections and spawns a [`session`] for
//! each. `run(listener, …, shutdown)` is the whole entry point, so a test can bind
//! `127.0.0.1:0`, spawn it and talk to it.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::datapath::{DataPath, Port};
use super::session;

/// Accepts clients on the main port until `shutdown`, then lets sessions drain for the
/// configured grace period and closes the rest. Returns once every session task has ended.
pub async fn run(listener: TcpListener, dp: Arc<DataPath>, shutdown: CancellationToken) {
    run_ports(vec![(listener, Port::Primary)], dp, shutdown).await
}

/// As [`run`], for several listeners (the main port and the read-only port), with one drain.
pub async fn run_ports(listeners: Vec<(TcpListener, Port)>, dp: Arc<DataPath>, shutdown: CancellationToken) {
    let sessions = TaskTracker::new();
    // Cancelled when the grace period is over: ends every session still running.
    let kill = CancellationToken::new();
    let accepting = TaskTracker::new();
    for (listener, port) in listeners {
        accepting.spawn(accept(listener, port, dp.clone(), sessions.clone(), shutdown.clone(), kill.clone()));
    }
    accepting.close();
    accepting.wait().await;
    sessions.close();
    let open = sessions.len();
    if open > 0 {
        tracing::info!(sessions = open, grace = %humantime::format_duration(dp.config().proxy.shutdown_grace), "draining client sessions");
    }
    if tokio::time::timeout(dp.config().proxy.shutdown_grace, sessions.wait()).await.is_err() {
        tracing::info!(sessions = sessions.len(), "grace period over; closing remaining sessions");
        kill.cancel();
        sessions.wait().await;
    }
}

/// One listener's accept loop, until `shutdown`.
async fn accept(listener: TcpListener, port: Port, dp: Arc<DataPath>, sessions: TaskTracker, shutdown: CancellationToken, kill: CancellationToken) {
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _peer)) => {
                    backoff = Duration::from_millis(5);
                    if dp.metrics.active_sessions() >= dp.config().proxy.max_client_connections {
                        sessions.spawn(session::refuse_over_limit(client, dp.clone()));
                        continue;
                    }
                    sessions.spawn(session::serve(client, dp.clone(), port, shutdown.clone(), kill.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: the accept loop must survive them. Back off so a
                    // full descriptor table does not become a busy loop.
                    tracing::warn!(error = %e, "accept failed; backing off {:?}", backoff);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
        }
    }
}
