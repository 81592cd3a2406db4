//! The pause: what holds new sessions and the next statement of quiet sessions, and the
//! census of every open session that tells a pause or a drain when it may go on.
//!
//! A pause has a [`Scope`]: everything (an operator's `POST /failover/pause`), or the
//! sessions on one backend (a switchover drains the old primary: its sessions, and every
//! new session the route would send there). While it lasts:
//! - a new session in scope is held before it connects (up to `failover.hold_timeout`);
//! - a quiet session in scope keeps its next message: the bytes are read, not forwarded;
//! - a busy session runs on until it is quiet, and is then held the same way.
//!
//! The handshake between a session starting a statement and a pause starting is two
//! sequentially consistent steps on each side: the session marks itself busy, then reads the
//! scope; the pause stores the scope, then reads the sessions. Whichever comes second sees
//! the other, so a census never counts as quiet a session whose statement went out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use super::framing::{Standing, Track};
use crate::cluster::{BackendId, Census, Scope};

/// Encoded in one word for the data path's check: 0 none, 1 everything, `b + 2` a backend.
const NONE: usize = 0;
const EVERYTHING: usize = 1;

fn encode(scope: Option<Scope>) -> usize {
    match scope {
        None => NONE,
        Some(Scope::Everything) => EVERYTHING,
        Some(Scope::Backend(b)) => b.index() + 2,
    }
}

/// One open session, as the census sees it.
struct Entry {
    track: Arc<Track>,
    backend: BackendId,
}

/// Slots of open sessions; a freed slot is reused, so the table never outgrows the peak.
#[derive(Default)]
struct Registry {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
}

/// The data path's pause switch and session census (one per proxy).
pub struct Gate {
    /// The current scope, encoded: read by every session at each new statement.
    scope: AtomicUsize,
    /// The same, for waiting: held statements and held new sessions wake on its changes.
    changes: watch::Sender<Option<Scope>>,
    /// Woken when a session goes quiet or ends while paused: a census may settle.
    settled: Notify,
    /// Open sessions. A std mutex: held for a slot's insert or removal, or one census pass.
    sessions: Mutex<Registry>,
    /// New sessions waiting for the pause to end.
    held_new: AtomicUsize,
    /// Open sessions whose next statement waits for the pause to end.
    held: AtomicUsize,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            scope: AtomicUsize::new(NONE),
            changes: watch::Sender::new(None),
            settled: Notify::new(),
            sessions: Mutex::new(Registry::default()),
            held_new: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
        }
    }
}

/// A session's place in the census; dropping it removes the session.
pub struct Registered<'g> {
    gate: &'g Gate,
    slot: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut reg = self.gate.sessions.lock().unwrap_or_else(|e| e.into_inner());
        reg.slots[self.slot] = None;
        reg.free.push(self.slot);
        drop(reg);
        if self.gate.is_paused() {
            self.gate.settled.notify_waiters();
        }
    }
}

/// A new session counted as held while it waits.
pub struct HeldNew<'g>(&'g Gate);

impl Drop for HeldNew<'_> {
    fn drop(&mut self) {
        self.0.held_new.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open session's statement counted as held.
pub struct HeldStatement<'g>(&'g Gate);

impl Drop for HeldStatement<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    /// Sets (or with `None` ends) the pause. Held statements and sessions look again.
    pub fn set(&self, scope: Option<Scope>) {
        self.scope.store(encode(scope), Ordering::SeqCst);
        self.changes.send_if_modified(|s| std::mem::replace(s, scope) != scope);
        self.settled.notify_waiters();
    }

    pub fn is_paused(&self) -> bool {
        self.scope.load(Ordering::Relaxed) != NONE
    }

    /// Whether a session on `backend` is held now.
    pub fn holds(&self, backend: BackendId) -> bool {
        match self.scope.load(Ordering::SeqCst) {
            NONE => false,
            EVERYTHING => true,
            b => b - 2 == backend.index(),
        }
    }

    /// Waits until the scope changes.
    pub fn watch(&self) -> watch::Receiver<Option<Scope>> {
        self.changes.subscribe()
    }

    /// Sessions held now: statements and new sessions.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed) + self.held_new.load(Ordering::Relaxed)
    }

    /// Counts an open session's statement as held until the guard drops.
    pub fn hold_statement(&self) -> HeldStatement<'_> {
        self.held.fetch_add(1, Ordering::Relaxed);
        HeldStatement(self)
    }

    /// Counts a new session as held until the guard drops.
    pub fn hold_new(&self) -> HeldNew<'_> {
        self.held_new.fetch_add(1, Ordering::Relaxed);
        HeldNew(self)
    }

    /// Adds an open session to the census.
    pub fn register(&self, track: Arc<Track>, backend: BackendId) -> Registered<'_> {
        let mut reg = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = Some(Entry { track, backend });
        let slot = match reg.free.pop() {
            Some(s) => {
                reg.slots[s] = entry;
                s
            }
            None => {
                reg.slots.push(entry);
                reg.slots.len() - 1
            }
        };
        Registered { gate: self, slot }
    }

    /// A session went quiet: a census waiting for it may settle.
    pub fn went_quiet(&self) {
        if self.is_paused() {
            self.settled.notify_waiters();
        }
    }

    /// How the sessions in `scope` stand now.
    pub fn census(&self, scope: Scope) -> Census {
        let mut c = Census { held_new: self.held_new.load(Ordering::Relaxed), ..Census::default() };
        let reg = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for e in reg.slots.iter().flatten() {
            if let Scope::Backend(b) = scope {
                if e.backend != b {
                    continue;
                }
            }
            c.sessions += 1;
            match e.track.standing() {
                Standing::Quiet => {
                    c.quiet += 1;
                    if e.track.is_held() {
                        c.held += 1;
                    }
                }
                Standing::InTransaction => c.in_transaction += 1,
                Standing::Running => c.running += 1,
                Standing::Opaque => c.opaque += 1,
            }
        }
        c
    }

    /// Waits until every readable session in `scope` is quiet, or `deadline`; returns the
    /// last census.
    pub async fn settle(&self, scope: Scope, deadline: tokio::time::Instant) -> Census {
        loop {
            let woken = self.settled.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let c = self.census(scope);
            if c.settled() || tokio::time::Instant::now() >= deadline {
                return c;
            }
            // A wake-up is never missed (enabled before the count); the short bound only
            // guards against a bug, it is not how progress is seen.
            let next = deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(250));
            let _ = tokio::time::timeout_at(next, woken).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_census_counts_sessions_in_scope_by_standing() {
        let gate = Gate::default();
        let quiet = Arc::new(Track::starting());
        quiet.close();
        let running = Arc::new(Track::starting());
        let opaque = Arc::new(Track::opaque());
        let elsewhere = Arc::new(Track::starting());
        let (b0, b1) = (BackendId::new(0), BackendId::new(1));
        let _a = gate.register(quiet.clone(), b0);
        let _b = gate.register(running.clone(), b0);
        let _c = gate.register(opaque, b0);
        let d = gate.register(elsewhere, b1);
        let c = gate.census(Scope::Backend(b0));
        assert_eq!((c.sessions, c.quiet, c.running, c.opaque), (3, 1, 1, 1));
        assert!(!c.settled());
        assert_eq!(gate.census(Scope::Everything).sessions, 4);
        drop(d);
        assert_eq!(gate.census(Scope::Everything).sessions, 3, "a dropped session leaves the census");
        running.close();
        assert!(gate.census(Scope::Backend(b0)).settled(), "opaque sessions are never waited for");
    }

    #[test]
    fn the_scope_says_which_sessions_are_held() {
        let gate = Gate::default();
        let b = BackendId::new;
        assert!(!gate.holds(b(0)));
        gate.set(Some(Scope::Backend(b(1))));
        assert!(gate.holds(b(1)) && !gate.holds(b(0)));
        gate.set(Some(Scope::Everything));
        assert!(gate.holds(b(0)) && gate.holds(b(7)));
        gate.set(None);
        assert!(!gate.holds(b(1)) && !gate.is_paused());
    }

    #[tokio::test]
    async fn settle_returns_when_the_last_session_goes_quiet() {
        let gate = Arc::new(Gate::default());
        let busy = Arc::new(Track::starting());
        let _r = gate.register(busy.clone(), BackendId::new(0));
        gate.set(Some(Scope::Everything));
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.settle(Scope::Everything, tokio::time::Instant::now() + std::time::Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        busy.close();
        gate.went_quiet();
        let c = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("settled in time").expect("task");
        assert!(c.settled() && c.quiet == 1);
    }
}
