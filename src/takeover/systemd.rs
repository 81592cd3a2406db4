//! systemd's side of a service's life: the listening sockets it passes (`LISTEN_FDS`), the
//! notifications it listens for (`NOTIFY_SOCKET`), and, for the tests and benchmarks
//! (`testkit`), starting a program the way a socket unit does.
//!
//! The one module of the crate allowed `unsafe`: a descriptor that arrives across an `exec`
//! has no owner the compiler can see, so claiming it (and placing one at a fixed number in a
//! child) is the caller's promise.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::Inherited;

impl Inherited {
    /// Sockets from systemd socket activation (`LISTEN_PID` is this process, `LISTEN_FDS`
    /// descriptors from 3 on). The variables are removed, so a child does not take them too.
    /// Call it first, before anything else opens a descriptor.
    pub fn from_systemd() -> io::Result<Inherited> {
        let pid = std::env::var("LISTEN_PID").ok();
        let n = std::env::var("LISTEN_FDS").ok();
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
        let (Some(pid), Some(n)) = (pid, n) else { return Ok(Inherited::default()) };
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(Inherited::default());
        }
        let n: RawFd = n.trim().parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("LISTEN_FDS is not a number: {n:?}")))?;
        let mut sockets = Vec::new();
        for fd in 3..3 + n {
            // SAFETY: systemd passed descriptors 3..3+LISTEN_FDS to this process (LISTEN_PID
            // says so) for it to own, and nothing else in this process claims them: the
            // variables are gone, and this runs once, before anything opens a descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // Close-on-exec, so a child (a successor started later) does not inherit it.
            let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
            let addr = socket2::SockRef::from(&fd).local_addr()?.as_socket();
            match addr {
                Some(a) => sockets.push((a, fd)),
                None => return Err(io::Error::new(io::ErrorKind::InvalidInput, "an inherited socket (LISTEN_FDS) is not a TCP socket")),
            }
        }
        Ok(Inherited::from_systemd_fds(sockets))
    }
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) something, when it is listening.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "could not notify systemd");
    }
}

/// A command that starts `program` as systemd starts a socket-activated service with one
/// socket: `fd` becomes descriptor 3, `LISTEN_FDS=1`, `LISTEN_PID` names the process (a
/// shell sets it to its own pid, then execs). For tests and benchmarks.
#[cfg(feature = "testkit")]
pub fn socket_activated(program: &Path, fd: RawFd) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut sh = std::process::Command::new("/bin/sh");
    sh.arg("-c").arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"").arg(program);
    let place = move || {
        if fd == 3 {
            // SAFETY: fcntl is async-signal-safe and changes only this forked child's
            // descriptor 3 (the caller's socket already): it survives the exec.
            unsafe { libc::fcntl(3, libc::F_SETFD, 0) };
        } else {
            // SAFETY: dup2 is async-signal-safe and changes only this forked child's
            // descriptor table; `fd` is the caller's open socket, inherited by the fork.
            if unsafe { libc::dup2(fd, 3) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: `place` runs between fork and exec and makes only async-signal-safe calls (no
    // allocation, no lock: `io::Error::last_os_error` reads errno into a plain value).
    unsafe { sh.pre_exec(place) };
    sh
}
