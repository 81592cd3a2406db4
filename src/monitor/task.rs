//! The monitor task: feeds check results and commands into the [`Machine`], carries out its
//! actions, keeps metrics and the published [`Status`] current. It owns the route writer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BackendConfig, Config};
use crate::metrics::Metrics;
use crate::route::RouteWriter;

use super::history::{Event, EventKind, History};
use super::machine::{Action, Machine, Now, Refusal, Settings};
use super::observation::Observation;
use super::probe::{self, Prober};
use super::status::Status;

/// Requests to a prober: check now, and acknowledge once the result reached the monitor.
type CheckNow = Option<oneshot::Sender<()>>;

enum Command {
    Observed { i: usize, result: Result<Observation, String>, took: Duration },
    Promoted { i: usize, result: Result<Observation, String> },
    Trigger { target: Option<String>, who: String, reply: oneshot::Sender<Result<String, Refusal>> },
    Unfence { name: String, who: String, reply: oneshot::Sender<Result<(), Refusal>> },
    /// Answered after every earlier command was handled.
    Sync(oneshot::Sender<()>),
}

/// How the rest of the proxy talks to the monitor. Cheap to clone.
#[derive(Clone)]
pub struct MonitorHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Arc<Status>>,
    /// Shared with the monitor; a std mutex because every critical section is a push or a
    /// short copy, never held across an await.
    history: Arc<Mutex<History>>,
    probe_now: Arc<[mpsc::Sender<CheckNow>]>,
}

/// The monitor stopped (proxy shutting down).
pub const STOPPED: &str = "the monitor is not running (proxy shutting down)";

impl MonitorHandle {
    pub fn status(&self) -> Arc<Status> {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }

    /// Newest first.
    pub fn history(&self, limit: usize) -> Vec<Event> {
        self.history.lock().map(|h| h.newest(limit)).unwrap_or_default()
    }

    /// Starts a manual failover; returns the standby being promoted.
    pub async fn trigger(&self, target: Option<String>, who: String) -> Result<String, Refusal> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Trigger { target, who, reply }).await.map_err(|_| Refusal::Conflict(STOPPED.into()))?;
        rx.await.map_err(|_| Refusal::Conflict(STOPPED.into()))?
    }

    pub async fn unfence(&self, name: String, who: String) -> Result<(), Refusal> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Unfence { name, who, reply }).await.map_err(|_| Refusal::Conflict(STOPPED.into()))?;
        rx.await.map_err(|_| Refusal::Conflict(STOPPED.into()))?
    }

    /// Runs every check now and returns the status that includes their results.
    pub async fn check_now(&self, limit: Duration) -> Arc<Status> {
        let acks: Vec<_> = self
            .probe_now
            .iter()
            .map(|p| {
                let (tx, rx) = oneshot::channel();
                let p = p.clone();
                async move {
                    if p.send(Some(tx)).await.is_ok() {
                        let _ = rx.await;
                    }
                }
            })
            .collect();
        let _ = tokio::time::timeout(limit, futures_util::future::join_all(acks)).await;
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Sync(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.status()
    }
}

/// Starts the probers, the passive-signal forwarder and the monitor on `tracker`.
pub fn spawn(
    cfg: &Config,
    backends: Arc<[BackendConfig]>,
    route: RouteWriter,
    metrics: Arc<Metrics>,
    history: History,
    mut passive: mpsc::Receiver<usize>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> MonitorHandle {
    let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
    let fenced: Vec<String> = history.fenced().into_iter().filter(|n| names.contains(n)).collect();
    if !fenced.is_empty() {
        tracing::warn!(?fenced, "restored fences from the history journal");
    }
    let settings = Settings {
        failure_threshold: cfg.health.failure_threshold,
        max_lag_bytes: cfg.failover.max_lag_bytes,
        promote: cfg.failover.promote,
        check_timeout: cfg.health.timeout,
    };
    let machine = Machine::new(settings, &names, &fenced);
    let (commands, rx) = mpsc::channel(256);
    let first = Status::build(&machine, &backends, route.current().epoch, &route.current().reason);
    let (status_tx, status) = watch::channel(Arc::new(first));
    let history = Arc::new(Mutex::new(history));

    let mut probe_now = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let (now_tx, now_rx) = mpsc::channel(8);
        probe_now.push(now_tx);
        let p = ProberTask {
            i,
            backend: b.clone(),
            interval: cfg.health.interval,
            timeout: cfg.health.timeout,
            commands: commands.clone(),
            now_rx,
            shutdown: shutdown.clone(),
        };
        tracker.spawn(p.run());
    }
    let probe_now: Arc<[_]> = probe_now.into();
    let forward = probe_now.clone();
    let stop = shutdown.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                i = passive.recv() => match i {
                    Some(i) => { if let Some(p) = forward.get(i) { let _ = p.try_send(None); } }
                    None => break,
                },
            }
        }
    });
    let task = MonitorTask {
        machine,
        route,
        backends,
        metrics,
        history: history.clone(),
        status_tx,
        commands: commands.clone(),
        promote_timeout: cfg.failover.promote_timeout,
        check_timeout: cfg.health.timeout,
        tracker: tracker.clone(),
        last_accounted: Instant::now(),
    };
    tracker.spawn(task.run(rx, shutdown));
    MonitorHandle { commands, status, history, probe_now }
}

struct ProberTask {
    i: usize,
    backend: BackendConfig,
    interval: Duration,
    timeout: Duration,
    commands: mpsc::Sender<Command>,
    now_rx: mpsc::Receiver<CheckNow>,
    shutdown: CancellationToken,
}

impl ProberTask {
    async fn run(mut self) {
        let (broken_tx, mut broken_rx) = mpsc::channel(1);
        let mut prober = match Prober::new(self.backend.clone(), self.timeout, Some(broken_tx)) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(backend = %self.backend.name, error = %e, "cannot check this backend");
                return;
            }
        };
        // After a failure the next check comes sooner, so a crash reaches the threshold in
        // a fraction of the interval; a timed-out check already waited its share.
        let fast = (self.interval / 4).clamp(Duration::from_millis(10), self.interval);
        let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = prober.check() => r,
                _ = self.shutdown.cancelled() => return,
            };
            let took = started.elapsed();
            let failed = result.is_err();
            if let Err(e) = &result {
                tracing::info!(backend = %self.backend.name, error = %e, took_ms = took.as_millis() as u64, "health check failed");
            }
            if self.commands.send(Command::Observed { i: self.i, result, took }).await.is_err() {
                return;
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            let delay = if failed { fast.saturating_sub(took) } else { self.interval };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                req = self.now_rx.recv() => match req {
                    Some(ack) => acks.extend(ack),
                    None => return,
                },
                _ = broken_rx.recv() => {}
                _ = self.shutdown.cancelled() => return,
            }
            while let Ok(more) = self.now_rx.try_recv() {
                acks.extend(more);
            }
        }
    }
}

struct MonitorTask {
    machine: Machine,
    route: RouteWriter,
    backends: Arc<[BackendConfig]>,
    metrics: Arc<Metrics>,
    history: Arc<Mutex<History>>,
    status_tx: watch::Sender<Arc<Status>>,
    /// For promotion tasks to report back.
    commands: mpsc::Sender<Command>,
    promote_timeout: Duration,
    check_timeout: Duration,
    tracker: TaskTracker,
    /// Up to when time without a primary has been added to the metric.
    last_accounted: Instant,
}

impl MonitorTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                cmd = rx.recv() => match cmd {
                    Some(cmd) => { self.handle(cmd); continue; }
                    None => break,
                },
            }
            self.publish();
        }
    }

    fn handle(&mut self, cmd: Command) {
        let now = Now::now();
        let acts = match cmd {
            Command::Observed { i, result, took } => {
                if let Some(h) = self.metrics.health_check_duration.get(i) {
                    h.record(took.as_secs_f64());
                }
                if let Err(e) = &result {
                    tracing::debug!(backend = %self.backends[i].name, error = %e, "health check failed");
                }
                self.machine.observe(i, result, now)
            }
            Command::Promoted { i, result } => self.machine.promoted(i, result, now),
            Command::Trigger { target, who, reply } => {
                tracing::warn!(%who, target = target.as_deref().unwrap_or("(best standby)"), "manual failover requested");
                match self.machine.trigger(target.as_deref(), &who, now) {
                    Ok((name, acts)) => {
                        // Publish before replying: the caller reads the status next.
                        self.apply_all(acts);
                        let _ = reply.send(Ok(name));
                        Vec::new()
                    }
                    Err(r) => {
                        tracing::warn!(%who, reason = %r, "manual failover refused");
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
            Command::Sync(reply) => {
                let _ = reply.send(());
                Vec::new()
            }
        };
        self.apply_all(acts);
    }

    fn apply_all(&mut self, acts: Vec<Action>) {
        for a in acts {
            self.apply(a);
        }
        self.publish();
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Route { target, reason } => {
                self.account_no_primary();
                if self.route.set(target, &reason) {
                    match target {
                        Some(t) => tracing::info!(primary = %self.backends[t].name, epoch = self.route.current().epoch, "route: new sessions go to the primary"),
                        None => tracing::warn!(%reason, "route: no primary; new sessions are held"),
                    }
                }
            }
            Action::Promote(i) => {
                let b = self.backends[i].clone();
                let tx = self.commands.clone();
                let (pt, ct) = (self.promote_timeout, self.check_timeout);
                self.tracker.spawn(async move {
                    let result = probe::promote(&b, pt, ct).await;
                    let _ = tx.send(Command::Promoted { i, result }).await;
                });
            }
            Action::Record(e) => {
                match e.kind {
                    EventKind::Recovery | EventKind::Unfence => tracing::info!(kind = ?e.kind, from = ?e.from, reason = %e.reason, "history"),
                    _ => tracing::warn!(kind = ?e.kind, from = ?e.from, to = ?e.to, reason = %e.reason, trigger = %e.trigger, duration_ms = ?e.duration_ms, wal_distance_bytes = ?e.wal_distance_bytes, "history"),
                }
                if let Ok(mut h) = self.history.lock() {
                    h.push(e);
                }
            }
            Action::FailoverDone(d) => self.metrics.failover_duration.record(d.as_secs_f64()),
        }
    }

    fn account_no_primary(&mut self) {
        let now = Instant::now();
        if self.machine.route.is_none() || self.route.current().target.is_none() {
            self.metrics.add_no_primary(now - self.last_accounted);
        }
        self.last_accounted = now;
    }

    fn publish(&mut self) {
        self.account_no_primary();
        let m = &self.machine;
        let x = &self.metrics;
        x.failover_state.set(m.state.code() as f64);
        x.failover_total.absolute(m.counters.failovers);
        x.recoveries_total.absolute(m.counters.recoveries);
        x.health_check_failures_total.absolute(m.counters.check_failures);
        x.split_brain_total.absolute(m.counters.split_brains);
        let routed_healthy = m.route.is_some_and(|t| m.backends[t].healthy);
        x.primary_healthy.set(if routed_healthy { 1.0 } else { 0.0 });
        x.primary_routable.set(if m.route.is_some() { 1.0 } else { 0.0 });
        x.fenced_backends.set(m.backends.iter().filter(|b| b.fence.is_some()).count() as f64);
        for (i, b) in m.backends.iter().enumerate() {
            let up = if b.healthy { 1.0 } else { 0.0 };
            x.backend_healthy[i].set(up);
            if i > 0 {
                x.standby_healthy[i - 1].set(up);
            }
            x.replication_lag_bytes[i].set(m.lag_bytes(i).unwrap_or(0) as f64);
        }
        let r = self.route.current();
        let status = Status::build(m, &self.backends, r.epoch, &r.reason);
        self.status_tx.send_replace(Arc::new(status));
    }
}
