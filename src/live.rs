//! The configuration in force, and the one way it reaches the running parts.
//!
//! A reload (SIGHUP) validates a new [`Config`] and publishes it here. The data path reads
//! the value in force when a session needs it; the probers, the monitor and the admin port
//! read it the same way and wake on its change (`watch::Receiver::changed`). Nothing keeps
//! a copy of a reloadable setting: a part either reads it from here or derives it on the spot.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;

/// A configuration and what the status says of its loading.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub info: LoadInfo,
    /// The certificates and TLS settings its files hold, read when it was loaded: a reload
    /// (SIGHUP) reads them again, and new sessions take them from here.
    pub material: Arc<crate::tls::Material>,
}

/// What `/failover/status` says of the configuration in force (no secret: the digest is
/// computed with every secret left out).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadInfo {
    pub loaded_at: String,
    pub digest: String,
    pub file: Option<String>,
    pub pid: u32,
}

/// A reader of the configuration in force.
pub type LiveConfig = watch::Receiver<Arc<Loaded>>;

/// The writing end: the server owns the only one and publishes reloads through it.
#[derive(Debug)]
pub struct LiveWriter {
    tx: watch::Sender<Arc<Loaded>>,
}

/// The configuration's digest: SHA-256 of its debug form, which leaves every secret out.
pub fn digest(cfg: &Config) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(format!("{cfg:?}").as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl std::ops::Deref for Loaded {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl Loaded {
    /// `config`, loaded now from `file`, with the TLS material its files hold (or why they do
    /// not load).
    pub fn now(config: Config, file: Option<String>) -> Result<Loaded, crate::tls::TlsError> {
        let material = Arc::new(crate::tls::Material::load(&config)?);
        let info = LoadInfo {
            loaded_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            digest: digest(&config),
            file,
            pid: std::process::id(),
        };
        Ok(Loaded { config, info, material })
    }
}

impl LiveWriter {
    pub fn new(first: Loaded) -> LiveWriter {
        LiveWriter { tx: watch::Sender::new(Arc::new(first)) }
    }

    pub fn subscribe(&self) -> LiveConfig {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.tx.borrow().clone()
    }

    /// Puts `next` in force; every reader sees it from now on.
    pub fn publish(&self, next: Loaded) {
        self.tx.send_replace(Arc::new(next));
    }
}
