//! The data path's threads: one single-threaded tokio runtime per core, each running the
//! sessions it was given from start to end, as HAProxy's threads do.
//!
//! A session's two sockets, its timers and its task live on one thread: a readiness event
//! wakes the task on the thread that polled the event, and no session ever moves, so no
//! worker wakes another (tokio's multi-threaded scheduler parks and unparks its workers
//! through futexes, and steals tasks across them). The listener accepts on the control
//! runtime and hands each new client to the least loaded thread; the accept is the only
//! hand-over a session costs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// One data-path thread: its runtime's handle and how many sessions it runs.
struct Worker {
    /// Where its sessions are spawned.
    handle: Handle,
    /// Sessions running on it now: a new one goes to the thread with the fewest.
    sessions: Arc<AtomicUsize>,
}

/// The data-path threads of one proxy. Dropping it lets the threads end once their
/// sessions have (the listener drains them first).
pub struct Workers {
    workers: Vec<Worker>,
    /// Tells every thread to leave its runtime.
    stop: CancellationToken,
}

/// A session counted on its thread until it ends.
pub struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` threads (0: one per core).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = if n == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { n };
        let stop = CancellationToken::new();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = rt.handle().clone();
            let stop = stop.clone();
            std::thread::Builder::new().name(format!("pgfailover-data-{i}")).spawn(move || {
                // The runtime runs the spawned sessions while this waits for the stop.
                rt.block_on(stop.cancelled());
            })?;
            workers.push(Worker { handle, sessions: Arc::default() });
        }
        Ok(Workers { workers, stop })
    }

    /// Runs `session` on the least loaded thread. The socket leaves the accepting runtime here
    /// and joins that thread's reactor before the session's future is built, so the task
    /// spawned is the session's own future and nothing around it: what an idle session costs.
    /// `session` gets the thread's count of it, to keep for as long as it runs.
    pub fn spawn<F, Fut>(&self, client: std::net::TcpStream, session: F) -> std::io::Result<()>
    where
        F: FnOnce(tokio::net::TcpStream, Counted) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let w = self.workers.iter().min_by_key(|w| w.sessions.load(Ordering::Relaxed)).expect("at least one data-path thread");
        // Registered with the thread's reactor from here: its driver is thread-safe.
        let client = {
            let _on = w.handle.enter();
            tokio::net::TcpStream::from_std(client)?
        };
        w.sessions.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(w.sessions.clone());
        w.handle.spawn(session(client, counted));
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
