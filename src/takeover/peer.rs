//! Who is at the other end of the control socket (`SO_PEERCRED`), and whether it may take
//! part in a takeover. The socket's mode and the state directory's keep other users out; this
//! check holds even when those are wrong (a directory made reachable by hand, an ACL).
//!
//! - The running process hands its sockets only to a process of its own user, or of root
//!   (which could take them anyway).
//! - The new process takes sockets only from a process of its own user: anything else on the
//!   control socket is an impostor that wants to hand it listeners of its choosing.

use std::io;
use std::os::fd::AsFd;

/// The credentials the kernel recorded for the peer when it connected (or listened).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's effective user id: what the rules look at.
    pub uid: u32,
    /// The peer's process id, for the log (0 when the kernel could not map it).
    pub pid: i32,
}

impl Peer {
    /// The peer of a connected unix socket.
    pub fn of(socket: impl AsFd) -> io::Result<Peer> {
        // nix, not rustix: rustix's `UCred` cannot hold the pid 0 the kernel reports for a
        // peer in another pid namespace.
        let cred = nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::PeerCredentials)?;
        Ok(Peer { uid: cred.uid(), pid: cred.pid() })
    }

    /// Whether a process of this peer may take this process's sockets over: the same user,
    /// or root.
    pub fn may_take_over(&self, own_uid: u32) -> bool {
        self.uid == own_uid || self.uid == 0
    }

    /// Whether this process may take sockets from this peer: only the same user.
    pub fn may_hand_over(&self, own_uid: u32) -> bool {
        self.uid == own_uid
    }
}

/// This process's effective user id (the one the kernel reports to peers).
pub fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules() {
        let peer = |uid| Peer { uid, pid: 42 };
        // The running process (uid 1000): its own user and root may take over, nobody else.
        assert!(peer(1000).may_take_over(1000));
        assert!(peer(0).may_take_over(1000));
        assert!(!peer(65534).may_take_over(1000));
        // The new process (uid 1000) takes sockets from its own user only, not even root's.
        assert!(peer(1000).may_hand_over(1000));
        assert!(!peer(0).may_hand_over(1000));
        assert!(!peer(65534).may_hand_over(1000));
        // A process running as root: root's peers only, as either side.
        assert!(peer(0).may_take_over(0) && peer(0).may_hand_over(0));
        assert!(!peer(65534).may_take_over(0) && !peer(65534).may_hand_over(0));
    }

    #[test]
    fn the_kernel_reports_this_process_on_both_ends_of_a_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = Peer::of(&a).unwrap();
        assert_eq!(p.uid, own_uid());
        assert_eq!(p.pid, std::process::id() as i32);
    }
}
