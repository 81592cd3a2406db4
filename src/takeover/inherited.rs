//! Listening sockets handed to this process, by systemd (socket activation) or by the
//! process it takes over from, found again by the address and key they serve.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

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
    /// Sockets from systemd (no key: any configuration key whose address fits takes one).
    pub(super) fn from_systemd_fds(sockets: Vec<(SocketAddr, OwnedFd)>) -> Inherited {
        Inherited { sockets: sockets.into_iter().map(|(a, fd)| (a, fd, None)).collect(), source: "systemd" }
    }

    /// Sockets from the previous process: `keys[i]` is the key descriptor `i` served.
    pub(super) fn from_fds(fds: Vec<OwnedFd>, keys: &[&str], source: &'static str) -> io::Result<Inherited> {
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
