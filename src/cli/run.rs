//! Runs the proxy until SIGTERM/SIGINT, then drains and exits 0. SIGHUP reloads the
//! configuration; SIGUSR2 (or a reload that adds or removes backends) starts a fresh copy of
//! this binary that takes over ([`pgfailover::takeover`]), and this process drains and exits.

use std::process::ExitCode;

use pgfailover::config::Config;
use pgfailover::server::{Proxy, StartError};
use pgfailover::takeover::{self, Successor, TakeoverError};
use tokio_util::sync::CancellationToken;

use super::logging::LogHandle;
use super::reload::{reload, Source};
use super::signals::{Sig, Signals};

/// Runs the proxy on `cfg` until a signal stops it (or another process took over); the exit
/// code says how it ended. `ready` is called once the listeners are bound. SIGHUP reloads
/// the configuration from `source` (the demo has none).
pub fn until_signal(cfg: Config, logs: LogHandle, mut source: Option<Source>, ready: impl FnOnce(&Proxy)) -> ExitCode {
    let successor = Successor::of_this_process();
    // The control plane (accepting, the monitor, the admin port, etcd) on this thread; the
    // sessions on the data path's own threads (`proxy.worker_threads`, see proxy::workers).
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgfailover: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let file = source.as_ref().and_then(|s| s.file.as_ref()).map(|f| f.display().to_string());
        let has_state_dir = cfg.state_dir.is_some();
        // Before the start: a signal during a takeover must not end the process.
        let mut signals = Signals::new();
        let inherited = source.as_mut().map(|s| std::mem::take(&mut s.inherited)).unwrap_or_default();
        // SIGTERM while the start still waits for a running process (to hand over) ends it.
        let early_stop = CancellationToken::new();
        let early = {
            let stop = early_stop.clone();
            let mut signals = Signals::new();
            tokio::spawn(async move {
                if let Sig::Stop = signals.next_stop().await {
                    stop.cancel();
                }
            })
        };
        let started = Proxy::start_with(cfg, file.clone(), inherited, early_stop).await;
        early.abort();
        let proxy = match started {
            Ok(p) => p,
            Err(StartError::Takeover(TakeoverError::Stopped)) => {
                tracing::info!("stopped by a signal while waiting to take over; the running process carries on");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                // One message: the log is on stderr already.
                tracing::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        ready(&proxy);
        #[cfg(feature = "testkit")]
        pgfailover::testkit::crash_monitor_from_env(&proxy);
        let code = loop {
            tokio::select! {
                sig = signals.next() => match sig {
                    Sig::Stop => {
                        takeover::sd_notify("STOPPING=1");
                        proxy.announce_shutdown().await;
                        tracing::info!("signal received; draining sessions and stopping");
                        break ExitCode::SUCCESS;
                    }
                    Sig::Reload => {
                        let Some(src) = &source else {
                            tracing::warn!("SIGHUP: the demo has no configuration file to reload");
                            continue;
                        };
                        if reload(&proxy, src, file.clone(), &logs).await {
                            successor.spawn("the backends changed");
                        }
                    }
                    Sig::Takeover => {
                        if has_state_dir {
                            successor.spawn("SIGUSR2");
                        } else {
                            tracing::error!("SIGUSR2: a takeover needs state_dir (the processes hand over through it); ignored");
                        }
                    }
                },
                _ = proxy.handed_over() => {
                    let pid = proxy.successor();
                    if !takeover::alive(pid) {
                        // It died after this process stopped accepting: nobody serves. Exit
                        // non-zero, so the supervisor starts a fresh one.
                        tracing::error!(pid, "the process that took over is gone; exiting with an error so the supervisor restarts the proxy");
                        break ExitCode::FAILURE;
                    }
                    tracing::info!("another process took over; draining sessions and exiting");
                    // systemd follows the new process (it says so too; whichever comes first).
                    takeover::sd_notify(&format!("MAINPID={pid}"));
                    break ExitCode::SUCCESS;
                }
                _ = proxy.failed() => {
                    tracing::error!("the health monitor died; stopping with a non-zero exit so the supervisor restarts the proxy");
                    break ExitCode::from(70);
                }
            }
        };
        proxy.shutdown();
        proxy.stopped().await;
        tracing::info!("stopped");
        code
    })
}

/// Two descriptors per client: use all the open files the hard limit allows (the default
/// `proxy.max_client_connections` is derived from it).
pub fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    if lim.current.unwrap_or(u64::MAX) < lim.maximum.unwrap_or(u64::MAX) {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: lim.maximum, maximum: lim.maximum });
    }
}
