//! `[coordination]`: how this proxy reaches etcd and goes by among the others.

use std::path::PathBuf;
use std::time::Duration;

use super::Secret;

/// `[coordination]`: several proxies agreeing through etcd v3.
#[derive(Clone, Debug, PartialEq)]
pub struct CoordinationConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub etcd_endpoints: Vec<String>,
    /// Key prefix `/pgfailover/<cluster>/`: proxies of one database cluster share it.
    pub cluster: String,
    /// This proxy's name among them (default: the host name).
    pub name: String,
    /// The lease that holds leadership and membership; renewed every third of it.
    pub lease_ttl: Duration,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// CA bundle to verify etcd's certificate (https endpoints).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for etcd, when it asks for one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl CoordinationConfig {
    /// The defaults for the keys a `[coordination]` table leaves out.
    pub fn with_defaults() -> CoordinationConfig {
        CoordinationConfig {
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            cluster: "main".into(),
            name: host_name(),
            lease_ttl: Duration::from_secs(3),
            user: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// This machine's host name (`uname`'s node name, as `gethostname` reads it), or "pgfailover".
pub fn host_name() -> String {
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "pgfailover".into()
    } else {
        name
    }
}
