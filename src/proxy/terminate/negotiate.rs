//! The client's side of a terminated session, up to its StartupMessage: `SSLRequest` is
//! answered `S` and the handshake done with the proxy's certificate; a direct-TLS ClientHello
//! (PostgreSQL 17) is accepted on the same port when it negotiates ALPN `postgresql`, and
//! closed after the handshake otherwise, as PostgreSQL does; `GSSENCRequest` gets `N`; a
//! client in clear is served, or refused with a FATAL 28000 when `require_client_tls`.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::proxy::stream::{Prefixed, Stream};
use crate::proxy::wire::{self, Packet, CANCEL_REQUEST, GSSENC_REQUEST, SSL_REQUEST};
use crate::tls::ALPN_POSTGRESQL;

/// The client's connection, in clear or in the proxy's TLS.
pub type ClientStream = Stream<TcpStream, Box<TlsStream<Prefixed<TcpStream>>>>;

/// SQLSTATE "invalid_authorization_specification", as PostgreSQL answers a client that
/// `pg_hba.conf` admits only over TLS.
pub const SQLSTATE_INVALID_AUTHORIZATION: &str = "28000";

/// Why no StartupMessage came through.
pub enum Refusal {
    /// The client went away, was too slow, or its handshake failed (logged at debug).
    Gone(String),
    /// A length no startup packet has.
    Invalid(u32),
    /// Answered with a FATAL (TLS required); the reason is logged.
    Refused(String),
}

/// Reads the client's packets until its StartupMessage (or CancelRequest), answering the
/// encryption requests, all before `deadline`.
pub async fn client(tcp: TcpStream, acceptor: &TlsAcceptor, require_tls: bool, deadline: Instant) -> Result<(ClientStream, Packet), Refusal> {
    match tokio::time::timeout_at(deadline, negotiate(tcp, acceptor, require_tls, deadline)).await {
        Ok(r) => r,
        Err(_) => Err(Refusal::Gone("the client's startup took longer than proxy.startup_timeout".into())),
    }
}

async fn negotiate(mut tcp: TcpStream, acceptor: &TlsAcceptor, require_tls: bool, deadline: Instant) -> Result<(ClientStream, Packet), Refusal> {
    loop {
        let packet = read(&mut tcp).await?;
        match packet {
            Packet::Invalid(len) => return Err(Refusal::Invalid(len)),
            Packet::Untyped { code: GSSENC_REQUEST, .. } => write(&mut tcp, b"N").await?,
            Packet::Untyped { code: SSL_REQUEST, .. } => {
                write(&mut tcp, b"S").await?;
                let tls = handshake(acceptor, Prefixed::new(Vec::new(), tcp)).await?;
                return in_tls(tls).await;
            }
            Packet::Opaque(head) => {
                let tls = handshake(acceptor, Prefixed::new(head, tcp)).await?;
                // PostgreSQL 17 accepts direct TLS only with its ALPN, and closes the
                // connection after the handshake otherwise (a client that offered other
                // protocols only was refused by the handshake itself).
                if tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
                    return Err(Refusal::Gone("a direct TLS connection without ALPN \"postgresql\" (as PostgreSQL 17, closed)".into()));
                }
                return in_tls(tls).await;
            }
            // libpq before 17 always sends its CancelRequests in clear, whatever the sslmode.
            Packet::Untyped { code: CANCEL_REQUEST, .. } => return Ok((Stream::Plain(tcp), packet)),
            Packet::Untyped { .. } if require_tls => {
                let why = "connection requires TLS: pgfailover has tls.require_client_tls = true; connect with sslmode=require (or verify-ca, verify-full)";
                wire::refuse(&mut tcp, Some(packet), SQLSTATE_INVALID_AUTHORIZATION, why, deadline).await;
                return Err(Refusal::Refused(why.into()));
            }
            Packet::Untyped { .. } => return Ok((Stream::Plain(tcp), packet)),
        }
    }
}

/// The first packet inside TLS: a StartupMessage or a CancelRequest (libpq 17 may encrypt
/// its cancels). Another encryption request there is a protocol violation.
async fn in_tls(mut tls: TlsStream<Prefixed<TcpStream>>) -> Result<(ClientStream, Packet), Refusal> {
    match read(&mut tls).await? {
        Packet::Invalid(len) => Err(Refusal::Invalid(len)),
        Packet::Untyped { code: SSL_REQUEST | GSSENC_REQUEST, .. } | Packet::Opaque(_) => {
            Err(Refusal::Gone("an encryption request inside TLS (PostgreSQL closes such a connection)".into()))
        }
        p => Ok((Stream::Tls(Box::new(tls)), p)),
    }
}

/// A TLS alert record, in clear before any ServerHello: fatal (2), `no_application_protocol`
/// (120). What PostgreSQL 17 (OpenSSL) answers a ClientHello whose ALPN list lacks its own.
const NO_APPLICATION_PROTOCOL: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 120];

/// The handshake with the proxy's certificate. A client that offers ALPN protocols but not
/// `postgresql` gets the `no_application_protocol` alert at once, before the ServerHello, as
/// from PostgreSQL (rustls would find out only after it, and its alert is not sure to leave).
async fn handshake(acceptor: &TlsAcceptor, stream: Prefixed<TcpStream>) -> Result<TlsStream<Prefixed<TcpStream>>, Refusal> {
    let failed = |e: std::io::Error| Refusal::Gone(format!("TLS handshake failed: {e}"));
    let mut start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await.map_err(failed)?;
    if start.client_hello().alpn().is_some_and(|mut offered| !offered.any(|p| p == ALPN_POSTGRESQL)) {
        let _ = start.io.write_all(&NO_APPLICATION_PROTOCOL).await;
        return Err(Refusal::Gone("a ClientHello whose ALPN list lacks \"postgresql\" (no_application_protocol, as PostgreSQL 17)".into()));
    }
    start.into_stream(acceptor.config().clone()).await.map_err(failed)
}

async fn read<C: tokio::io::AsyncRead + Unpin>(c: &mut C) -> Result<Packet, Refusal> {
    match wire::read_packet(c).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(Refusal::Gone("the client closed the connection".into())),
        Err(e) => Err(Refusal::Gone(e.to_string())),
    }
}

async fn write(tcp: &mut TcpStream, b: &[u8]) -> Result<(), Refusal> {
    tcp.write_all(b).await.map_err(|e| Refusal::Gone(e.to_string()))
}
