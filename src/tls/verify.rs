//! How the proxy judges a server's certificate, by `sslmode`: `prefer` and `require` encrypt
//! without verifying (libpq's meaning), `verify-ca` checks the chain up to the configured CA
//! whatever the name, `verify-full` checks the name too. The handshake's signatures are always
//! checked: an unverified certificate still has to belong to the peer.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A server certificate verifier for one `sslmode`.
#[derive(Debug)]
pub(super) struct ServerVerify {
    /// The CA the chain must lead to; `None`: not verified (`prefer`, `require`).
    pub(super) roots: Option<Arc<RootCertStore>>,
    /// The certificate must name the host (`verify-full`).
    pub(super) check_name: bool,
    /// The signature algorithms of the handshake and the chain.
    pub(super) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerVerify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else { return Ok(ServerCertVerified::assertion()) };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.provider.signature_verification_algorithms.all)?;
        if self.check_name {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
