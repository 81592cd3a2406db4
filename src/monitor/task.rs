//! The monitor task: feeds check results, operation outcomes, commands and etcd's news into
//! the [`Machine`], carries out its actions, keeps metrics and the published [`Status`]
//! current. It holds the route writer, and writes it only as the machine's actions say.
//! Its probers are `prober`'s; its side of coordination is `coordinated`'s; failing closed
//! is `lifeline`'s.
//!
//! It fails closed: if the monitor or a prober ends while the proxy is not stopping (a
//! panic), the route is cleared, the status says so (`/ready` answers 503) and the `fatal`
//! token is cancelled so the process exits non-zero and its supervisor restarts it. Routing
//! never continues on a decision nobody maintains.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;

use crate::cluster::BackendId;
use crate::config::{BackendConfig, Config, Quorum};
use crate::live::LiveConfig;
use crate::metrics::Metrics;
use crate::proxy::gate::Gate;
use crate::route::{ReadRouteWriter, RouteWriter};

use super::check_error::CheckError;
use super::handle::{CheckNow, Command, MonitorHandle, Triggered};
use crate::coord::{Coordinator, Event as CoordEvent};

mod actions;
mod coordinated;
mod lifeline;
mod prober;

pub use lifeline::Lifeline;

use super::history::{Fences, History, Kept};
use super::machine::{Action, Machine, Now, Outcome, Settings};
use super::operations::{self, OpError};
use super::status::Status;
use coordinated::next_coord_events;
use prober::ProberTask;

/// What an operation that panicked reports (a bug; the step is treated as failed).
const TASK_FAILED: &str = "the operation's task failed unexpectedly";

fn task_failed() -> OpError {
    OpError::Check(CheckError::Protocol(TASK_FAILED.into()))
}

/// Why the route is empty after the monitor died.
pub const MONITOR_DIED: &str = "the health monitor stopped unexpectedly; the proxy routes nothing and exits so its supervisor restarts it";

/// Starts the probers, the passive-signal forwarder and the monitor on `tracker`.
// The pieces `server` wires together, passed once: a struct for one call site adds nothing.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    config: LiveConfig,
    backends: Arc<[BackendConfig]>,
    (route, read_route): (RouteWriter, ReadRouteWriter),
    metrics: Arc<Metrics>,
    history: History,
    mut passive: mpsc::Receiver<BackendId>,
    gate: Arc<Gate>,
    life: Lifeline,
    coordination: Option<(Coordinator, mpsc::Receiver<Vec<CoordEvent>>)>,
    tracker: &TaskTracker,
) -> MonitorHandle {
    let loaded = config.borrow().clone();
    let cfg: &Config = &loaded;
    let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
    let fenced: Vec<(String, crate::cluster::Fence)> = history.fences().into_iter().filter(|(n, _)| names.contains(n)).collect();
    if !fenced.is_empty() {
        let list: Vec<&str> = fenced.iter().map(|(n, _)| n.as_str()).collect();
        tracing::warn!(fenced = %list.join(", "), "restored fences from the state directory");
    }
    let read_only: Vec<BackendId> = history
        .read_only()
        .into_iter()
        .filter_map(|name| {
            let i = BackendId::new(names.iter().position(|n| *n == name)?);
            tracing::warn!(backend = %name, "restored from the state directory: a switchover left this backend read-only; it is made writable again if it is the primary");
            Some(i)
        })
        .collect();
    let mut machine = Machine::new(Settings::from_config(cfg), &names, &fenced)
        // As pg_stat_wal_receiver shows an upstream: sender_host:sender_port.
        .with_addresses(backends.iter().map(|c| format!("{}:{}", c.host, c.port)))
        .with_read_only(read_only)
        .with_maintenance(history.maintenance());
    if let Some((c, _)) = &coordination {
        // Coordinated from the start: neither routing nor promoting before etcd has spoken.
        machine.join(c.name.clone(), cfg.failover.quorum == Quorum::Majority);
    }
    let (commands, rx) = mpsc::channel(256);
    let first = Status::build(&machine, &backends, route.current().epoch, &route.current().reason);
    let (status_tx, status) = watch::channel(Arc::new(first));
    let history = Arc::new(Mutex::new(history));

    let mut probe_now = Vec::new();
    for (i, b) in BackendId::all(backends.len()).zip(backends.iter()) {
        let (now_tx, now_rx) = mpsc::channel(8);
        probe_now.push(now_tx);
        let p = ProberTask { i, backend: b.clone(), config: config.clone(), commands: commands.clone(), now_rx, life: life.clone() };
        tracker.spawn(p.run());
    }
    let probe_now: Arc<[_]> = probe_now.into();
    let forward = probe_now.clone();
    let stop = life.shutdown.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                i = passive.recv() => match i {
                    Some(i) => { if let Some(p) = forward.get(i.index()) { let _ = p.try_send(None); } }
                    None => break,
                },
            }
        }
    });
    let task = MonitorTask {
        machine,
        route,
        read_route,
        backends,
        metrics,
        history: history.clone(),
        status_tx,
        commands: commands.clone(),
        probe_now: probe_now.clone(),
        tracker: tracker.clone(),
        last_accounted: Instant::now(),
        waiting: HashMap::new(),
        life,
        coord: coordination.as_ref().map(|(c, _)| c.clone()),
        applied: loaded.info.digest.clone(),
        config,
        gate,
    };
    tracker.spawn(task.run(rx, coordination.map(|(_, e)| e)));
    MonitorHandle { commands, status, history, probe_now }
}

struct MonitorTask {
    /// The decisions; the only source of the route.
    machine: Machine,
    /// The route's writing end: written only from the machine's route actions.
    route: RouteWriter,
    /// The read-only port's targets, recomputed at every publish.
    read_route: ReadRouteWriter,
    /// The backends' configuration, by [`BackendId`] index: what the operations connect to.
    backends: Arc<[BackendConfig]>,
    /// Where figures go after every input.
    metrics: Arc<Metrics>,
    /// The history, shared with the admin port (a std mutex: short sections only).
    history: Arc<Mutex<History>>,
    /// The published status (`/failover/status`).
    status_tx: watch::Sender<Arc<Status>>,
    /// For operation tasks to report back.
    commands: mpsc::Sender<Command>,
    /// Asks a prober to check now, by [`BackendId`] index.
    probe_now: Arc<[mpsc::Sender<CheckNow>]>,
    /// Where operations run (a takeover waits for them).
    tracker: TaskTracker,
    /// Up to when time without a primary has been added to the metric.
    last_accounted: Instant,
    /// Coordination through etcd, when configured.
    coord: Option<Coordinator>,
    /// The configuration in force: a reload's `[health]`, `[failover]` and `[read]` reach
    /// the machine from here.
    config: LiveConfig,
    /// The digest of the configuration the machine decides with (in the status, so a
    /// reload can wait for it).
    applied: String,
    /// The data path's pause switch and session census: written only from the machine's
    /// gate actions.
    gate: Arc<Gate>,
    /// Operators waiting for the outcome of their trigger, by attempt.
    waiting: HashMap<u64, Vec<oneshot::Sender<Outcome>>>,
    /// Stopping, or failing closed.
    life: Lifeline,
}

impl Drop for MonitorTask {
    /// Fails closed when the task ends for any reason but a shutdown (a panic included).
    fn drop(&mut self) {
        if self.life.shutdown.is_cancelled() {
            return;
        }
        tracing::error!(panicking = std::thread::panicking(), "the health monitor ended unexpectedly: failing closed");
        for a in self.machine.stop_routing(MONITOR_DIED) {
            self.apply(a);
        }
        self.read_route.clear(MONITOR_DIED);
        let r = self.route.current();
        let mut status = Status::build(&self.machine, &self.backends, r.epoch, MONITOR_DIED);
        status.route_reason = Some(MONITOR_DIED.into());
        self.status_tx.send_replace(Arc::new(status));
        self.metrics.primary_routable.set(0.0);
        // Last: whoever waits for this sees the route already cleared.
        self.life.fatal.cancel();
    }
}

impl MonitorTask {
    /// Its own `Drop` fails closed if it ends other than by a shutdown.
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut coord_events: Option<mpsc::Receiver<Vec<CoordEvent>>>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                batch = next_coord_events(&mut coord_events) => {
                    self.coordination_events(batch);
                    continue;
                }
                _ = self.life.shutdown.cancelled() => break,
                _ = self.life.fatal.cancelled() => {
                    // A prober died; this task still runs and can leave things writable.
                    self.release_switchover().await;
                    return;
                }
                _ = tick.tick() => {}
                r = self.config.changed() => if r.is_ok() { self.reconfigure() },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => { self.handle(cmd); continue; }
                    None => break,
                },
            }
            self.publish();
        }
        self.release_switchover().await;
        // Off the runtime: with one worker thread, the draining sessions share it.
        let history = self.history.clone();
        let flushed = tokio::task::spawn_blocking(move || history.lock().map(|h| h.flush(Duration::from_secs(5))).unwrap_or(false)).await.unwrap_or(false);
        if !flushed {
            tracing::warn!("the history journal did not reach the disk within 5s of stopping");
        }
    }

    /// Stopping in the middle of a switchover: the old primary must not stay read-only.
    async fn release_switchover(&self) {
        let Some(f) = self.machine.in_flight() else { return };
        if !f.switchover || matches!(f.step, super::machine::Step::Promoting { .. }) {
            return;
        }
        let Some(p) = f.from else { return };
        let b = &self.backends[p.index()];
        match operations::allow_writes(b, self.machine.settings().check_timeout).await {
            Ok(()) => tracing::warn!(primary = %b.name, "stopping during a switchover: the old primary accepts writes again"),
            Err(e) => {
                tracing::error!(primary = %b.name, error = %e, "stopping during a switchover: could not make the old primary writable again (ALTER SYSTEM RESET default_transaction_read_only)")
            }
        }
    }

    /// A reload put a new configuration in force: the machine decides with its settings
    /// from now on (the probers read theirs themselves).
    fn reconfigure(&mut self) {
        let loaded = self.config.borrow_and_update().clone();
        let majority = loaded.failover.quorum == Quorum::Majority;
        let acts = self.machine.reload(Settings::from_config(&loaded), majority, Now::current());
        self.applied = loaded.info.digest.clone();
        self.apply_all(acts);
    }

    fn handle(&mut self, cmd: Command) {
        let now = Now::current();
        let acts = match cmd {
            Command::Observed { i, result, took } => {
                if let Some(h) = self.metrics.health_check_duration.get(i.index()) {
                    h.record(took.as_secs_f64());
                }
                if let Err(e) = &result {
                    self.metrics.check_error(i, e.kind().as_str());
                }
                self.machine.observe(i, result, took, now)
            }
            Command::Promoted { attempt, i, result } => self.machine.promoted(attempt, i, result, now),
            Command::WritesStopped { attempt, i, result } => self.machine.writes_stopped(attempt, i, result, now),
            Command::Replayed { attempt, i, result } => self.machine.replayed(attempt, i, result, now),
            Command::WritesAllowed { attempt, i, result } => self.machine.writes_allowed(attempt, i, result, now),
            Command::Repointed { standby, primary, result } => self.machine.repointed(standby, primary, result, now),
            Command::SynchronousSet { i, value, result } => self.machine.synchronous_applied(i, value, result, now),
            Command::Recorded { i, epoch, rev } => self.machine.record_written(i, epoch, rev, now),
            Command::Trigger { req, reply } => {
                tracing::warn!(who = %req.who, target = req.target.as_deref().unwrap_or("(best standby)"), force = req.force, "manual failover requested");
                match self.machine.trigger(&req, now) {
                    Ok((started, acts)) => {
                        let (tx, outcome) = oneshot::channel();
                        self.waiting.entry(started.attempt).or_default().push(tx);
                        // Publish before replying: the caller reads the status next.
                        self.apply_all(acts);
                        let _ = reply.send(Ok(Triggered { started, outcome }));
                        Vec::new()
                    }
                    Err(r) => {
                        tracing::warn!(who = %req.who, reason = %r, "manual failover refused");
                        let _ = reply.send(Err(r));
                        Vec::new()
                    }
                }
            }
            Command::Unfence { name, who, reply } => match self.machine.unfence(&name, &who, now) {
                Ok(acts) => {
                    self.apply_all(acts);
                    let _ = reply.send(Ok(()));
                    Vec::new()
                }
                Err(r) => {
                    let _ = reply.send(Err(r));
                    Vec::new()
                }
            },
            Command::Drained { id, census } => self.machine.drained(id, census, now),
            Command::Pause(p) => self.machine.set_paused(p, now),
            Command::Maintenance(m) => self.machine.set_maintenance(m, now),
            Command::Sync(reply) => {
                let _ = reply.send(());
                Vec::new()
            }
            #[cfg(feature = "testkit")]
            Command::Crash => panic!("fault injection: the health monitor was told to crash"),
        };
        self.apply_all(acts);
    }

    fn apply_all(&mut self, acts: Vec<Action>) {
        // Operators are answered last, once the status they will read is published.
        let (answers, acts): (Vec<Action>, Vec<Action>) = acts.into_iter().partition(|a| matches!(a, Action::Concluded { .. }));
        for a in acts {
            self.apply(a);
        }
        let m = &self.machine;
        let fences: Fences = m.backends().iter().filter_map(|b| b.fence.clone().map(|f| (b.name.clone(), f))).collect();
        let read_only = m.read_only_left().iter().map(|i| m.backends()[*i].name.clone()).collect();
        let maintenance = m.maintenance().cloned();
        if let Ok(mut h) = self.history.lock() {
            h.set_kept(Kept { fences, read_only, maintenance });
        }
        self.publish();
        self.share();
        for a in answers {
            self.apply(a);
        }
    }

    fn account_no_primary(&mut self) {
        let now = Instant::now();
        if self.machine.route().is_none() || self.route.current().target.is_none() {
            self.metrics.add_no_primary(now - self.last_accounted);
        }
        self.last_accounted = now;
    }

    fn publish(&mut self) {
        self.account_no_primary();
        let m = &self.machine;
        let x = &self.metrics;
        x.failover_state.set(m.state().code() as f64);
        x.failover_total.absolute(m.counters().failovers);
        x.recoveries_total.absolute(m.counters().recoveries);
        x.health_check_failures_total.absolute(m.counters().check_failures);
        x.split_brain_total.absolute(m.counters().split_brains);
        let routed_healthy = m.route().is_some_and(|t| m.backends()[t].healthy);
        x.primary_healthy.set(if routed_healthy { 1.0 } else { 0.0 });
        x.primary_routable.set(if m.route().is_some() { 1.0 } else { 0.0 });
        x.fenced_backends.set(m.backends().iter().filter(|b| b.fence.is_some()).count() as f64);
        x.paused.set(if m.paused().is_some() { 1.0 } else { 0.0 });
        x.maintenance.set(if m.maintenance().is_some() { 1.0 } else { 0.0 });
        x.held_sessions.set(self.gate.held() as f64);
        let (sync, _) = m.sync_health();
        x.synchronous_unprotected.set(if sync == super::machine::SyncHealth::Unprotected { 1.0 } else { 0.0 });
        x.synchronous_blocked.set(if sync == super::machine::SyncHealth::Blocked { 1.0 } else { 0.0 });
        x.synchronous_emptied_total.absolute(m.counters().sync_emptied);
        for (id, b) in m.backends().with_ids() {
            let (i, up) = (id.index(), if b.healthy { 1.0 } else { 0.0 });
            x.backend_healthy[i].set(up);
            if i > 0 {
                x.standby_healthy[i - 1].set(up);
            }
            x.replication_lag_bytes[i].set(m.lag_bytes(id).unwrap_or(0) as f64);
        }
        self.read_route.set(m.read_route(Instant::now()));
        let r = self.route.current();
        let mut status = Status::build(m, &self.backends, r.epoch, &r.reason);
        status.coordination = self.coordination_status();
        status.config_digest = self.applied.clone();
        x.synchronous_standbys.set(status.synchronous.standbys.len() as f64);
        self.coordination_metrics(&status);
        self.status_tx.send_replace(Arc::new(status));
    }
}
