//! The proxy's own connection to a server for a terminated session: TCP, then `SSLRequest` and
//! the TLS handshake as the backend's `sslmode` says (`prefer` goes on in clear when the
//! server answers `N`; `require` and stricter fail the connect, and the client is held and
//! retried like on any failed connect).

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::cluster::BackendId;
use crate::config::ServerSslMode;
use crate::proxy::datapath::DataPath;
use crate::proxy::leg::{Leg, Plain};
use crate::proxy::socket;
use crate::proxy::stream::Stream;
use crate::proxy::wire::SSL_REQUEST;
use crate::tls::Material;

use super::sasl;

/// The server's connection, in clear or in the proxy's TLS.
pub type ServerStream = Stream<TcpStream, Box<TlsStream<TcpStream>>>;

/// The servers as a terminated session reaches them, with the TLS material in force when the
/// session began.
pub struct ServerLeg {
    pub material: Arc<Material>,
}

impl Leg for ServerLeg {
    type Server = ServerStream;

    async fn connect(&self, dp: &DataPath, backend: BackendId) -> io::Result<ServerStream> {
        let proxy = dp.config().proxy.clone();
        let tcp = socket::connect(dp.backend(backend), &proxy).await?;
        match self.material.servers.get(backend.index()).cloned().flatten() {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => {
                let bound = tokio::time::timeout(proxy.connect_timeout, encrypt(tcp, &tls)).await;
                bound.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake with the server timed out")))
            }
        }
    }

    fn whole_first(&self) -> bool {
        true
    }

    fn adjust_first(&self, first: &mut Vec<u8>) {
        sasl::withhold_channel_binding(first);
    }
}

impl ServerLeg {
    /// A connection in clear, whatever the `sslmode` (see [`super::auth`]: SCRAM from a client that
    /// supports channel binding under `prefer`).
    pub async fn connect_plain(dp: &DataPath, backend: BackendId) -> io::Result<ServerStream> {
        Plain.connect(dp, backend).await.map(Stream::Plain)
    }
}

/// Asks the server for TLS and does the handshake; `prefer` goes on in clear on `N`.
async fn encrypt(mut tcp: TcpStream, tls: &crate::tls::ServerTls) -> io::Result<ServerStream> {
    let mut request = Vec::with_capacity(8);
    request.extend_from_slice(&8u32.to_be_bytes());
    request.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let s = tls.connector.connect(tls.name.clone(), tcp).await.map_err(|e| io::Error::new(e.kind(), format!("TLS to the server failed: {e}")))?;
            Ok(Stream::Tls(Box::new(s)))
        }
        b'N' if tls.mode == ServerSslMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(io::Error::other(format!("the server does not accept TLS, and server_sslmode = \"{}\" requires it", tls.mode.as_str()))),
        other => Err(io::Error::other(format!("the server answered the SSLRequest with {:?} instead of S or N", other as char))),
    }
}
