//! The client listener: accepts connections and spawns a [`session`] for each, on the
//! data-path threads ([`Workers`]) when it has them. `run(listener, …, shutdown)` is the
//! whole entry point, so a test can bind `127.0.0.1:0`, spawn it and talk to it.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::datapath::{DataPath, Port};
use super::session;
use super::workers::Workers;

/// Accepts clients on the main port until `shutdown`, then lets sessions drain for the
/// configured grace period and closes the rest. Returns once every session task has ended.
/// Sessions run on the caller's runtime.
pub async fn run(listener: TcpListener, dp: Arc<DataPath>, shutdown: CancellationToken) {
    run_ports(vec![(listener, Port::Primary)], dp, None, shutdown).await
}

/// As [`run`], for several listeners (the main port and the read-only port), with one drain;
/// sessions run on `workers` when given. The threads end once the drain is over.
pub async fn run_ports(listeners: Vec<(TcpListener, Port)>, dp: Arc<DataPath>, workers: Option<Workers>, shutdown: CancellationToken) {
    let workers = workers.map(Arc::new);
    let sessions = TaskTracker::new();
    // Cancelled when the grace period is over: ends every session still running.
    let kill = CancellationToken::new();
    let accepting = TaskTracker::new();
    for (listener, port) in listeners {
        let how = Spawn { sessions: sessions.clone(), workers: workers.clone(), stopping: shutdown.clone(), kill: kill.clone() };
        accepting.spawn(accept(listener, port, dp.clone(), how));
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

/// Where and how a new session runs.
struct Spawn {
    /// Every session, for the drain.
    sessions: TaskTracker,
    /// The data-path threads; `None`: the accepting runtime.
    workers: Option<Arc<Workers>>,
    /// The proxy stops accepting (held clients are refused).
    stopping: CancellationToken,
    /// The drain period is over (spliced sessions are closed).
    kill: CancellationToken,
}

impl Spawn {
    fn session(&self, client: TcpStream, dp: Arc<DataPath>, port: Port) {
        let (stopping, kill) = (self.stopping.clone(), self.kill.clone());
        let Some(workers) = &self.workers else {
            self.sessions.spawn(session::serve(client, dp, port, stopping, kill, ()));
            return;
        };
        // Counted for the drain from now, while it moves to its thread.
        let counted = self.sessions.token();
        let moved = client
            .into_std()
            .and_then(|client| workers.spawn(client, move |client, on_thread| session::serve(client, dp, port, stopping, kill, (counted, on_thread))));
        if let Err(e) = moved {
            tracing::warn!(error = %e, "a new client's socket could not move to its data-path thread");
        }
    }
}

/// One listener's accept loop, until the proxy stops accepting.
async fn accept(listener: TcpListener, port: Port, dp: Arc<DataPath>, how: Spawn) {
    let mut backoff = Duration::from_millis(5);
    let shutdown = how.stopping.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _peer)) => {
                    backoff = Duration::from_millis(5);
                    if dp.metrics.active_sessions() >= dp.config().proxy.max_client_connections {
                        how.sessions.spawn(session::refuse_over_limit(client, dp.clone()));
                        continue;
                    }
                    how.session(client, dp.clone(), port);
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
