//! Failover, recovery, fence and split-brain events: bounded in memory, and appended to a
//! JSON-lines journal in `state_dir` so a restarted proxy keeps its fences and history.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Kept in memory; older events stay only in the journal.
pub const MEMORY_CAP: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Failover,
    FailoverFailed,
    Recovery,
    Fence,
    Unfence,
    SplitBrain,
}

/// One entry of `/failover/history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// RFC 3339.
    pub time: String,
    pub kind: EventKind,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: String,
    /// "automatic", "external" (another manager promoted), or "manual:<who>".
    pub trigger: String,
    pub duration_ms: Option<u64>,
    /// WAL between the old primary's last seen position and the promoted standby's: the
    /// window of writes that may be lost.
    pub wal_distance_bytes: Option<u64>,
}

/// The event store: memory plus the optional journal.
pub struct History {
    events: VecDeque<Event>,
    journal: Option<(PathBuf, File)>,
}

impl History {
    pub fn in_memory() -> History {
        History { events: VecDeque::new(), journal: None }
    }

    /// Opens (creating) `dir/history.jsonl` and loads what it holds. Unreadable lines are
    /// skipped with a warning rather than refusing to start.
    pub fn open(dir: &Path) -> std::io::Result<History> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("history.jsonl");
        let mut events = VecDeque::new();
        if let Ok(f) = File::open(&path) {
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
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(History { events, journal: Some((path, file)) })
    }

    /// Backends fenced according to the journal: replaying fence/unfence/split-brain events.
    pub fn fenced(&self) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        for e in &self.events {
            match e.kind {
                EventKind::Fence | EventKind::SplitBrain => {
                    if let Some(n) = &e.from {
                        set.insert(n.clone());
                    }
                }
                EventKind::Unfence => {
                    if let Some(n) = &e.from {
                        set.remove(n);
                    }
                }
                _ => {}
            }
        }
        set
    }

    pub fn push(&mut self, e: Event) {
        if let Some((path, file)) = &mut self.journal {
            let line = serde_json::to_string(&e).unwrap_or_default();
            if let Err(err) = writeln!(file, "{line}").and_then(|_| file.flush()) {
                tracing::error!(file = %path.display(), error = %err, "cannot append to the history journal");
            }
        }
        self.events.push_back(e);
        if self.events.len() > MEMORY_CAP {
            self.events.pop_front();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, from: &str) -> Event {
        Event { time: "2026-01-01T00:00:00Z".into(), kind, from: Some(from.into()), to: None, reason: "r".into(), trigger: "automatic".into(), duration_ms: None, wal_distance_bytes: None }
    }

    #[test]
    fn journal_survives_reopen_and_replays_fences() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut h = History::open(dir.path()).unwrap();
            h.push(ev(EventKind::Fence, "pg-a"));
            h.push(ev(EventKind::Fence, "pg-c"));
            h.push(ev(EventKind::Unfence, "pg-c"));
        }
        std::fs::OpenOptions::new().append(true).open(dir.path().join("history.jsonl")).unwrap().write_all(b"{garbage\n").unwrap();
        let h = History::open(dir.path()).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h.fenced().into_iter().collect::<Vec<_>>(), ["pg-a"]);
        assert_eq!(h.newest(1)[0].kind, EventKind::Unfence);
    }
}
