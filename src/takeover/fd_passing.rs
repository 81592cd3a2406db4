//! Descriptors over a unix socket (`SCM_RIGHTS`), each message with one line of text.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::io::Errno;
use rustix::net::{recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// The most descriptors one message carries (the three listeners fit).
pub(super) const MAX_FDS: usize = 8;

/// Sends `fds` (1 to [`MAX_FDS`]) with `data`.
pub(super) fn send_fds(s: &UnixStream, fds: &[BorrowedFd<'_>], data: &[u8]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS && !fds.is_empty());
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    // Sockets with timeouts are not restarted after a signal handler: retry.
    loop {
        match sendmsg(s, &[IoSlice::new(data)], &mut control, SendFlags::NOSIGNAL) {
            Err(Errno::INTR) => continue,
            r => return r.map(|_| ()).map_err(io::Error::from),
        }
    }
}

/// Receives descriptors and the line sent with them.
pub(super) fn recv_fds(s: &UnixStream) -> io::Result<(Vec<OwnedFd>, String)> {
    let mut data = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = loop {
        // Close-on-exec: a successor started later must not inherit them by accident.
        match recvmsg(s, &mut [IoSliceMut::new(&mut data)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(Errno::INTR) => continue,
            r => break r?.bytes,
        }
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the running process closed the takeover socket"));
    }
    let line = String::from_utf8_lossy(&data[..n.min(data.len())]);
    Ok((fds, line.trim_end_matches('\n').to_string()))
}
