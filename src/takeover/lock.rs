//! The state lock: a process runs its health monitor only while it holds an exclusive `flock`
//! on `<state_dir>/pgfailover.lock`, so two processes sharing a state directory never both
//! decide (or promote).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};

/// The exclusive right to run the monitor on a state directory; released when dropped.
#[derive(Debug)]
pub struct StateLock {
    /// The locked file: closing it releases the lock.
    _file: File,
}

pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("pgfailover.lock")
}

impl StateLock {
    /// Takes the lock if nobody holds it.
    pub fn try_take(dir: &Path) -> io::Result<Option<StateLock>> {
        use std::os::unix::fs::OpenOptionsExt;
        // The owner's alone, like everything in the state directory, whatever the umask.
        let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).mode(0o600).open(lock_path(dir))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        // For messages only: a full disk must not cost the lock.
        let _ = file.set_len(0).and_then(|_| write!(file, "{}", std::process::id()));
        Ok(Some(StateLock { _file: file }))
    }

    /// The process id the holder wrote (for messages).
    pub fn holder(dir: &Path) -> Option<u32> {
        std::fs::read_to_string(lock_path(dir)).ok()?.trim().parse().ok()
    }

    /// Waits for the lock, checking every 20 ms, logging every 5 s.
    pub async fn take(dir: &Path) -> io::Result<StateLock> {
        let mut waited = Duration::ZERO;
        loop {
            if let Some(l) = StateLock::try_take(dir)? {
                return Ok(l);
            }
            if waited.as_millis() % 5000 == 0 {
                tracing::warn!(holder = ?StateLock::holder(dir), state_dir = %dir.display(), "waiting for the previous process to release the state directory");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::try_take(dir.path()).unwrap().expect("free");
        assert!(StateLock::try_take(dir.path()).unwrap().is_none(), "held");
        assert_eq!(StateLock::holder(dir.path()), Some(std::process::id()));
        drop(first);
        assert!(StateLock::try_take(dir.path()).unwrap().is_some(), "released with its holder");
    }
}
