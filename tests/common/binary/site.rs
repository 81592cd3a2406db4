//! A directory holding one `proxy.toml`, a state directory and the log files of the
//! processes that run on it: one process, or several in turn when one takes over from
//! another (they find each other through the state directory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{Launch, Process, ProxyToml};

pub struct Site {
    /// Removed when the site is dropped (after the processes on it, declared later).
    dir: tempfile::TempDir,
    /// What was written last: the processes' addresses.
    config: Option<ProxyToml>,
}

impl Site {
    /// An empty site in the system's temporary directory.
    pub fn new() -> Site {
        Site { dir: tempfile::Builder::new().prefix("pgfailover-site-").tempdir().expect("a site directory"), config: None }
    }

    /// An empty site inside `parent` (a benchmark's working directory).
    pub fn new_in(parent: &Path) -> Site {
        Site { dir: tempfile::Builder::new().prefix("site-").tempdir_in(parent).expect("a site directory"), config: None }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// The place for [`ProxyToml::state_dir`]: the lock, the history, the takeover socket.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes `config` as the site's `proxy.toml` (a running process reads it on SIGHUP).
    pub fn write(&mut self, config: &ProxyToml) {
        std::fs::write(self.config_path(), config.render()).expect("write proxy.toml");
        self.config = Some(config.clone());
    }

    /// Writes any text as `proxy.toml` (one the binary must refuse); the addresses stay.
    pub fn write_raw(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write proxy.toml");
    }

    /// The configuration last written.
    pub fn config(&self) -> &ProxyToml {
        self.config.as_ref().expect("a configuration written to the site")
    }

    pub fn listen(&self) -> SocketAddr {
        self.config().listen()
    }

    pub fn admin(&self) -> SocketAddr {
        self.config().admin()
    }

    /// A process on the site's configuration, its logs in the site (`name.log`, `name.out`).
    pub fn launch(&self, name: &str) -> Launch {
        Launch::new(name).args(["--config".into(), self.config_path().into_os_string()]).admin(self.admin()).logs_in(self.path())
    }

    /// Starts [`Site::launch`] as it is.
    pub fn start(&self, name: &str) -> Process {
        self.launch(name).start()
    }
}
