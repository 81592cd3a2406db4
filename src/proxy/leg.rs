//! How a session reaches its server: a [`Leg`] connects and may adjust the server's first
//! message. [`Plain`] is a TCP connection (the client's own TLS, if any, passes through it);
//! a terminated session's leg opens the proxy's own TLS (see [`super::terminate::server`]).

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::datapath::DataPath;
use super::socket;
use crate::cluster::BackendId;

/// How the proxy reaches a server for one session.
pub trait Leg: Sync {
    /// The connection to the server.
    type Server: AsyncRead + AsyncWrite + Unpin + Send;
    /// Connects to `backend`, ready for the client's startup packet.
    fn connect<'a>(&'a self, dp: &'a DataPath, backend: BackendId) -> impl Future<Output = std::io::Result<Self::Server>> + Send + 'a;
    /// Whether the server's whole first message is read before the client sees it, to pass it
    /// through [`adjust_first`](Self::adjust_first).
    fn whole_first(&self) -> bool {
        false
    }
    /// Changes the server's first message (a whole one, when [`whole_first`](Self::whole_first)).
    fn adjust_first(&self, _first: &mut Vec<u8>) {}
}

/// A plain TCP connection: the client's own TLS, if any, passes through it.
pub struct Plain;

impl Leg for Plain {
    type Server = TcpStream;
    async fn connect(&self, dp: &DataPath, backend: BackendId) -> std::io::Result<TcpStream> {
        socket::connect(dp.backend(backend), &dp.config().proxy).await
    }
}
