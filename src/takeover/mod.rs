//! Restarts and upgrades without a refused connection: how a process gets its listening
//! sockets and the right to run the health monitor, and how it hands both on.
//!
//! - **The state lock** (`lock.rs`). A process runs its health monitor only while it holds an
//!   exclusive `flock` on `<state_dir>/pgfailover.lock`, so two processes sharing a state
//!   directory never both decide (or promote).
//! - **Takeover** (`handshake.rs`, `fd_passing.rs`, `handover.rs`). A running process listens on
//!   `<state_dir>/pgfailover.sock`. A new process started with the same `state_dir` connects,
//!   receives the listening sockets themselves (`SCM_RIGHTS`), says it is ready and starts
//!   accepting on them; the old process stops accepting and stops its monitor, releases the
//!   lock and says so; the new one takes the lock, reads the history (fences included) and
//!   starts its monitor. The sockets never close, so a connection arriving meanwhile waits in
//!   their queue: none is refused or reset. (A second bind with `SO_REUSEPORT` would give each
//!   process its own queue, and closing the old one resets every connection still queued on
//!   it.) [`Successor`] starts that new process (SIGUSR2, or a reload that changes the
//!   backends).
//! - **Who may** (`state_dir.rs`, `peer.rs`). The state directory belongs to this process's
//!   user and nobody else may write in it (created `0700`; refused otherwise); the control
//!   socket is `0600`; and each side checks the other's credentials (`SO_PEERCRED`) before
//!   a descriptor moves.
//! - **systemd** (`systemd.rs`). Listening sockets inherited through socket activation
//!   (`LISTEN_FDS`), and `sd_notify`.
//!
//! [`start`] is the entry point: it returns the listeners and the [`Hold`] on the state
//! directory, which the server completes once it accepts ([`Hold::lock`]) and hands on to the
//! next process once its monitor runs ([`Hold::serve`]).

mod fd_passing;
mod handover;
mod handshake;
mod inherited;
mod lock;
mod peer;
mod state_dir;
mod successor;
mod systemd;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::monitor::history::History;

pub use handover::HandedOver;
pub use handshake::{socket_path, BUSY};
pub use inherited::Inherited;
pub use lock::{lock_path, StateLock};
pub use peer::Peer;
pub use state_dir::check as check_state_dir;
pub use successor::{alive, Successor};
pub use systemd::sd_notify;
#[cfg(feature = "testkit")]
pub use systemd::socket_activated;

/// Why this process could not get its listening sockets or its hold on the state directory.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen { addr: SocketAddr, key: &'static str, source: io::Error },
    #[error("state_dir {dir}: {source}")]
    StateDir { dir: String, source: io::Error },
    #[error("taking over from the running process (state_dir {dir}): {source}")]
    Handshake { dir: String, source: io::Error },
    #[error("stopped by a signal before taking over (the running process carries on)")]
    Stopped,
}

fn state_err(dir: &Path) -> impl FnOnce(io::Error) -> TakeoverError {
    let dir = dir.display().to_string();
    move |source| TakeoverError::StateDir { dir, source }
}

fn handshake_err(dir: &Path) -> impl FnOnce(io::Error) -> TakeoverError {
    let dir = dir.display().to_string();
    move |source| TakeoverError::Handshake { dir, source }
}

/// The listening sockets, bound or inherited, with the addresses they are bound to (port 0
/// in the configuration becomes a real port here).
pub struct Listeners {
    /// Client connections (`listen`).
    pub client: TcpListener,
    /// Where `client` is bound (the status and the log show it; tests connect to it).
    pub client_addr: SocketAddr,
    /// The read-only port (`listen_ro`) and where it is bound, when configured.
    pub read: Option<(TcpListener, SocketAddr)>,
    /// The `[[read.listeners]]` ports, in configuration order, and where they are bound.
    pub reads: Vec<(TcpListener, SocketAddr)>,
    /// The admin HTTP port (`admin_listen`).
    pub admin: TcpListener,
    /// Where `admin` is bound.
    pub admin_addr: SocketAddr,
}

/// This process's hold on the state directory: the lock (after a takeover, once the previous
/// process lets go of it) and what a later takeover hands on. Empty without a `state_dir`.
pub struct Hold {
    /// The state directory, when configured.
    dir: Option<PathBuf>,
    /// The state lock once this process has it: at once on a fresh start, after
    /// [`Hold::lock`] when taking over.
    lock: Option<StateLock>,
    /// The handshake with the process this one takes over from, until it says `RELEASED`.
    previous: Option<UnixStream>,
    /// Duplicates of the listening sockets with their keys, for the next process: the
    /// accept loops own the originals.
    sockets: Option<Vec<(&'static str, OwnedFd)>>,
}

/// Gets the listening sockets (systemd's, the running process's, or bound afresh) and the
/// hold on the state directory. When another process runs on the same `state_dir`, it is
/// asked to hand over (again while it is busy with a failover); once this returns, it has
/// stopped accepting, so the caller starts accepting at once, then waits for the lock with
/// [`Hold::lock`]. `stop` (SIGTERM meanwhile) ends a start still waiting for the running
/// process, before that one is told to stop accepting.
pub async fn start(cfg: &Config, mut inherited: Inherited, stop: &CancellationToken) -> Result<(Listeners, Hold), TakeoverError> {
    let mut previous = None;
    if let Some(dir) = &cfg.state_dir {
        // Before anything else touches it, on a fresh start and before a takeover alike.
        state_dir::prepare(dir).map_err(state_err(dir))?;
        if let Some((stream, sockets, pid)) = ask(dir, stop).await? {
            tracing::warn!(pid, "taking over from the running process");
            // systemd's sockets first, the old process's for the other keys.
            inherited.merge(sockets);
            previous = Some(stream);
        }
    }
    let listeners = Listeners::bind(cfg, &mut inherited).await?;
    for addr in inherited.leftover() {
        tracing::warn!(%addr, from = inherited.source, "an inherited socket matches no listen address of the configuration: closed");
    }
    drop(inherited);
    // Without a state directory, a second process would share nothing: nothing to lock.
    let lock = match &cfg.state_dir {
        Some(dir) if previous.is_none() => match StateLock::try_take(dir).map_err(state_err(dir))? {
            Some(l) => Some(l),
            None => {
                let holder = StateLock::holder(dir).map(|p| format!(" (pid {p})")).unwrap_or_default();
                return Err(TakeoverError::StateDir {
                    dir: dir.display().to_string(),
                    source: io::Error::other(format!("another pgfailover{holder} runs on this state directory and does not answer a takeover")),
                });
            }
        },
        _ => None,
    };
    let sockets = match &cfg.state_dir {
        Some(_) => Some(listeners.duplicates().map_err(|source| TakeoverError::Listen { addr: cfg.listen, key: "listen", source })?),
        None => None,
    };
    // After a takeover: the old process stops accepting now, and this one starts next.
    // First what could still fail: once the old process stopped, this one must run.
    if let (Some(stream), Some(dir)) = (&previous, &cfg.state_dir) {
        History::check(dir).map_err(state_err(dir))?;
        if stop.is_cancelled() {
            return Err(TakeoverError::Stopped);
        }
        let mut s = stream.try_clone().map_err(handshake_err(dir))?;
        tokio::task::spawn_blocking(move || handshake::ready(&mut s)).await.unwrap_or_else(|e| Err(io::Error::other(e))).map_err(handshake_err(dir))?;
    }
    Ok((listeners, Hold { dir: cfg.state_dir.clone(), lock, previous, sockets }))
}

/// Asks the process running on `dir` (if any) for its sockets, again every 500 ms while it
/// is busy. `None`: nobody runs there.
async fn ask(dir: &Path, stop: &CancellationToken) -> Result<Option<(UnixStream, Inherited, u32)>, TakeoverError> {
    let mut waited = 0u32;
    // A failover ends within its own bounds; beyond ten minutes something is wrong.
    const BUSY_LIMIT: u32 = 1200;
    loop {
        let d = dir.to_path_buf();
        let asked = tokio::task::spawn_blocking(move || handshake::request(&d)).await.unwrap_or_else(|e| Err(io::Error::other(e)));
        match asked {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && waited < BUSY_LIMIT => {
                if waited % 10 == 0 {
                    tracing::warn!(answer = %e, "the running process cannot hand over now; asking again");
                }
                waited += 1;
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    _ = stop.cancelled() => return Err(TakeoverError::Stopped),
                }
            }
            other => return other.map_err(handshake_err(dir)),
        }
    }
}

async fn listen(inherited: &mut Inherited, addr: SocketAddr, key: &'static str) -> Result<(TcpListener, SocketAddr), TakeoverError> {
    let err = |source| TakeoverError::Listen { addr, key, source };
    let l = match inherited.take(addr, key).map_err(err)? {
        Some(l) => {
            tracing::info!(%addr, key, from = inherited.source, "listening on an inherited socket");
            l
        }
        None => TcpListener::bind(addr).await.map_err(err)?,
    };
    let bound = l.local_addr().map_err(err)?;
    Ok((l, bound))
}

impl Listeners {
    async fn bind(cfg: &Config, inherited: &mut Inherited) -> Result<Listeners, TakeoverError> {
        let (client, client_addr) = listen(inherited, cfg.listen, "listen").await?;
        let read = match cfg.listen_ro {
            Some(addr) => Some(listen(inherited, addr, "listen_ro").await?),
            None => None,
        };
        let mut reads = Vec::new();
        for l in &cfg.read.listeners {
            reads.push(listen(inherited, l.listen, "read.listeners").await?);
        }
        let (admin, admin_addr) = listen(inherited, cfg.admin_listen, "admin_listen").await?;
        Ok(Listeners { client, client_addr, read, reads, admin, admin_addr })
    }

    /// Each socket duplicated, with its configuration key.
    fn duplicates(&self) -> io::Result<Vec<(&'static str, OwnedFd)>> {
        let dup = |l: &TcpListener| std::os::fd::AsFd::as_fd(l).try_clone_to_owned();
        let mut fds = vec![("listen", dup(&self.client)?), ("admin_listen", dup(&self.admin)?)];
        if let Some((r, _)) = &self.read {
            fds.push(("listen_ro", dup(r)?));
        }
        for (r, _) in &self.reads {
            fds.push(("read.listeners", dup(r)?));
        }
        Ok(fds)
    }
}

impl Hold {
    /// After a takeover: waits until the previous process has stopped its monitor and
    /// released the state lock (or has gone), and takes the lock. Call it once this process
    /// accepts on the listeners. Without a takeover, the lock is held already.
    pub async fn lock(&mut self) -> Result<(), TakeoverError> {
        let (Some(stream), Some(dir)) = (self.previous.take(), &self.dir) else { return Ok(()) };
        let released = tokio::task::spawn_blocking(move || handshake::released(stream)).await.unwrap_or_else(|e| Err(io::Error::other(e)));
        if let Err(e) = released {
            tracing::warn!(error = %e, "the previous process did not confirm the takeover; waiting for the state directory's lock");
        }
        // The old process releases it at the latest when it exits.
        self.lock = Some(StateLock::take(dir).await.map_err(state_err(dir))?);
        tracing::info!("the previous process released the health monitor; starting it here");
        Ok(())
    }
}
