//! A direct-TLS client in passthrough mode: its ClientHello offered to the server
//! ([`offer`]), and the client told in words when that server does not speak direct TLS
//! ([`refuse`]).
//!
//! A PostgreSQL 17 client with `sslnegotiation=direct` opens with a TLS ClientHello. In
//! passthrough the proxy hands it to the server; a server older than 17 (or one without TLS)
//! closes the connection on it without a word, and the client would only see its TLS
//! handshake cut. Instead the proxy completes that handshake itself with a throw-away
//! self-signed certificate and answers the StartupMessage with a FATAL 08P01 that says what
//! happened and what to change. A client that verifies certificates (`verify-ca`,
//! `verify-full`) refuses that certificate first: it sees a certificate error, and the
//! proxy's log says why.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ask::{awaiting, send, Answer, CLOSED};
use super::datapath::DataPath;
use super::placement::Placement;
use super::stream::Prefixed;
use super::wire;
use crate::cluster::BackendId;
use crate::tls::ALPN_POSTGRESQL;

/// What became of a ClientHello offered to a server.
pub enum Offered {
    /// The server's first bytes (its ServerHello): the session is the server's.
    Answered(Vec<u8>),
    /// The server closed the connection on the whole ClientHello (here): it does not speak
    /// direct TLS.
    Refused(Vec<u8>),
    /// The client went away or stalled before its ClientHello was whole.
    Abandoned,
    /// The server failed otherwise; what the client sent so far, to offer to the next one.
    Failed(Vec<u8>, String),
    /// The route left the server meanwhile; what the client sent so far.
    Moved(Vec<u8>),
}

/// Sends the client's ClientHello to the server as it arrives (`read`: its bytes read so
/// far), and waits for the server's answer meanwhile: a server that closes the connection
/// on a first record that is not whole yet (an older server judges its first four bytes)
/// must not wait for the rest of it. A copy is kept to answer the client in words.
pub async fn offer<C, S>(client: &mut C, server: &mut S, read: &[u8], dp: &DataPath, place: &Placement, backend: BackendId, deadline: Instant) -> Offered
where
    C: AsyncRead + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A record: type, version (2 bytes), length (2 bytes), then the handshake.
    let whole = 5 + u16::from_be_bytes([read[3], read[4]]) as usize;
    let mut hello = read.to_vec();
    let (mut from_server, mut to_server) = tokio::io::split(server);
    if let Err(e) = send(&mut to_server, &hello, dp).await {
        return Offered::Failed(hello, e.to_string());
    }
    let mut chunk = vec![0u8; 4096];
    loop {
        let missing = whole.saturating_sub(hello.len());
        // An answer is one byte: a read that completes is never cut short by the other branch.
        tokio::select! {
            answer = awaiting(&mut from_server, 1, place, backend, false) => {
                return match answer {
                    Answer::Bytes(b) => Offered::Answered(b),
                    Answer::Lost(why) if why == CLOSED && missing == 0 => Offered::Refused(hello),
                    Answer::Lost(why) if why == CLOSED => Offered::Abandoned,
                    Answer::Lost(why) => Offered::Failed(hello, why),
                    Answer::Moved => Offered::Moved(hello),
                };
            }
            got = tokio::time::timeout_at(deadline, client.read(&mut chunk[..missing.min(4096)])), if missing > 0 => match got {
                Ok(Ok(n)) if n > 0 => {
                    hello.extend_from_slice(&chunk[..n]);
                    if let Err(e) = send(&mut to_server, &chunk[..n], dp).await {
                        return Offered::Failed(hello, e.to_string());
                    }
                }
                _ => return Offered::Abandoned,
            },
        }
    }
}

/// SQLSTATE "protocol_violation".
const SQLSTATE_PROTOCOL_VIOLATION: &str = "08P01";

/// Answers the client whose ClientHello `hello` (already read) the server refused.
pub async fn refuse(client: TcpStream, hello: Vec<u8>, reason: &str, deadline: Instant) {
    tracing::info!(%reason, "direct TLS client refused: its server does not speak direct TLS (use sslnegotiation=postgres, or tls.mode = \"terminate\")");
    let Some(acceptor) = throwaway_acceptor() else { return };
    let message = format!(
        "{reason}. PostgreSQL accepts direct TLS (sslnegotiation=direct) from version 17 on; connect with sslnegotiation=postgres, \
         or have pgfailover terminate TLS (tls.mode = \"terminate\")"
    );
    let answer = async {
        let mut tls = acceptor.accept(Prefixed::new(hello, client)).await.ok()?;
        let packet = wire::read_packet(&mut tls).await.ok().flatten()?;
        Some(wire::refuse(&mut tls, Some(packet), SQLSTATE_PROTOCOL_VIOLATION, &message, deadline).await)
    };
    let _ = tokio::time::timeout_at(deadline, answer).await;
}

/// A TLS acceptor with a fresh self-signed certificate (ECDSA P-256: made in well under a
/// millisecond, and only for these refusals).
fn throwaway_acceptor() -> Option<tokio_rustls::TlsAcceptor> {
    let made = rcgen::generate_simple_self_signed(vec!["pgfailover".to_string()]).ok()?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .ok()?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
