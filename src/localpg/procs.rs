//! Process plumbing for local clusters: signals, `/proc` scans, ownership.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

pub type Pid = i32;

/// Whether this process runs as root (`initdb` refuses to).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Gives a path to the `postgres` OS user (we are root; the server must own its files).
pub fn chown_to_postgres(path: &Path) -> Result<(), String> {
    let missing = || "no such user: postgres (create it with `useradd --system postgres`)".to_string();
    let pw = nix::unistd::User::from_name("postgres").map_err(|_| missing())?.ok_or_else(missing)?;
    std::os::unix::fs::chown(path, Some(pw.uid.as_raw()), Some(pw.gid.as_raw())).map_err(|e| format!("chown {}: {e}", path.display()))
}

/// `(state, ppid)` from `/proc/<pid>/stat`; `None` when the process is gone.
fn stat(pid: Pid) -> Option<(char, Pid)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; the fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Alive and not a zombie (orphans are reaped lazily on these machines).
pub fn alive(pid: Pid) -> bool {
    matches!(stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// Sends `sig` to `pid` (one we started: read from the cluster's own `postmaster.pid`);
/// a process already gone is no error.
pub fn signal(pid: Pid, sig: Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Direct children of `pid` (every PostgreSQL backend is a child of the postmaster).
pub fn children(pid: Pid) -> Vec<Pid> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<Pid>().ok())
        .filter(|c| matches!(stat(*c), Some((_, ppid)) if ppid == pid))
        .collect()
}

#[cfg(feature = "testkit")]
/// A process's title (`/proc/<pid>/cmdline`, which PostgreSQL rewrites to e.g.
/// "postgres: startup recovering 0000000100000000000000A3").
pub fn title(pid: Pid) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string())
}

#[cfg(feature = "testkit")]
/// SIGSTOP the postmaster first (so it forks nothing new), then every child.
pub fn stop_tree(pm: Pid) {
    signal(pm, Signal::STOP);
    for c in children(pm) {
        signal(c, Signal::STOP);
    }
}

/// SIGCONT the children, then the postmaster.
pub fn resume_tree(pm: Pid) {
    for c in children(pm) {
        signal(c, Signal::CONT);
    }
    signal(pm, Signal::CONT);
}

/// Polls `/proc` until `pid` is gone or a zombie.
pub fn wait_gone(pid: Pid, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}
