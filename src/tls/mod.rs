//! The TLS material of a configuration: the proxy's certificate (read from `[tls]`'s files)
//! as a rustls acceptor, and one connector per backend for the proxy's own TLS sessions to the
//! servers. Built whole from a [`Config`] or not at all: a reload whose files do not load is
//! refused and the material in force keeps serving (see [`crate::live`]).
//!
//! rustls with the ring provider: no OpenSSL on the data path. TLS 1.2 and 1.3 only (rustls
//! speaks nothing older). Under `terminate` the acceptor offers ALPN `postgresql`, as
//! PostgreSQL 17 does: a client that offers other protocols and not that one is refused with
//! the `no_application_protocol` alert, and a direct-TLS client must have negotiated it.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{BackendConfig, Config, ServerSslMode, TlsMode};

mod verify;

/// The ALPN protocol of PostgreSQL's own TLS (PostgreSQL 17).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why the TLS material could not be built; names the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{key} {file}: {reason}")]
    File { key: &'static str, file: String, reason: String },
    #[error("tls: {0}")]
    Setup(String),
}

/// What the data path needs to speak TLS, for one configuration.
#[derive(Default)]
pub struct Material {
    /// The proxy's certificate and settings for clients (`terminate` only).
    pub acceptor: Option<TlsAcceptor>,
    /// Per backend, in config order: how to open TLS to it (`None` with `sslmode = disable`).
    pub servers: Vec<Option<ServerTls>>,
}

/// The proxy's TLS to one server.
#[derive(Clone)]
pub struct ServerTls {
    pub connector: TlsConnector,
    /// The name the certificate is checked against (`verify-full`) and sent as SNI.
    pub name: ServerName<'static>,
    pub mode: ServerSslMode,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").field("terminate", &self.acceptor.is_some()).field("servers", &self.servers.len()).finish()
    }
}

/// The ring provider: it builds without cmake or a C++ toolchain and is smaller than
/// aws-lc-rs. rustls 0.23.48 deprecates it for lacking post-quantum key exchange: a client
/// that would prefer X25519MLKEM768 agrees on X25519 instead.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Material {
    /// Reads the files `cfg` names and builds everything, or says which file is wrong.
    pub fn load(cfg: &Config) -> Result<Material, TlsError> {
        let acceptor = match cfg.tls.mode {
            TlsMode::Terminate => Some(acceptor(cfg)?),
            TlsMode::Passthrough => None,
        };
        let servers = cfg.backends().iter().map(server_tls).collect::<Result<_, _>>()?;
        Ok(Material { acceptor, servers })
    }
}

fn acceptor(cfg: &Config) -> Result<TlsAcceptor, TlsError> {
    let t = &cfg.tls;
    let (Some(cert_file), Some(key_file)) = (&t.cert_file, &t.key_file) else {
        return Err(TlsError::Setup("mode = \"terminate\" needs cert_file and key_file".into()));
    };
    let chain = certificates("cert_file", cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| file_err("key_file", key_file, format!("no private key could be read (PEM: PKCS#8, PKCS#1 or SEC1): {e}")))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &t.client_ca_file {
        Some(ca) => {
            let roots = Arc::new(roots("client_ca_file", ca)?);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| file_err("client_ca_file", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| file_err("key_file", key_file, format!("does not go with the certificate in {}: {e}", cert_file.display())))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn server_tls(b: &BackendConfig) -> Result<Option<ServerTls>, TlsError> {
    if b.sslmode == ServerSslMode::Disable {
        return Ok(None);
    }
    let roots = match (&b.ca_file, b.sslmode.verifies()) {
        (Some(ca), true) => Some(Arc::new(roots("server_ca_file", ca)?)),
        _ => None,
    };
    let verifier = verify::ServerVerify { roots, check_name: b.sslmode == ServerSslMode::VerifyFull, provider: provider() };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    let name =
        ServerName::try_from(b.host.clone()).map_err(|e| TlsError::Setup(format!("backend {}: host {:?} is no TLS server name: {e}", b.name, b.host)))?;
    Ok(Some(ServerTls { connector: TlsConnector::from(Arc::new(config)), name, mode: b.sslmode }))
}

fn file_err(key: &'static str, file: &Path, reason: String) -> TlsError {
    TlsError::File { key, file: file.display().to_string(), reason }
}

fn certificates(key: &'static str, file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| file_err(key, file, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(key, file, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(key, file, "holds no certificate (PEM \"BEGIN CERTIFICATE\")".into()));
    }
    for (i, c) in certs.iter().enumerate() {
        rustls::server::ParsedCertificate::try_from(c).map_err(|e| file_err(key, file, format!("certificate {} cannot be read: {e}", i + 1)))?;
    }
    Ok(certs)
}

fn roots(key: &'static str, file: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certificates(key, file)? {
        store.add(c).map_err(|e| file_err(key, file, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}
