//! Telling a direct-TLS client in words that its server does not speak direct TLS, in
//! passthrough mode.
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

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::stream::Prefixed;
use super::wire;
use crate::tls::ALPN_POSTGRESQL;

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
