//! Process plumbing for local clusters: signals, `/proc` scans, ownership.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

pub type Pid = i32;

/// Gives a path to the `postgres` OS user (we are root; the server must own its files).
pub fn chown_to_postgres(path: &Path) -> Result<(), String> {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer into static storage or NULL; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("no such user: postgres (create it with `useradd --system postgres`)".into());
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))
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

pub fn signal(pid: Pid, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a PID we started (read from the cluster's own postmaster.pid).
    unsafe {
        libc::kill(pid, sig);
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

/// A process's title (`/proc/<pid>/cmdline`, which PostgreSQL rewrites to e.g.
/// "postgres: startup recovering 0000000100000000000000A3").
pub fn title(pid: Pid) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string())
}

/// SIGSTOP the postmaster first (so it forks nothing new), then every child.
pub fn stop_tree(pm: Pid) {
    signal(pm, libc::SIGSTOP);
    for c in children(pm) {
        signal(c, libc::SIGSTOP);
    }
}

/// SIGCONT the children, then the postmaster.
pub fn resume_tree(pm: Pid) {
    for c in children(pm) {
        signal(c, libc::SIGCONT);
    }
    signal(pm, libc::SIGCONT);
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
