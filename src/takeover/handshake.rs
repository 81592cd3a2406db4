//! The takeover handshake over `<state_dir>/pgfailover.sock`, both sides, blocking:
//!
//! ```text
//! new process                              running process
//! TAKEOVER <pid>                  ->
//!                                 <-       SOCKETS <pid> <key>,<key>,...  (+ the descriptors)
//!                                          or BUSY <why>: ask again shortly
//! READY (accepting from now on)   ->
//!                                          stops accepting and its monitor, releases the lock
//!                                 <-       RELEASED
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fd_passing::{recv_fds, send_fds};
use super::peer::{own_uid, Peer};
use super::Inherited;

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("pgfailover.sock")
}

/// How long each step of the handshake may take.
const STEP: Duration = Duration::from_secs(30);

/// What the running process answers while it cannot hand over (a failover in progress, no
/// primary routed): ask again shortly.
pub const BUSY: &str = "BUSY";

/// The new process's side, step one: asks the running process (if any) for its listening
/// sockets. `Ok(None)`: nobody listens on the control socket. An error of kind `WouldBlock`:
/// the running process is busy, ask again. A listener of another user is refused (kind
/// `PermissionDenied`) before a word is said to it.
pub fn request(dir: &Path) -> io::Result<Option<(UnixStream, Inherited, u32)>> {
    let path = socket_path(dir);
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(e),
    };
    let peer = Peer::of(&s)?;
    if !peer.may_hand_over(own_uid()) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the process listening on {} runs as uid {} (pid {}), not as this process's user (uid {}): refusing to take sockets from it; \
                 find out who put it there (the state directory must be this user's alone)",
                path.display(),
                peer.uid,
                peer.pid,
                own_uid()
            ),
        ));
    }
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
pub fn serve(mut s: UnixStream, sockets: &[(&str, BorrowedFd<'_>)], busy: impl FnOnce() -> Option<String>) -> io::Result<(u32, UnixStream)> {
    s.set_read_timeout(Some(STEP))?;
    s.set_write_timeout(Some(STEP))?;
    let first = read_line(&mut s)?;
    let pid = first.strip_prefix("TAKEOVER ").and_then(|p| p.trim().parse::<u32>().ok()).ok_or_else(|| bad(&first))?;
    if let Some(why) = busy() {
        s.write_all(format!("{BUSY} {why}\n").as_bytes())?;
        return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("asked to hand over while {why}")));
    }
    let keys: Vec<&str> = sockets.iter().map(|(k, _)| *k).collect();
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, f)| *f).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::os::fd::AsFd;

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
            let (pid, s) = serve(s, &[("listen", client.as_fd()), ("admin_listen", admin.as_fd())], || None).unwrap();
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
        let old = std::thread::spawn(move || {
            let (s, _) = control.accept().unwrap();
            let r = serve(s, &[("listen", client.as_fd())], || Some("a failover or switchover is in progress".into()));
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
    fn nobody_to_take_over_from() {
        let dir = tempfile::tempdir().unwrap();
        assert!(request(dir.path()).unwrap().is_none(), "no control socket: start afresh");
    }
}
