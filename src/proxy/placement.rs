//! Where a new session may go, for each port: the main port follows the [`Route`] (the one
//! primary); the read-only port picks among the [`ReadRoute`]'s standbys, within the
//! configured bounds tightened by the client's own, and falls back as `[read]` says.
//!
//! A read session may also ask for a standby that has replayed a WAL position of its own
//! (`pgfailover.min_lsn`, read-your-writes). While none has, it waits up to
//! `read.min_lsn_wait`, asking for fresh checks of the standbys (their replay positions are
//! those of their last check), then falls back as `[read]` says; the primary has every
//! position.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;

use crate::cluster::BackendId;
use crate::config::{Balance, Fallback};
use crate::monitor::observation::format_lsn;
use crate::route::{ReadRoute, Route};

use super::datapath::{DataPath, Port};

/// What a session may be placed on, and (read port) the freshness it asked for.
#[derive(Clone)]
pub enum Placement {
    Primary(watch::Receiver<Route>),
    Read {
        route: watch::Receiver<ReadRoute>,
        bound: Bound,
        /// Until when a `min_lsn` session waits for a standby to replay that far.
        min_lsn_until: Option<Instant>,
    },
}

/// A freshness bound: the configured `[read]` bounds, tightened by the client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub max_lag_bytes: u64,
    pub max_lag: Duration,
    /// The WAL position a standby must have replayed (0: any).
    pub min_lsn: u64,
}

/// The outcome of a pick.
pub enum Pick {
    /// Try this backend.
    Backend(BackendId),
    /// Nothing now; hold the client (up to the hold timeout) for this reason.
    Wait(String),
    /// Refuse at once with this reason (read port, `fallback = "refuse"`).
    Refuse(String),
}

impl Placement {
    /// The main port's placement.
    pub fn primary(dp: &DataPath) -> Placement {
        Placement::Primary(dp.route.clone())
    }

    /// The read-only port's placement, with the configured bounds.
    pub fn read(dp: &DataPath) -> Placement {
        let cfg = dp.config();
        let bound = Bound { max_lag_bytes: cfg.read.max_lag_bytes, max_lag: cfg.read.max_lag, min_lsn: 0 };
        Placement::Read { route: dp.read_route.clone(), bound, min_lsn_until: None }
    }

    /// The placement of a session of `port`: a `[[read.listeners]]` port has its own bounds
    /// (as the configuration in force says), each part left out being `[read]`'s.
    pub fn for_port(dp: &DataPath, port: Port) -> Placement {
        match port {
            Port::Primary => Placement::primary(dp),
            Port::Read => Placement::read(dp),
            Port::ReadAt(i) => {
                let mut place = Placement::read(dp);
                if let (Placement::Read { bound, .. }, Some(l)) = (&mut place, dp.config().read.listeners.get(i)) {
                    bound.max_lag = l.max_lag.unwrap_or(bound.max_lag);
                    bound.max_lag_bytes = l.max_lag_bytes.unwrap_or(bound.max_lag_bytes);
                }
                place
            }
        }
    }

    pub fn is_read(&self) -> bool {
        matches!(self, Placement::Read { .. })
    }

    /// Tightens (never loosens) the read bound with the client's own; a `min_lsn` is waited
    /// for up to `min_lsn_wait` from now.
    pub fn tighten(&mut self, client: Bound, min_lsn_wait: Duration) {
        if let Placement::Read { bound, min_lsn_until, .. } = self {
            bound.max_lag_bytes = bound.max_lag_bytes.min(client.max_lag_bytes);
            bound.max_lag = bound.max_lag.min(client.max_lag);
            if client.min_lsn > bound.min_lsn {
                bound.min_lsn = client.min_lsn;
                *min_lsn_until = Some(Instant::now() + min_lsn_wait);
            }
        }
    }

    /// When a waiting `min_lsn` session must look again (its wait ends then).
    pub fn wake_at(&self) -> Option<Instant> {
        match self {
            Placement::Read { min_lsn_until, .. } => min_lsn_until.filter(|t| *t > Instant::now()),
            Placement::Primary(_) => None,
        }
    }

    /// Whether `backend` (picked before the client's bound was known) still fits it.
    pub fn fits(&self, backend: BackendId) -> bool {
        match self {
            Placement::Primary(route) => route.borrow().target == Some(backend),
            Placement::Read { route, bound, .. } => {
                let r = route.borrow();
                r.targets.iter().any(|t| t.backend == backend && within(t, bound))
                    || (r.primary == Some(backend) && r.targets.iter().all(|t| !within(t, bound)))
            }
        }
    }

    /// Where to go now. Marks the current route as seen, so [`changed`](Self::changed)
    /// waits for the next one.
    pub fn pick(&mut self, dp: &DataPath) -> Pick {
        match self {
            Placement::Primary(route) => {
                let r = route.borrow_and_update();
                match r.target {
                    Some(t) => Pick::Backend(t),
                    None => Pick::Wait(r.reason.to_string()),
                }
            }
            Placement::Read { route, bound, min_lsn_until } => {
                let read = &dp.config().read;
                let r = route.borrow_and_update();
                let fits: Vec<BackendId> = r.targets.iter().filter(|t| within(t, bound)).map(|t| t.backend).collect();
                let behind: Vec<BackendId> = r.targets.iter().filter(|t| t.replay_lsn < bound.min_lsn).map(|t| t.backend).collect();
                if fits.is_empty() && !behind.is_empty() && min_lsn_until.is_some_and(|t| Instant::now() < t) {
                    // Their positions are as of their last check: ask for fresh ones.
                    for b in behind {
                        let _ = dp.connect_failed.try_send(b);
                    }
                    return Pick::Wait(format!("waiting for a standby to replay {} (pgfailover.min_lsn)", format_lsn(bound.min_lsn)));
                }
                if !fits.is_empty() {
                    let chosen = match read.balance {
                        Balance::LeastConnections => fits.iter().copied().min_by_key(|b| (dp.metrics.read_sessions(*b), *b)),
                        Balance::RoundRobin => fits.get(dp.read_turn.fetch_add(1, Ordering::Relaxed) % fits.len()).copied(),
                    };
                    return chosen.map(Pick::Backend).unwrap_or_else(|| Pick::Wait(r.reason.to_string()));
                }
                let why = if r.targets.is_empty() {
                    r.reason.to_string()
                } else if bound.min_lsn > 0 && r.targets.iter().all(|t| t.replay_lsn < bound.min_lsn) {
                    format!("no standby has replayed {} (pgfailover.min_lsn) within read.min_lsn_wait", format_lsn(bound.min_lsn))
                } else {
                    format!(
                        "no standby is within this session's bound (max_lag {}, max_lag_bytes {})",
                        humantime::format_duration(bound.max_lag),
                        bound.max_lag_bytes
                    )
                };
                match (read.fallback, r.primary) {
                    (Fallback::Primary, Some(p)) => Pick::Backend(p),
                    (Fallback::Primary, None) => Pick::Wait(format!("{why}, and no primary is routed to fall back to")),
                    (Fallback::Hold, _) => Pick::Wait(why),
                    (Fallback::Refuse, _) => Pick::Refuse(why),
                }
            }
        }
    }

    /// Whether `backend` is the primary this read session fell back to.
    pub fn is_fallback(&self, backend: BackendId) -> bool {
        match self {
            Placement::Primary(_) => false,
            Placement::Read { route, bound, .. } => {
                let r = route.borrow();
                r.primary == Some(backend) && !r.targets.iter().any(|t| t.backend == backend && within(t, bound))
            }
        }
    }

    /// Waits for the next change of what this port may use.
    pub async fn changed(&mut self) {
        let closed = match self {
            Placement::Primary(route) => route.changed().await.is_err(),
            Placement::Read { route, .. } => route.changed().await.is_err(),
        };
        if closed {
            // The writer is gone (the proxy is stopping): shutdown ends the wait instead.
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when a session on `backend` must be cut: the main port when the route
    /// leaves it; the read port when the backend is lost or fenced. (An `async` block: every
    /// spliced session holds this future, see `session::serve`.)
    #[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice in its future")]
    pub fn left(&mut self, backend: BackendId) -> impl std::future::Future<Output = ()> + Send + '_ {
        async move {
            loop {
                let stays = match self {
                    Placement::Primary(route) => route.borrow_and_update().target == Some(backend),
                    Placement::Read { route, .. } => route.borrow_and_update().live.contains(&backend),
                };
                if !stays {
                    return;
                }
                let closed = match self {
                    Placement::Primary(route) => route.changed().await.is_err(),
                    Placement::Read { route, .. } => route.changed().await.is_err(),
                };
                if closed {
                    // The writer is gone (the proxy is stopping): shutdown ends the wait.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Why the session's server was left, as the route says now.
    pub fn why_left(&self) -> String {
        let reason = match self {
            Placement::Primary(route) => route.borrow().reason.to_string(),
            Placement::Read { route, .. } => route.borrow().reason.to_string(),
        };
        if reason.is_empty() {
            "another server is the primary now".into()
        } else {
            reason
        }
    }

    /// The text of the 57P03 a refused client gets.
    pub fn refusal(&self, why: &str) -> String {
        match self {
            Placement::Primary(_) => format!("no primary database is available: {why}"),
            Placement::Read { .. } => format!("no read-only database is available: {why}"),
        }
    }
}

fn within(t: &crate::route::ReadTarget, bound: &Bound) -> bool {
    t.lag_bytes <= bound.max_lag_bytes && t.lag <= bound.max_lag && t.replay_lsn >= bound.min_lsn
}
