//! A reload: what changes live, what needs a restart, and what needs a takeover.

use crate::config::Config;
use crate::live::Loaded;

use super::Proxy;

/// Why a reload was not applied (the proxy keeps running on the configuration it had).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("changing the backends (adding, removing, or their connection settings such as tls.server_sslmode) needs state_dir (a fresh process takes over and carries the fences on through it); restart instead")]
    BackendsWithoutStateDir,
    #[error("{0} is the routed primary and cannot be removed; make another backend primary first (POST /failover/trigger)")]
    RemovesPrimary(String),
    #[error("a failover or switchover is in progress; reload when it has ended")]
    FailoverInProgress,
    /// The certificates or keys named in `[tls]` do not load: the ones in force keep serving.
    #[error("{0}; the certificates in force keep serving")]
    Tls(#[from] crate::tls::TlsError),
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The backends changed: a fresh process must take over (see [`crate::takeover`]).
    pub handover: bool,
    /// Keys that changed but need a restart (or a takeover) to take effect.
    pub need_restart: Vec<&'static str>,
    /// `log_level` or `log_format` changed.
    pub logging: bool,
    /// The digest of the configuration now in force, as `/failover/status` shows it (keys
    /// that need a restart kept as they run); under a handover, that of the file, which the
    /// fresh process loads.
    pub digest: String,
}

impl Proxy {
    /// Applies a new, valid configuration: what can change live changes now; new or removed
    /// backends need a takeover by a fresh process ([`Reloaded::handover`]).
    pub async fn reload(&self, new: Config, file: Option<String>) -> Result<Reloaded, ReloadError> {
        let old = self.live.current().config.clone();
        let mut new = new;
        new.apply_server_tls();
        let mut out = Reloaded::default();
        // Promotion policies (priority, nofailover, zone) apply live; the servers themselves
        // need a takeover.
        if old.servers() != new.servers() {
            if new.state_dir.is_none() || old.state_dir != new.state_dir {
                return Err(ReloadError::BackendsWithoutStateDir);
            }
            let status = self.monitor.status();
            if status.failover_in_progress.is_some() {
                return Err(ReloadError::FailoverInProgress);
            }
            if let Some(p) = status.current_primary.as_ref().filter(|p| !new.backends().iter().any(|b| &b.name == *p)) {
                return Err(ReloadError::RemovesPrimary(p.clone()));
            }
            out.handover = true;
            out.digest = crate::live::digest(&new);
            return Ok(out);
        }
        // What needs a restart is logged and stays as it runs, so the status and the next
        // reload see that.
        fn keep<T: PartialEq + Clone>(old: &T, new: &mut T, key: &'static str, out: &mut Reloaded) {
            if old != new {
                out.need_restart.push(key);
                *new = old.clone();
            }
        }
        keep(&old.listen, &mut new.listen, "listen", &mut out);
        keep(&old.listen_ro, &mut new.listen_ro, "listen_ro", &mut out);
        keep(&old.read.listeners, &mut new.read.listeners, "read.listeners", &mut out);
        keep(&old.admin_listen, &mut new.admin_listen, "admin_listen", &mut out);
        keep(&old.state_dir, &mut new.state_dir, "state_dir", &mut out);
        keep(&old.coordination, &mut new.coordination, "[coordination]", &mut out);
        keep(&old.proxy.worker_threads, &mut new.proxy.worker_threads, "proxy.worker_threads", &mut out);
        out.logging = old.log_level != new.log_level || old.log_format != new.log_format;
        let next = Loaded::now(new, file)?;
        out.digest = next.info.digest.clone();
        self.live.publish(next);
        // The data path and the admin port read it from now on; the monitor applies it in
        // its own time, and the reload is reported done once it has.
        if !self.monitor.applied(&out.digest, std::time::Duration::from_secs(5)).await {
            tracing::warn!("the health monitor has not applied the reloaded configuration yet");
        }
        Ok(out)
    }
}
