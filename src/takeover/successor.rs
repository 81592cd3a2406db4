//! Starting the process that takes over: a fresh copy of this binary with the same
//! arguments. It takes the listening sockets and the monitor over through the state
//! directory, and this process then drains and exits; if it fails first, this one carries on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Starts successors, one at a time.
#[derive(Debug)]
pub struct Successor {
    /// This process's executable, captured at the start: after an upgrade the path names
    /// the new binary. `None`: not found (no takeover then).
    exe: Option<PathBuf>,
    /// Set while a successor runs: a second signal meanwhile starts no other.
    running: Arc<AtomicBool>,
}

impl Successor {
    /// Remembers this process's executable; call it at the start.
    pub fn of_this_process() -> Successor {
        let exe = std::env::current_exe().ok().map(|p| PathBuf::from(p.to_string_lossy().trim_end_matches(" (deleted)")));
        Successor { exe, running: Arc::default() }
    }

    /// Starts a fresh copy of this binary with the same arguments (`why` is for the log),
    /// unless one is starting already.
    pub fn spawn(&self, why: &str) {
        let Some(exe) = &self.exe else {
            tracing::error!("cannot find this process's executable; no takeover");
            return;
        };
        // One at a time: a second signal while a new process is starting changes nothing.
        if self.running.swap(true, Ordering::SeqCst) {
            tracing::warn!(why, "a new process is already starting to take over; not starting another");
            return;
        }
        let running = self.running.clone();
        let mut cmd = std::process::Command::new(exe);
        cmd.args(std::env::args_os().skip(1)).stdin(std::process::Stdio::null());
        match cmd.spawn() {
            Ok(mut child) => {
                let pid = child.id();
                tracing::warn!(pid, exe = %exe.display(), why, "started a new process to take over");
                std::thread::spawn(move || {
                    if let Ok(status) = child.wait() {
                        tracing::warn!(pid, %status, "the new process exited");
                    }
                    running.store(false, Ordering::SeqCst);
                });
            }
            Err(e) => {
                running.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, exe = %exe.display(), "could not start a new process to take over");
            }
        }
    }
}

/// Whether process `pid` still exists (signal 0 only asks).
pub fn alive(pid: u32) -> bool {
    let pid = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw);
    pid.is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}
