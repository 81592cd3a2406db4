//! Prometheus metrics, one recorder per proxy instance.
//!
//! The recorder is never installed globally: every handle is registered on this instance's
//! recorder, so several proxies in one process (tests) keep separate figures. The seed's
//! series keep their exact names; everything else is `pgfailover_*`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::cluster::BackendId;

/// The `kind` label values of `pgfailover_health_check_errors_total` (the monitor's
/// `ErrorKind` names).
pub const CHECK_ERROR_KINDS: [&str; 3] = ["down", "misconfigured", "overloaded"];

/// Why a session ended, as the `reason` label of `pgfailover_sessions_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    ServerClosed,
    /// The route moved away from the session's backend (failover, fence).
    RouteChanged,
    Shutdown,
    Error,
    /// The client's first bytes were no startup packet (an impossible length).
    InvalidStartup,
    /// The route moved away from a quiet session's backend: it ended with a FATAL 57P01
    /// between two statements (nothing of it was running).
    EndedQuiet,
}

impl CloseReason {
    pub const ALL: [CloseReason; 7] = [
        CloseReason::ClientClosed,
        CloseReason::ServerClosed,
        CloseReason::RouteChanged,
        CloseReason::Shutdown,
        CloseReason::Error,
        CloseReason::InvalidStartup,
        CloseReason::EndedQuiet,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ServerClosed => "server_closed",
            CloseReason::RouteChanged => "route_changed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
            CloseReason::InvalidStartup => "invalid_startup",
            CloseReason::EndedQuiet => "ended_quiet",
        }
    }
}

/// Handles to every series of one proxy; cheap to clone out and update from any task.
pub struct Metrics {
    /// Renders this instance's series; the recorder itself lives as long as the handles.
    handle: PrometheusHandle,
    _recorder: PrometheusRecorder,
    connections_active: Gauge,
    connections_accepted: Counter,
    connections_held: Counter,
    connections_refused: Counter,
    connections_over_limit: Counter,
    read_refused: Counter,
    read_fallback: Counter,
    /// Per backend: open read-only sessions (the series is synced at render).
    read_sessions_gauge: Vec<Gauge>,
    read_sessions: Vec<AtomicU64>,
    bytes_client_to_server: Counter,
    bytes_server_to_client: Counter,
    /// Per backend, config order.
    pub backend_connect_errors: Vec<Counter>,
    sessions_closed: Vec<Counter>,
    pub failover_state: Gauge,
    pub failover_total: Counter,
    pub recoveries_total: Counter,
    pub health_check_failures_total: Counter,
    pub primary_healthy: Gauge,
    /// Per configured standby (label = standby index, as the seed).
    pub standby_healthy: Vec<Gauge>,
    /// Per backend, config order.
    pub backend_healthy: Vec<Gauge>,
    pub health_check_duration: Vec<Histogram>,
    /// Per backend, then per kind in [`CHECK_ERROR_KINDS`] order.
    health_check_errors: Vec<Vec<Counter>>,
    pub replication_lag_bytes: Vec<Gauge>,
    pub failover_duration: Histogram,
    pub split_brain_total: Counter,
    /// Configuration reloads (SIGHUP): applied, and refused.
    pub config_reloads_ok: Counter,
    pub config_reloads_error: Counter,
    pub fenced_backends: Gauge,
    /// 1 when this proxy coordinates through etcd.
    pub coordination_enabled: Gauge,
    pub coordination_leader: Gauge,
    pub coordination_etcd_up: Gauge,
    pub coordination_lease_failures: Counter,
    /// Connections to the control socket from a process of another user, refused.
    pub takeover_refused: Counter,
    /// Per backend: 1 for the one this proxy routes new sessions to.
    pub routed_primary: Vec<Gauge>,
    pub primary_routable: Gauge,
    /// 1 while the operator's pause holds everything.
    pub paused: Gauge,
    /// Sessions held by a pause or a switchover's drain: quiet sessions whose next statement
    /// waits, and new sessions waiting to connect.
    pub held_sessions: Gauge,
    /// 1 while maintenance mode is on.
    pub maintenance: Gauge,
    /// Synchronous mode: standbys the routed primary counts as synchronous now.
    pub synchronous_standbys: Gauge,
    /// 1 while `synchronous = "on"` runs the primary's writes unprotected (list emptied).
    pub synchronous_unprotected: Gauge,
    /// 1 while `synchronous = "strict"` keeps the primary's writes waiting.
    pub synchronous_blocked: Gauge,
    /// Times `synchronous = "on"` emptied the primary's list.
    pub synchronous_emptied_total: Counter,
    /// Microseconds without a routable primary; rendered as a float `_seconds_total`.
    no_primary_micros: AtomicU64,
    /// The data-path figures, read by the JSON API and copied into the Prometheus series
    /// when those are rendered (Prometheus handles are write-only).
    pub stats: Stats,
}

/// Data-path figures the JSON API reports; updated beside the Prometheus series.
#[derive(Default, Debug)]
pub struct Stats {
    pub active: AtomicU64,
    pub accepted: AtomicU64,
    pub held: AtomicU64,
    pub refused: AtomicU64,
    pub over_limit: AtomicU64,
    pub read_refused: AtomicU64,
    pub read_fallback: AtomicU64,
    /// Bytes spliced, client to server and back, per thread (see [`Spread`]).
    pub bytes: Spread,
    pub connect_errors: AtomicU64,
}

impl Stats {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
}

/// Slots a thread may count in; threads beyond share them.
const SPREAD_SLOTS: usize = 16;

/// A pair of counters every chunk of every session adds to, kept apart per thread: each
/// data-path thread writes a cache line of its own, so counting costs no line moving between
/// cores on every chunk; a reader sums the slots.
#[derive(Default, Debug)]
pub struct Spread {
    slots: [Slot; SPREAD_SLOTS],
}

/// One thread's counters, alone on their cache line(s).
#[derive(Default, Debug)]
#[repr(align(128))]
struct Slot {
    up: AtomicU64,
    down: AtomicU64,
}

thread_local! {
    /// This thread's slot, given out in turn as threads first count.
    static SLOT: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SPREAD_SLOTS
    };
}

impl Spread {
    pub fn add(&self, up: bool, n: u64) {
        let slot = &self.slots[SLOT.with(|s| *s)];
        if up { &slot.up } else { &slot.down }.fetch_add(n, Ordering::Relaxed);
    }

    /// Client to server, server to client.
    pub fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(u, d), s| (u + s.up.load(Ordering::Relaxed), d + s.down.load(Ordering::Relaxed)))
    }
}

fn meta() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

impl Metrics {
    /// Registers every series for these backends (names in config order; the first is the
    /// configured primary, the rest standbys).
    pub fn new(backend_names: &[String]) -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            .expect("static bucket list is not empty")
            .build_recorder();
        let r = &recorder;
        let counter = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            r.describe_counter(name.into(), None, help.into());
            r.register_counter(&Key::from_parts(name, labels), &meta())
        };
        let gauge = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            r.describe_gauge(name.into(), None, help.into());
            r.register_gauge(&Key::from_parts(name, labels), &meta())
        };
        let histogram = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            r.describe_histogram(name.into(), Some(Unit::Seconds), help.into());
            r.register_histogram(&Key::from_parts(name, labels), &meta())
        };
        let per_backend = |label: &'static str| -> Vec<Vec<Label>> { backend_names.iter().map(|n| vec![Label::new(label, n.clone())]).collect() };
        let standby_count = backend_names.len().saturating_sub(1);
        Metrics {
            connections_active: gauge("pgfailover_client_connections_active", "Client sessions currently spliced to a backend or held.", vec![]),
            connections_accepted: counter("pgfailover_client_connections_accepted_total", "Client connections accepted.", vec![]),
            connections_held: counter("pgfailover_client_connections_held_total", "Client connections that had to wait for a routable primary.", vec![]),
            connections_refused: counter("pgfailover_client_connections_refused_total", "Client connections refused with SQLSTATE 57P03.", vec![]),
            read_refused: counter("pgfailover_read_refused_total", "Read-only port clients refused with 57P03 (no standby qualified, as read.fallback says).", vec![]),
            read_fallback: counter("pgfailover_read_fallback_total", "Read-only port sessions sent to the primary because no standby qualified (read.fallback = primary).", vec![]),
            read_sessions_gauge: per_backend("backend").into_iter().map(|l| gauge("pgfailover_read_sessions", "Open read-only port sessions per backend.", l)).collect(),
            read_sessions: backend_names.iter().map(|_| AtomicU64::new(0)).collect(),
            connections_over_limit: counter("pgfailover_client_connections_over_limit_total", "Client connections refused with SQLSTATE 53300 because proxy.max_client_connections were open.", vec![]),
            bytes_client_to_server: counter("pgfailover_client_to_server_bytes_total", "Bytes spliced from clients to backends.", vec![]),
            bytes_server_to_client: counter("pgfailover_server_to_client_bytes_total", "Bytes spliced from backends to clients.", vec![]),
            backend_connect_errors: per_backend("backend").into_iter().map(|l| counter("pgfailover_backend_connect_errors_total", "Failed attempts to open a client session on a backend (connect refused or timed out, startup refused with 57P01/57P02/57P03, closed or silent before its first answer).", l)).collect(),
            sessions_closed: CloseReason::ALL.iter().map(|c| counter("pgfailover_sessions_closed_total", "Client sessions ended, by reason.", vec![Label::new("reason", c.as_str())])).collect(),
            failover_state: gauge("failover_state", "Failover state: 0 unknown, 1 healthy, 2 degraded, 3 failover_in_progress, 4 failover_complete, 5 recovery_in_progress.", vec![]),
            failover_total: counter("failover_total", "Completed failovers (automatic and manual).", vec![]),
            recoveries_total: counter("failover_recoveries_total", "Backends that became healthy again after being unhealthy.", vec![]),
            health_check_failures_total: counter("failover_health_check_failures_total", "Failed health checks, all backends.", vec![]),
            primary_healthy: gauge("failover_primary_healthy", "1 while the current primary is healthy and routable.", vec![]),
            standby_healthy: (0..standby_count).map(|i| gauge("failover_standby_healthy", "1 while the configured standby (by index) is healthy.", vec![Label::new("standby", i.to_string())])).collect(),
            backend_healthy: per_backend("backend").into_iter().map(|l| gauge("pgfailover_backend_healthy", "1 while the backend's checks succeed (below the failure threshold).", l)).collect(),
            health_check_errors: per_backend("backend")
                .into_iter()
                .map(|l| {
                    CHECK_ERROR_KINDS
                        .iter()
                        .map(|k| {
                            let mut labels = l.clone();
                            labels.push(Label::new("kind", *k));
                            counter("pgfailover_health_check_errors_total", "Failed health checks by backend and kind: down (counts toward a failover), misconfigured (authentication, database, privileges, TLS), overloaded (too many clients).", labels)
                        })
                        .collect()
                })
                .collect(),
            health_check_duration: per_backend("backend").into_iter().map(|l| histogram("pgfailover_health_check_duration_seconds", "Duration of one health check (connect + query).", l)).collect(),
            replication_lag_bytes: per_backend("backend").into_iter().map(|l| gauge("pgfailover_replication_lag_bytes", "WAL bytes a standby is behind the primary's last seen position.", l)).collect(),
            failover_duration: histogram("pgfailover_failover_duration_seconds", "Time from the start of a failover to the route switch.", vec![]),
            split_brain_total: counter("failover_split_brain_total", "Times two backends claimed to be primary and one was fenced.", vec![]),
            config_reloads_ok: counter("pgfailover_config_reloads_total", "Configuration reloads (SIGHUP), by result: ok (applied) or error (refused; the previous configuration stays).", vec![Label::new("result", "ok")]),
            config_reloads_error: counter("pgfailover_config_reloads_total", "Configuration reloads (SIGHUP), by result: ok (applied) or error (refused; the previous configuration stays).", vec![Label::new("result", "error")]),
            coordination_enabled: gauge("pgfailover_coordination_enabled", "1 when this proxy coordinates with others through etcd.", vec![]),
            coordination_leader: gauge("pgfailover_coordination_leader", "1 while this proxy leads the coordinated proxies (only the leader promotes).", vec![]),
            coordination_etcd_up: gauge("pgfailover_coordination_etcd_up", "1 while etcd answers this proxy.", vec![]),
            coordination_lease_failures: counter("pgfailover_coordination_lease_renewal_failures_total", "Failed renewals of this proxy's etcd lease.", vec![]),
            takeover_refused: counter(
                "pgfailover_takeover_refused_total",
                "Connections to the takeover control socket refused because the peer runs as another user (not this process's user or root).",
                vec![],
            ),
            routed_primary: per_backend("backend").into_iter().map(|l| gauge("pgfailover_routed_primary", "1 for the backend this proxy routes new sessions to.", l)).collect(),
            fenced_backends: gauge("pgfailover_fenced_backends", "Backends currently fenced (no traffic).", vec![]),
            primary_routable: gauge("pgfailover_primary_routable", "1 while new client connections have a primary to go to.", vec![]),
            paused: gauge("pgfailover_paused", "1 while an operator's pause holds new sessions and quiet sessions' next statements (POST /failover/pause).", vec![]),
            held_sessions: gauge("pgfailover_held_sessions", "Sessions held by a pause or a switchover's drain: quiet sessions whose next statement waits, and new sessions waiting to connect.", vec![]),
            maintenance: gauge("pgfailover_maintenance", "1 while maintenance mode is on (no automatic failover or switchover).", vec![]),
            synchronous_standbys: gauge("pgfailover_synchronous_standbys", "Standbys the routed primary counts as synchronous now (streaming, in its synchronous_standby_names).", vec![]),
            synchronous_unprotected: gauge("pgfailover_synchronous_unprotected", "1 while failover.synchronous = on has emptied the primary's synchronous_standby_names: writes are acknowledged without a standby, and no automatic failover is possible.", vec![]),
            synchronous_blocked: gauge("pgfailover_synchronous_blocked", "1 while failover.synchronous = strict keeps the primary's writes waiting: no standby can be synchronous.", vec![]),
            synchronous_emptied_total: counter("pgfailover_synchronous_emptied_total", "Times failover.synchronous = on emptied the primary's synchronous_standby_names because no standby was left.", vec![]),
            no_primary_micros: AtomicU64::new(0),
            stats: Stats::default(),
            handle: recorder.handle(),
            _recorder: recorder,
        }
    }

    /// Counts a failed health check of `backend` by kind (one of [`CHECK_ERROR_KINDS`]).
    pub fn check_error(&self, backend: BackendId, kind: &str) {
        let k = CHECK_ERROR_KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        if let Some(c) = self.health_check_errors.get(backend.index()).and_then(|v| v.get(k)) {
            c.increment(1);
        }
    }

    pub fn accepted(&self) {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn held(&self) {
        self.stats.held.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read_refused(&self) {
        self.stats.read_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read_fallback(&self) {
        self.stats.read_fallback.fetch_add(1, Ordering::Relaxed);
    }

    /// Open read sessions on `backend` now.
    pub fn read_sessions(&self, backend: BackendId) -> u64 {
        self.read_sessions.get(backend.index()).map(|a| a.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Tracks one read session on `backend`; the guard ends it.
    pub fn read_session_started(&self, backend: BackendId) -> ReadGuard<'_> {
        if let Some(a) = self.read_sessions.get(backend.index()) {
            a.fetch_add(1, Ordering::Relaxed);
        }
        ReadGuard(self, backend)
    }

    pub fn over_limit(&self) {
        self.stats.over_limit.fetch_add(1, Ordering::Relaxed);
    }

    /// Client sessions open now (spliced, held, or opening).
    pub fn active_sessions(&self) -> usize {
        self.stats.active.load(Ordering::Relaxed) as usize
    }

    pub fn connect_error(&self, backend: BackendId) {
        if let Some(c) = self.backend_connect_errors.get(backend.index()) {
            c.increment(1);
        }
        self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Tracks one active session; the returned guard decrements on drop, whatever the exit.
    pub fn session_started(&self) -> ActiveGuard<'_> {
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self)
    }

    pub fn session_closed(&self, reason: CloseReason) {
        let i = CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.sessions_closed[i].increment(1);
    }

    /// Adds time spent without a routable primary.
    pub fn add_no_primary(&self, d: std::time::Duration) {
        self.no_primary_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn no_primary_seconds(&self) -> f64 {
        self.no_primary_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Adds spliced bytes: one relaxed atomic add, the only metrics work on the hot path.
    pub fn add_bytes(&self, client_to_server: bool, n: u64) {
        self.stats.bytes.add(client_to_server, n);
    }

    /// The data path counts only in `stats`; its Prometheus series are brought up to date
    /// here, when they are read, instead of being incremented twice per chunk.
    fn sync_data_path(&self) {
        let st = &self.stats;
        self.connections_active.set(Stats::get(&st.active) as f64);
        self.connections_accepted.absolute(Stats::get(&st.accepted));
        self.connections_held.absolute(Stats::get(&st.held));
        self.connections_refused.absolute(Stats::get(&st.refused));
        self.connections_over_limit.absolute(Stats::get(&st.over_limit));
        self.read_refused.absolute(Stats::get(&st.read_refused));
        self.read_fallback.absolute(Stats::get(&st.read_fallback));
        for (g, n) in self.read_sessions_gauge.iter().zip(&self.read_sessions) {
            g.set(n.load(Ordering::Relaxed) as f64);
        }
        let (up, down) = st.bytes.totals();
        self.bytes_client_to_server.absolute(up);
        self.bytes_server_to_client.absolute(down);
    }

    /// The Prometheus text exposition of this instance.
    pub fn render(&self) -> String {
        self.sync_data_path();
        let mut out = self.handle.render();
        let _ = write!(
            out,
            "# HELP pgfailover_no_primary_seconds_total Seconds during which no primary was routable.\n\
             # TYPE pgfailover_no_primary_seconds_total counter\n\
             pgfailover_no_primary_seconds_total {}\n",
            self.no_primary_seconds()
        );
        out
    }
}

/// Ends a read session's count on its backend.
pub struct ReadGuard<'a>(&'a Metrics, BackendId);

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.0.read_sessions.get(self.1.index()) {
            a.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Decrements the active-session gauge when a session ends.
pub struct ActiveGuard<'a>(&'a Metrics);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}
