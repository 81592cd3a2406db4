use std::time::Duration;

use super::*;
use crate::config::PromoteMode;
use crate::monitor::check_error::CheckError;
use crate::monitor::observation::Observation;
use crate::monitor::observation::Receiver;
use crate::monitor::operations::{OpError, PromoteError, Repointed};

mod coordinated;
mod drain;
mod failover;
mod policy;
mod safety;
mod synchronous;

const SYSID: u64 = 7_000_000_000_000_000_001;

fn settings(promote: PromoteMode) -> Settings {
    Settings {
        failure_threshold: 3,
        max_lag_bytes: 1000,
        promote,
        check_timeout: Duration::from_millis(250),
        interval: Duration::from_millis(250),
        repoint_standbys: true,
        switchover_wait: Duration::from_secs(2),
        promote_timeout: Duration::from_secs(1),
        read: crate::config::Config::default().read,
        // No drain: a switchover stops writes at once (tests/drain.rs covers the drain).
        drain_timeout: Duration::ZERO,
        synchronous: crate::config::SyncMode::Off,
        synchronous_count: 1,
        zone_policy: crate::config::ZonePolicy::PreferSame,
        // One default policy per backend (the machine fits the list to its backends).
        policies: Vec::new(),
    }
}

fn machine(n: usize, promote: PromoteMode) -> Machine {
    let names: Vec<String> = (0..n).map(|i| format!("pg-{}", (b'a' + i as u8) as char)).collect();
    Machine::new(settings(promote), &names, &[])
}

fn primary(lsn: u64, tl: u32) -> Observation {
    Observation {
        in_recovery: false,
        system_identifier: SYSID,
        timeline: Some(tl),
        current_lsn: Some(lsn),
        receive_lsn: None,
        replay_lsn: None,
        response_time: Duration::from_millis(2),
        receiver: None,
        replay_delay: None,
        sync_names: Some(String::new()),
        senders: Vec::new(),
    }
}

/// A standby streaming on timeline `tl`.
fn standby(lsn: u64, tl: u32) -> Observation {
    Observation {
        in_recovery: true,
        system_identifier: SYSID,
        timeline: Some(tl),
        current_lsn: None,
        receive_lsn: Some(lsn),
        replay_lsn: Some(lsn),
        response_time: Duration::from_millis(2),
        receiver: Some(Receiver { status: "streaming".into(), timeline: Some(tl), upstream: None }),
        replay_delay: Some(Duration::ZERO),
        sync_names: Some(String::new()),
        senders: Vec::new(),
    }
}

/// A standby on timeline `tl` whose WAL receiver does not run.
fn stranded(lsn: u64, tl: u32) -> Observation {
    Observation { receiver: None, ..standby(lsn, tl) }
}

/// A clock that moves 100 ms per input, so durations are checkable.
struct Clock(Now);

impl Clock {
    fn new() -> Clock {
        Clock(Now::current())
    }
    fn tick(&mut self) -> Now {
        self.0.mono += Duration::from_millis(100);
        self.0.wall += Duration::from_millis(100);
        self.0
    }
}

/// `pg-a`, the configured primary (for patterns).
const PG_A: BackendId = BackendId::new(0);

/// Backend `i` in config order (`pg-a` is 0).
fn b(i: usize) -> BackendId {
    BackendId::new(i)
}

/// The targets of the routes published, by index.
fn routes(acts: &[Action]) -> Vec<Option<usize>> {
    acts.iter().filter_map(|a| if let Action::Route { target, .. } = a { Some(target.map(BackendId::index)) } else { None }).collect()
}

/// The backends whose promotion was asked for, by index.
fn promotes(acts: &[Action]) -> Vec<usize> {
    acts.iter().filter_map(|a| if let Action::Promote { backend, .. } = a { Some(backend.index()) } else { None }).collect()
}

fn attempt_of(acts: &[Action]) -> u64 {
    acts.iter()
        .find_map(|a| match a {
            Action::Promote { attempt, .. }
            | Action::StopWrites { attempt, .. }
            | Action::AwaitReplay { attempt, .. }
            | Action::AllowWrites { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .expect("an operation was asked for")
}

fn events(acts: &[Action]) -> Vec<Event> {
    acts.iter().filter_map(|a| if let Action::Record(e) = a { Some(e.clone()) } else { None }).collect()
}

fn kinds(acts: &[Action]) -> Vec<EventKind> {
    events(acts).iter().map(|e| e.kind).collect()
}

fn concluded(acts: &[Action]) -> Option<Outcome> {
    acts.iter().find_map(|a| if let Action::Concluded { outcome, .. } = a { Some(outcome.clone()) } else { None })
}

fn see(m: &mut Machine, c: &mut Clock, i: usize, obs: Observation) -> Vec<Action> {
    m.observe(b(i), Ok(obs), Duration::ZERO, c.tick())
}

fn refused() -> CheckError {
    CheckError::Unreachable("connection refused".into())
}

fn fail(m: &mut Machine, c: &mut Clock, i: usize, times: u32) -> Vec<Action> {
    fail_with(m, c, i, times, refused)
}

fn fail_with(m: &mut Machine, c: &mut Clock, i: usize, times: u32, e: impl Fn() -> CheckError) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..times {
        all.extend(m.observe(b(i), Err(e()), Duration::ZERO, c.tick()));
    }
    all
}

/// pg-a primary at LSN 5000, pg-b (and pg-c) standbys close behind: healthy and routed
/// (once every backend has been checked).
fn running(n: usize, promote: PromoteMode) -> (Machine, Clock) {
    let mut m = machine(n, promote);
    let mut c = Clock::new();
    let mut acts = Vec::new();
    for i in (1..n).rev() {
        acts.extend(see(&mut m, &mut c, i, standby(4900 - i as u64, 1)));
    }
    acts.extend(see(&mut m, &mut c, 0, primary(5000, 1)));
    assert_eq!(routes(&acts), [Some(0)]);
    (m, c)
}

/// The primary dies: three failures (route cleared), the standbys answer with their final
/// positions, and the primary keeps failing until a promotion is asked for (at most
/// `limit` more checks). Returns every action.
fn lose_primary(m: &mut Machine, c: &mut Clock, finals: &[(usize, Observation)]) -> Vec<Action> {
    let mut acts = fail(m, c, 0, 3);
    for (i, o) in finals {
        acts.extend(see(m, c, *i, o.clone()));
    }
    for _ in 0..8 {
        if !promotes(&acts).is_empty() {
            break;
        }
        acts.extend(fail(m, c, 0, 1));
    }
    acts
}

/// `running(n)` and the primary lost with the standbys where they were.
fn lost(n: usize) -> (Machine, Clock, Vec<Action>) {
    let (mut m, mut c) = running(n, PromoteMode::Auto);
    let finals: Vec<(usize, Observation)> = (1..n).map(|i| (i, standby(4900 - i as u64, 1))).collect();
    let acts = lose_primary(&mut m, &mut c, &finals);
    (m, c, acts)
}

#[test]
fn starts_healthy_degraded_or_unknown() {
    let (m, _) = running(2, PromoteMode::Auto);
    assert_eq!((m.state, m.route), (State::Healthy, Some(b(0))));
    assert_eq!(m.lag_bytes(b(1)), Some(101));
    assert!(m.eligible(b(1)) && !m.eligible(b(0)));

    let (m, _) = running(1, PromoteMode::Auto);
    assert_eq!(m.state, State::Degraded, "primary only");

    let mut m = machine(2, PromoteMode::Auto);
    let mut c = Clock::new();
    fail(&mut m, &mut c, 0, 3);
    fail(&mut m, &mut c, 1, 3);
    assert_eq!((m.state, m.route), (State::Unknown, None), "nothing answers");
}

#[test]
fn foreign_cluster_is_never_eligible() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let mut o = standby(4999, 1);
    o.system_identifier = 42;
    see(&mut m, &mut c, 1, o.clone());
    assert!(m.not_eligible(b(1)).unwrap().contains("another cluster"));
    assert!(promotes(&lose_primary(&mut m, &mut c, &[(1, o)])).is_empty());
}

#[test]
fn restart_routes_to_the_real_primary_not_the_configured_one() {
    let mut m = machine(2, PromoteMode::Auto);
    let mut c = Clock::new();
    let acts = see(&mut m, &mut c, 0, standby(100, 2));
    assert!(routes(&acts).is_empty());
    let acts = see(&mut m, &mut c, 1, primary(200, 2));
    assert_eq!(routes(&acts), [Some(1)]);

    // The first route waits until every backend was checked: a stale old primary (timeline
    // 1) heard from first is not routed, and no standby is re-pointed at it.
    let mut m = machine(3, PromoteMode::Auto);
    let acts = see(&mut m, &mut c, 0, primary(100, 1));
    assert!(routes(&acts).is_empty(), "pg-b and pg-c not checked yet");
    let mut acts = see(&mut m, &mut c, 2, standby(300, 2));
    acts.extend(see(&mut m, &mut c, 1, primary(300, 2)));
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(m.backends[b(0)].fence.as_ref().unwrap().kind, FenceKind::SplitBrain);
    assert!(!acts.iter().any(|a| matches!(a, Action::Repoint { .. })), "{acts:?}");
    assert_eq!(m.counters.failovers, 0, "not a failover, just the truth");
    assert_eq!(m.state, State::Healthy);

    // Configured primary down at start-up, standby healthy: promoted once the primary has
    // been down for the confirmation time.
    let mut m = machine(2, PromoteMode::Auto);
    see(&mut m, &mut c, 1, stranded(100, 1));
    assert!(promotes(&fail(&mut m, &mut c, 0, 3)).is_empty(), "down 200ms: not yet");
    assert!(promotes(&fail(&mut m, &mut c, 0, 2)).is_empty(), "down 400ms: not yet");
    assert_eq!(promotes(&fail(&mut m, &mut c, 0, 1)), [1], "down 500ms");

    // Restored fences: pg-a is never routed even though it is writable.
    let names = ["pg-a".to_string(), "pg-b".to_string()];
    let fence = Fence::new(FenceKind::SplitBrain, "split brain".into());
    let mut m = Machine::new(settings(PromoteMode::Auto), &names, &[("pg-a".into(), fence)]);
    see(&mut m, &mut c, 0, primary(100, 1));
    see(&mut m, &mut c, 1, standby(100, 1));
    assert_eq!(m.route, None);
    assert_eq!(m.state, State::Degraded);
    assert!(m.backends[b(0)].fence.as_ref().unwrap().reason.contains("before restart"));
}

#[test]
fn never_mode_follows_an_external_promotion() {
    let (mut m, mut c) = running(2, PromoteMode::Never);
    let acts = fail(&mut m, &mut c, 0, 10);
    assert!(promotes(&acts).is_empty(), "never mode does not promote");
    assert_eq!((m.state, m.route), (State::FailoverInProgress, None));
    assert!(m.route_reason.contains("another manager"), "{}", m.route_reason);
    let acts = see(&mut m, &mut c, 1, primary(4900, 2));
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(m.state, State::FailoverComplete);
    assert!(m.backends[b(0)].fence.is_some(), "the lost primary is fenced when another is followed");
    assert_eq!(events(&acts).last().unwrap().trigger, "automatic");
    assert_eq!(m.counters.failovers, 1);
    assert!(!acts.iter().any(|a| matches!(a, Action::Repoint { .. })), "never mode leaves the standbys to their manager");
}

#[test]
fn external_promotion_while_old_primary_alive_is_a_split_brain_won_by_higher_timeline() {
    let (mut m, mut c) = running(2, PromoteMode::Never);
    let acts = see(&mut m, &mut c, 1, primary(4900, 2));
    assert_eq!(m.counters.split_brains, 1);
    assert!(events(&acts).iter().any(|e| e.kind == EventKind::SplitBrain && e.from.as_deref() == Some("pg-a")));
    assert_eq!(m.backends[b(0)].fence.as_ref().unwrap().kind, FenceKind::SplitBrain);
    assert_eq!(m.route, Some(b(1)));
    assert_eq!(m.counters.failovers, 1);
    assert!(events(&acts).iter().any(|e| e.kind == EventKind::Failover && e.trigger == "external"));
    // Later checks of the same pair count nothing new.
    see(&mut m, &mut c, 0, primary(5001, 1));
    see(&mut m, &mut c, 1, primary(4950, 2));
    assert_eq!(m.counters.split_brains, 1);
    assert_eq!(m.route, Some(b(1)));
}

#[test]
fn demoted_primary_moves_the_route_to_the_new_one() {
    let (mut m, mut c) = running(2, PromoteMode::Never);
    // An external manager demotes pg-a, then promotes pg-b.
    let acts = see(&mut m, &mut c, 0, standby(5000, 1));
    assert_eq!(routes(&acts), [None]);
    assert!(m.backends[b(0)].fence.is_none(), "a demoted server needs no fence");
    let acts = see(&mut m, &mut c, 1, primary(5000, 2));
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(m.counters.split_brains, 0);
}
