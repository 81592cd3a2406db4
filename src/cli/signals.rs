//! The signals the proxy answers: SIGTERM and SIGINT stop it, SIGHUP reloads the
//! configuration, SIGUSR2 starts a fresh process that takes over.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// What a signal asks of the proxy.
pub enum Sig {
    Stop,
    Reload,
    Takeover,
}

/// The process's signal streams (`None`: could not be installed).
pub struct Signals {
    /// SIGTERM.
    term: Option<Signal>,
    /// SIGINT.
    int: Option<Signal>,
    /// SIGHUP.
    hup: Option<Signal>,
    /// SIGUSR2.
    usr2: Option<Signal>,
}

impl Signals {
    /// Installs the handlers: from here on, these signals no longer end the process.
    pub fn new() -> Signals {
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
            usr2: signal(SignalKind::user_defined2()).ok(),
        }
    }

    /// The next SIGTERM or SIGINT (other signals are left to [`next`](Self::next)).
    pub async fn next_stop(&mut self) -> Sig {
        loop {
            if let Sig::Stop = self.next().await {
                return Sig::Stop;
            }
        }
    }

    pub async fn next(&mut self) -> Sig {
        async fn on(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        if self.term.is_none() && self.int.is_none() {
            let _ = tokio::signal::ctrl_c().await;
            return Sig::Stop;
        }
        tokio::select! {
            _ = on(&mut self.term) => Sig::Stop,
            _ = on(&mut self.int) => Sig::Stop,
            _ = on(&mut self.hup) => Sig::Reload,
            _ = on(&mut self.usr2) => Sig::Takeover,
        }
    }
}
