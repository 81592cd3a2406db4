//! Restarts and upgrades without a refused connection.
//!
//! - **The state lock.** A process runs its health monitor only while it holds an exclusive
//!   `flock` on `<state_dir>/pgfailover.lock`, so two processes sharing a state directory
//!   never both decide (or promote).
//! - **Takeover.** A running process listens on `<state_dir>/pgfailover.sock`. A new process
//!   started with the same `state_dir` connects, receives the listening sockets themselves
//!   (`SCM_RIGHTS`), says it is ready and starts accepting on them; the old process stops
//!   accepting and stops its monitor, releases the lock and says so; the new one takes the
//!   lock, reads the history (fences included) and starts its monitor. The sockets never
//!   close, so a connection arriving meanwhile waits in their queue: none is refused or reset.
//!   (A second bind with `SO_REUSEPORT` would give each process its own queue, and closing the
//!   old one resets every connection still queued on it.)
//! - **Socket activation.** Listening sockets inherited from systemd (`LISTEN_FDS`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The exclusive right to run the monitor on a state directory; released when dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("pgfailover.lock")
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("pgfailover.sock")
}

impl StateLock {
    /// Takes the lock if nobody holds it.
    pub fn try_take(dir: &Path) -> io::Result<Option<StateLock>> {
        let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(lock_path(dir))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(None) } else { Err(e) };
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

/// Listening sockets handed to this process (by systemd or by the process it takes over
/// from), found by the address they are bound to.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Address, descriptor and, from a takeover, the key it served (`listen`, ...).
    sockets: Vec<(SocketAddr, OwnedFd, Option<String>)>,
    /// Where they came from, for messages.
    pub source: &'static str,
}

impl Inherited {
    /// Sockets from systemd socket activation (`LISTEN_PID` is this process, `LISTEN_FDS`
    /// descriptors from 3 on). The variables are removed, so a child does not take them too.
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
            // SAFETY: systemd passed these descriptors to this process, for it to own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: as above; marks it close-on-exec so a child does not inherit it.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            let addr = socket2::SockRef::from(&fd).local_addr()?.as_socket();
            match addr {
                Some(a) => sockets.push((a, fd, None)),
                None => return Err(io::Error::new(io::ErrorKind::InvalidInput, "an inherited socket (LISTEN_FDS) is not a TCP socket")),
            }
        }
        Ok(Inherited { sockets, source: "systemd" })
    }

    fn from_fds(fds: Vec<OwnedFd>, keys: &[&str], source: &'static str) -> io::Result<Inherited> {
        let mut sockets = Vec::new();
        for (i, fd) in fds.into_iter().enumerate() {
            if let Some(a) = socket2::SockRef::from(&fd).local_addr()?.as_socket() {
                sockets.push((a, fd, keys.get(i).map(|k| k.to_string())));
            }
        }
        Ok(Inherited { sockets, source })
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Adds `other`'s sockets after these (these are taken first).
    pub fn merge(&mut self, other: Inherited) {
        self.sockets.extend(other.sockets);
        if self.source == "systemd" && !other.source.is_empty() {
            self.source = "systemd and the previous process";
        } else if self.source.is_empty() {
            self.source = other.source;
        }
    }

    /// The inherited socket for configuration key `key` at `want` (port 0: any port on that
    /// address), as a listener. A socket handed over for another key is never taken.
    pub fn take(&mut self, want: SocketAddr, key: &str) -> io::Result<Option<tokio::net::TcpListener>> {
        let fits =
            |a: &SocketAddr, k: &Option<String>| a.ip() == want.ip() && (want.port() == 0 || a.port() == want.port()) && k.as_deref().is_none_or(|k| k == key);
        let Some(i) = self.sockets.iter().position(|(a, _, k)| fits(a, k)) else {
            return Ok(None);
        };
        let (_, fd, _) = self.sockets.remove(i);
        let std = std::net::TcpListener::from(fd);
        std.set_nonblocking(true)?;
        Ok(Some(tokio::net::TcpListener::from_std(std)?))
    }

    /// Addresses of the sockets nobody took (closed when this is dropped).
    pub fn leftover(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(a, _, _)| *a).collect()
    }
}

/// How long each step of the handshake may take.
const STEP: Duration = Duration::from_secs(30);

/// What the running process answers while it cannot hand over (a failover in progress, no
/// primary routed): ask again shortly.
pub const BUSY: &str = "BUSY";

/// The new process's side, step one: asks the running process (if any) for its listening
/// sockets. `Ok(None)`: nobody listens on the control socket. An error of kind `WouldBlock`:
/// the running process is busy, ask again.
pub fn request(dir: &Path) -> io::Result<Option<(UnixStream, Inherited, u32)>> {
    let mut s = match UnixStream::connect(socket_path(dir)) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(e),
    };
    s.set_read_timeout(Some(STEP))?;
    s.set_write_timeout(Some(STEP))?;
    s.write_all(format!("TAKEOVER {}\n", std::process::id()).as_bytes())?;
    let (fds, line) = recv_fds(&s)?;
    if line.starts_with(BUSY) {
        return Err(io::Error::new(io::ErrorKind::WouldBlock, line));
    }
    // SOCKETS <pid> <key>,<key>,...: one key per descriptor, in order.
    let mut words = line.split_whitespace();
    let (Some("SOCKETS"), Some(pid), keys) = (words.next(), words.next().and_then(|p| p.parse::<u32>().ok()), words.next().unwrap_or("")) else {
        return Err(bad(&line));
    };
    let keys: Vec<&str> = keys.split(',').collect();
    if fds.is_empty() {
        return Err(bad(&line));
    }
    Ok(Some((s, Inherited::from_fds(fds, &keys, "the previous process")?, pid)))
}

/// Step two: this process is about to accept on the sockets; the old one stops accepting.
pub fn ready(s: &mut UnixStream) -> io::Result<()> {
    s.write_all(b"READY\n")
}

/// Step three: returns once the old process has stopped its monitor and released the state
/// lock (or has gone).
pub fn released(mut s: UnixStream) -> io::Result<()> {
    let mut line = String::new();
    // Releasing waits for the old monitor's last write and its etcd lease: generous.
    s.set_read_timeout(Some(STEP * 2))?;
    match BufReader::new(&mut s).read_line(&mut line) {
        Ok(0) => Ok(()), // gone: the lock tells the rest
        Ok(_) if line.trim() == "RELEASED" => Ok(()),
        Ok(_) => Err(bad(&line)),
        Err(e) => Err(e),
    }
}

/// The old process's side: after `TAKEOVER <pid>`, sends `sockets` (each with its
/// configuration key) and waits for `READY`, or says it is busy (`busy` is asked then).
/// Returns the new process's id and the stream to answer `RELEASED` on.
pub fn serve(mut s: UnixStream, sockets: &[(&str, RawFd)], busy: impl FnOnce() -> Option<String>) -> io::Result<(u32, UnixStream)> {
    s.set_read_timeout(Some(STEP))?;
    s.set_write_timeout(Some(STEP))?;
    let first = read_line(&mut s)?;
    let pid = first.strip_prefix("TAKEOVER ").and_then(|p| p.trim().parse::<u32>().ok()).ok_or_else(|| bad(&first))?;
    if let Some(why) = busy() {
        s.write_all(format!("{BUSY} {why}\n").as_bytes())?;
        return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("asked to hand over while {why}")));
    }
    let keys: Vec<&str> = sockets.iter().map(|(k, _)| *k).collect();
    let fds: Vec<RawFd> = sockets.iter().map(|(_, f)| *f).collect();
    send_fds(&s, &fds, format!("SOCKETS {} {}\n", std::process::id(), keys.join(",")).as_bytes())?;
    let ready = read_line(&mut s)?;
    if ready.trim() != "READY" {
        return Err(bad(&ready));
    }
    Ok((pid, s))
}

pub fn say_released(mut s: UnixStream) -> io::Result<()> {
    s.write_all(b"RELEASED\n")
}

fn bad(line: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected takeover message {line:?}"))
}

/// One line, byte by byte (nothing after it may be consumed: descriptors may follow).
fn read_line(s: &mut UnixStream) -> io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while out.len() < 256 {
        let n = loop {
            match s.read(&mut b) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the other process closed the takeover socket"));
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.push(b[0]);
    }
    Err(bad(&String::from_utf8_lossy(&out)))
}

const MAX_FDS: usize = 8;

fn send_fds(s: &UnixStream, fds: &[RawFd], data: &[u8]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS && !fds.is_empty());
    let bytes = std::mem::size_of_val(fds);
    // u64 words: the control buffer must be aligned for a cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call, and
    // the control buffer (128 bytes) holds CMSG_SPACE of up to MAX_FDS descriptors.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = libc::CMSG_SPACE(bytes as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(c), bytes);
        // Sockets with timeouts are not restarted after a signal handler: retry.
        while libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Receives descriptors and the line sent with them.
fn recv_fds(s: &UnixStream) -> io::Result<(Vec<OwnedFd>, String)> {
    let mut data = [0u8; 256];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut fds = Vec::new();
    // SAFETY: as in send_fds; the kernel writes at most msg_controllen bytes of control data,
    // and every descriptor it passes is new to this process (owned from here on).
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = loop {
            let n = libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 {
                break n;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p = libc::CMSG_DATA(c) as *const RawFd;
                for k in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(k))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        n as usize
    };
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the running process closed the takeover socket"));
    }
    let line = String::from_utf8_lossy(&data[..n]);
    Ok((fds, line.trim_end_matches('\n').to_string()))
}

/// A command that starts `program` as systemd starts a socket-activated service with one
/// socket: `fd` becomes descriptor 3, `LISTEN_FDS=1`, `LISTEN_PID` names the process (a
/// shell sets it to its own pid, then execs). For tests and benchmarks.
pub fn socket_activated(program: &Path, fd: RawFd) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut sh = std::process::Command::new("/bin/sh");
    sh.arg("-c").arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"").arg(program);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        sh.pre_exec(move || {
            if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    sh
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn listener() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn the_handshake_hands_over_each_socket_with_its_key_and_a_connection_queued_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let control = std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap();
        let (client, admin) = (listener(), listener());
        let (client_addr, admin_addr) = (client.local_addr().unwrap(), admin.local_addr().unwrap());
        // A client that connected before the handover waits in the socket's queue.
        let mut queued = std::net::TcpStream::connect(client_addr).unwrap();
        let old = std::thread::spawn(move || {
            let (s, _) = control.accept().unwrap();
            let (pid, s) = serve(s, &[("listen", client.as_raw_fd()), ("admin_listen", admin.as_raw_fd())], || None).unwrap();
            // The old process closes its own copies; the sockets live on in the new one.
            drop((client, admin));
            say_released(s).unwrap();
            pid
        });
        let (mut s, mut got, pid) = request(dir.path()).unwrap().expect("a running process answers");
        assert_eq!(pid, std::process::id());
        ready(&mut s).unwrap();
        released(s).unwrap();
        assert_eq!(old.join().unwrap(), std::process::id());

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // Keys decide, not the order or the address alone: port 0 would fit either.
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            let admin = got.take(any, "admin_listen").unwrap().expect("the admin socket");
            assert_eq!(admin.local_addr().unwrap(), admin_addr);
            assert!(got.take(any, "listen_ro").unwrap().is_none(), "no socket for a key the old process did not have");
            let client = got.take(client_addr, "listen").unwrap().expect("the client socket");
            let (mut conn, _) = client.accept().await.unwrap();
            use std::io::Write;
            queued.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut conn, &mut b).await.unwrap();
            assert_eq!(&b, b"x", "the connection queued before the handover is served by the new process");
        });
        assert!(got.leftover().is_empty());
    }

    #[test]
    fn a_busy_process_says_so_and_keeps_its_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let control = std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap();
        let client = listener();
        let fd = client.as_raw_fd();
        let old = std::thread::spawn(move || {
            let (s, _) = control.accept().unwrap();
            let r = serve(s, &[("listen", fd)], || Some("a failover or switchover is in progress".into()));
            (r.map(|_| ()).unwrap_err().kind(), client)
        });
        let e = request(dir.path()).map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        assert!(e.to_string().contains("failover"), "{e}");
        let (kind, client) = old.join().unwrap();
        assert_eq!(kind, io::ErrorKind::WouldBlock);
        assert!(client.local_addr().is_ok());
    }

    #[test]
    fn nobody_to_take_over_from_and_the_state_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        assert!(request(dir.path()).unwrap().is_none(), "no control socket: start afresh");
        let first = StateLock::try_take(dir.path()).unwrap().expect("free");
        assert!(StateLock::try_take(dir.path()).unwrap().is_none(), "held");
        assert_eq!(StateLock::holder(dir.path()), Some(std::process::id()));
        drop(first);
        assert!(StateLock::try_take(dir.path()).unwrap().is_some(), "released with its holder");
    }
}
