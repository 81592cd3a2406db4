//! The writer thread behind [`History`](super::History): appends, fsyncs, rotates, and
//! replaces the fence file atomically. Everything reaches it through a channel that never
//! blocks the sender.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::{Event, Kept};

/// The event file, and the one it is rotated to.
pub(super) const CURRENT: &str = "history.jsonl";
pub(super) const ROTATED: &str = "history.1.jsonl";
const FENCES: &str = "fences.json";

/// Rotate the event file once it is larger than this (4 MiB: some 10,000 events).
pub const DEFAULT_ROTATE_BYTES: u64 = 4 * 1024 * 1024;

enum Msg {
    Event(String),
    Fences(String),
    Flush(mpsc::SyncSender<()>),
}

/// The sending side; dropping it lets the writer finish what it has and exit.
pub struct Journal {
    tx: mpsc::Sender<Msg>,
}

impl Journal {
    pub(super) fn start(dir: PathBuf, rotate_bytes: u64) -> std::io::Result<Journal> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("pgfailover-journal".into()).spawn(move || Writer { dir, rotate_bytes, file: None }.run(rx))?;
        Ok(Journal { tx })
    }

    pub(super) fn append(&self, e: &Event) {
        if let Ok(line) = serde_json::to_string(e) {
            let _ = self.tx.send(Msg::Event(line));
        }
    }

    pub(super) fn store(&self, kept: &Kept) {
        if let Ok(text) = serde_json::to_string_pretty(kept) {
            let _ = self.tx.send(Msg::Fences(text));
        }
    }

    /// True once everything sent before is written, within `limit`.
    pub(super) fn flush(&self, limit: Duration) -> bool {
        let (ack, done) = mpsc::sync_channel(1);
        self.tx.send(Msg::Flush(ack)).is_ok() && done.recv_timeout(limit).is_ok()
    }
}

/// What a previous run stored, if there is a fence file.
pub(super) fn read_kept(dir: &Path) -> std::io::Result<Option<Kept>> {
    let path = dir.join(FENCES);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match serde_json::from_str::<Kept>(&text) {
        Ok(k) => Ok(Some(k)),
        Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
    }
}

struct Writer {
    dir: PathBuf,
    rotate_bytes: u64,
    /// Opened on first use, so a slow disk delays the writer, never the start-up.
    file: Option<File>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        for msg in rx {
            let result = match msg {
                Msg::Event(line) => self.append(&line),
                Msg::Fences(text) => self.replace_fences(&text),
                Msg::Flush(ack) => {
                    let _ = ack.send(());
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot write the history journal");
                self.file = None;
            }
        }
    }

    fn append(&mut self, line: &str) -> std::io::Result<()> {
        let path = self.dir.join(CURRENT);
        if self.file.is_none() {
            self.file = Some(OpenOptions::new().create(true).append(true).open(&path)?);
        }
        let f = self.file.as_mut().expect("opened above");
        writeln!(f, "{line}")?;
        f.sync_data()?;
        if f.metadata()?.len() > self.rotate_bytes {
            self.file = None;
            std::fs::rename(&path, self.dir.join(ROTATED))?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn replace_fences(&self, text: &str) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{FENCES}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(FENCES))?;
        sync_dir(&self.dir)
    }
}

/// Makes a rename durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
