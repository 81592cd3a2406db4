//! Failover, recovery, fence and split-brain events: bounded in memory, and kept on disk in
//! `state_dir` so a restarted proxy keeps its fences and history.
//!
//! The disk is never on the monitor's path: [`History::push`] updates memory and hands the
//! event to a writer thread (`journal`), so a stalled disk cannot delay a fence or a
//! route change. The writer appends to `history.jsonl` and fsyncs each event, rotates it to
//! `history.1.jsonl` past a size cap, and keeps the current fences in `fences.json`
//! (replaced atomically), so fences survive a restart however long the history grows.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::{Fence, FenceKind};

mod journal;

pub use super::event::{Event, EventKind};
pub use journal::{Journal, DEFAULT_ROTATE_BYTES};

/// Kept in memory (and read back at start); older events stay only in the files.
pub const MEMORY_CAP: usize = 1000;

/// Backend name → its fence, as stored in `fences.json`.
pub type Fences = BTreeMap<String, Fence>;

/// What must survive a restart besides the events: the fences, and the backends a
/// switchover left read-only (made writable again once they are the primary).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Kept {
    pub fences: Fences,
    #[serde(default)]
    pub read_only: std::collections::BTreeSet<String>,
    /// Maintenance mode, while on (it must outlive a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<crate::cluster::Maintenance>,
}

/// The event store: memory plus the optional journal.
pub struct History {
    events: VecDeque<Event>,
    journal: Option<Journal>,
    /// As restored at start, then as last handed to the journal.
    kept: Kept,
}

impl History {
    pub fn in_memory() -> History {
        History { events: VecDeque::new(), journal: None, kept: Kept::default() }
    }

    /// Opens `dir` (creating it), loads the newest events and the fences, and starts the
    /// writer. Unreadable lines are skipped with a warning rather than refusing to start.
    pub fn open(dir: &Path) -> std::io::Result<History> {
        Self::open_with(dir, DEFAULT_ROTATE_BYTES)
    }

    /// Reads what [`open`](Self::open) reads, without starting anything: whether this
    /// process can open the journal (before it takes over from another one).
    pub fn check(dir: &Path) -> std::io::Result<()> {
        let mut events = VecDeque::new();
        for name in [journal::ROTATED, journal::CURRENT] {
            read_events(&dir.join(name), &mut events)?;
        }
        journal::read_kept(dir).map(|_| ())
    }

    /// As [`open`](Self::open), rotating the event file past `rotate_bytes`.
    pub fn open_with(dir: &Path, rotate_bytes: u64) -> std::io::Result<History> {
        std::fs::create_dir_all(dir)?;
        let mut events = VecDeque::new();
        for name in [journal::ROTATED, journal::CURRENT] {
            read_events(&dir.join(name), &mut events)?;
        }
        let kept = match journal::read_kept(dir)? {
            Some(k) => k,
            // No fence file yet (a journal from an older version): replay the events.
            None => Kept { fences: replay_fences(&events), ..Kept::default() },
        };
        let journal = Journal::start(dir.to_path_buf(), rotate_bytes)?;
        Ok(History { events, journal: Some(journal), kept })
    }

    /// Fences restored at start.
    pub fn fences(&self) -> Fences {
        self.kept.fences.clone()
    }

    /// Backends a switchover left read-only, as restored at start.
    pub fn read_only(&self) -> std::collections::BTreeSet<String> {
        self.kept.read_only.clone()
    }

    /// Maintenance mode as restored at start.
    pub fn maintenance(&self) -> Option<crate::cluster::Maintenance> {
        self.kept.maintenance.clone()
    }

    /// Records an event: memory now, disk in the background.
    pub fn push(&mut self, e: Event) {
        if let Some(j) = &self.journal {
            j.append(&e);
        }
        self.events.push_back(e);
        if self.events.len() > MEMORY_CAP {
            self.events.pop_front();
        }
    }

    /// Stores the current fences (in the background) when they changed.
    pub fn set_fences(&mut self, fences: Fences) {
        let kept = Kept { fences, read_only: self.kept.read_only.clone(), maintenance: self.kept.maintenance.clone() };
        self.set_kept(kept);
    }

    /// Stores the fences and the read-only leftovers (in the background) when they changed.
    pub fn set_kept(&mut self, kept: Kept) {
        if kept != self.kept {
            if let Some(j) = &self.journal {
                j.store(&kept);
            }
            self.kept = kept;
        }
    }

    /// Waits (bounded) until everything handed to the writer is on disk.
    pub fn flush(&self, limit: Duration) -> bool {
        self.journal.as_ref().is_none_or(|j| j.flush(limit))
    }

    /// Newest first.
    pub fn newest(&self, limit: usize) -> Vec<Event> {
        self.events.iter().rev().take(limit).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

fn read_events(path: &Path, events: &mut VecDeque<Event>) -> std::io::Result<()> {
    let Ok(f) = File::open(path) else { return Ok(()) };
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(&line) {
            Ok(e) => {
                events.push_back(e);
                if events.len() > MEMORY_CAP {
                    events.pop_front();
                }
            }
            Err(e) => tracing::warn!(file = %path.display(), line = n + 1, error = %e, "skipping unreadable history line"),
        }
    }
    Ok(())
}

/// Fences according to fence/unfence/split-brain events.
fn replay_fences(events: &VecDeque<Event>) -> Fences {
    let mut set = Fences::new();
    for e in events {
        let Some(n) = &e.from else { continue };
        match e.kind {
            EventKind::Fence | EventKind::SplitBrain => {
                set.insert(n.clone(), Fence::new(FenceKind::Unreachable, e.reason.clone()));
            }
            EventKind::Unfence => {
                set.remove(n);
            }
            _ => {}
        }
    }
    set
}

#[cfg(test)]
mod tests;
