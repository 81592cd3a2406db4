//! The switchover's drain, the operator's pause and maintenance mode, as the machine decides
//! them: what the gate holds, when the route leaves the old primary, when writes stop, and
//! (coordinated) what the leader waits for from the other proxies.

use super::*;
use crate::cluster::{Census, DrainPhase, DrainRecord, Maintenance, MemberView, PauseAck, PauseRecord, PrimaryRecord, Scope};
use crate::coord::{Event, Snapshot};

/// Backends `n` running, pg-a primary, with a drain timeout.
fn draining_machine(n: usize) -> (Machine, Clock) {
    let (mut m, c) = running(n, PromoteMode::Auto);
    m.settings.drain_timeout = Duration::from_secs(5);
    (m, c)
}

fn gates(acts: &[Action]) -> Vec<Option<Scope>> {
    acts.iter().filter_map(|a| if let Action::Gate(g) = a { Some(*g) } else { None }).collect()
}

fn drain_wait(acts: &[Action]) -> Option<(DrainId, Scope)> {
    acts.iter().find_map(|a| if let Action::AwaitDrain { id, scope, .. } = a { Some((id.clone(), *scope)) } else { None })
}

fn stops(acts: &[Action]) -> bool {
    acts.iter().any(|a| matches!(a, Action::StopWrites { .. }))
}

fn shared_drains(acts: &[Action]) -> Vec<Option<DrainPhase>> {
    acts.iter().filter_map(|a| if let Action::ShareDrain(d) = a { Some(d.as_ref().map(|d| d.phase)) } else { None }).collect()
}

fn quiet(n: usize) -> Census {
    Census { sessions: n, quiet: n, ..Census::default() }
}

fn trigger(m: &mut Machine, c: &mut Clock) -> (u64, Vec<Action>) {
    let (started, acts) = m.trigger(&TriggerRequest { target: Some("pg-b".into()), force: false, who: "alice".into() }, c.tick()).unwrap();
    assert!(started.switchover);
    (started.attempt, acts)
}

#[test]
fn a_switchover_holds_the_old_primary_and_lets_it_drain_before_it_stops_writes() {
    let (mut m, mut c) = draining_machine(2);
    let (attempt, acts) = trigger(&mut m, &mut c);
    assert_eq!(gates(&acts), [Some(Scope::Backend(PG_A))], "new sessions and quiet statements held");
    assert_eq!(drain_wait(&acts), Some((DrainId::Attempt(attempt), Scope::Backend(PG_A))));
    assert!(routes(&acts).is_empty() && m.route == Some(PG_A), "the old primary keeps its sessions while they drain");
    assert!(!stops(&acts), "nothing is stopped before the drain");
    assert_eq!(m.phase(), "draining");
    // Checks meanwhile change nothing.
    let acts = see(&mut m, &mut c, 0, primary(5000, 1));
    assert!(routes(&acts).is_empty() && !stops(&acts));
    // Every session is quiet: the route leaves pg-a (its sessions end) and writes stop.
    let acts = m.drained(DrainId::Attempt(attempt), quiet(3), c.tick());
    assert_eq!(routes(&acts), [None]);
    assert!(m.route_reason.contains("switched over from pg-a to pg-b"), "{}", m.route_reason);
    assert!(stops(&acts));
    // The rest as before: catch up, promote, route to pg-b, and the gate lets go.
    m.writes_stopped(attempt, PG_A, Ok(5000), c.tick());
    let acts = m.replayed(attempt, b(1), Ok(5000), c.tick());
    assert_eq!(promotes(&acts), [1]);
    let acts = see(&mut m, &mut c, 1, primary(5000, 2));
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(gates(&acts), [None]);
    assert!(matches!(concluded(&acts), Some(Outcome::Completed { .. })));
}

#[test]
fn a_late_count_from_an_earlier_attempt_changes_nothing() {
    let (mut m, mut c) = draining_machine(2);
    let (attempt, _) = trigger(&mut m, &mut c);
    let acts = m.drained(DrainId::Attempt(attempt + 7), quiet(1), c.tick());
    assert!(routes(&acts).is_empty() && !stops(&acts));
    assert_eq!(m.phase(), "draining");
}

#[test]
fn a_pause_holds_everything_and_a_switchover_keeps_it() {
    let (mut m, mut c) = draining_machine(2);
    let pause = PauseRecord { id: "p1".into(), by: "alice".into(), since: "2026-12-04T20:00:00Z".into(), timeout_ms: 1000 };
    let acts = m.set_paused(Some(pause), c.tick());
    assert_eq!(gates(&acts), [Some(Scope::Everything)]);
    assert_eq!(kinds(&acts), [EventKind::Pause]);
    assert!(routes(&acts).is_empty(), "a pause does not move the route");
    // A switchover under the pause: the gate stays on everything.
    let (attempt, acts) = trigger(&mut m, &mut c);
    assert!(gates(&acts).is_empty());
    m.drained(DrainId::Attempt(attempt), quiet(0), c.tick());
    m.writes_stopped(attempt, PG_A, Ok(5000), c.tick());
    m.replayed(attempt, b(1), Ok(5000), c.tick());
    let acts = see(&mut m, &mut c, 1, primary(5000, 2));
    assert_eq!(routes(&acts), [Some(1)]);
    assert!(gates(&acts).is_empty(), "still paused after the switchover");
    let acts = m.set_paused(None, c.tick());
    assert_eq!(gates(&acts), [None]);
    assert_eq!(kinds(&acts), [EventKind::Resume]);
}

fn maintenance(minutes: u64, c: &Clock) -> Maintenance {
    let until = humantime::format_rfc3339(c.0.wall + Duration::from_secs(minutes * 60)).to_string();
    Maintenance { reason: "minor upgrade".into(), until, by: "bob".into(), since: humantime::format_rfc3339(c.0.wall).to_string() }
}

#[test]
fn maintenance_waits_for_a_stopped_primary_instead_of_failing_over() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let acts = m.set_maintenance(Some(maintenance(30, &c)), c.tick());
    assert_eq!(kinds(&acts), [EventKind::MaintenanceOn]);
    assert!(acts.iter().any(|a| matches!(a, Action::Maintenance(Some(_)))), "persisted");
    // The primary stops for a while: checks fail far past promote_after.
    let mut acts = fail(&mut m, &mut c, 0, 3);
    acts.extend(see(&mut m, &mut c, 1, standby(4899, 1)));
    for _ in 0..20 {
        acts.extend(fail(&mut m, &mut c, 0, 1));
    }
    assert!(promotes(&acts).is_empty(), "no failover in maintenance: {acts:?}");
    assert_eq!(routes(&acts), [None], "new sessions are held while it is down");
    assert!(m.route_reason.contains("maintenance mode is on (minor upgrade, by bob"), "{}", m.route_reason);
    assert_eq!(m.phase(), "maintenance");
    // It comes back as itself: routed again, and no failover counted.
    let acts = see(&mut m, &mut c, 0, primary(5100, 1));
    assert_eq!(routes(&acts), [Some(0)]);
    assert_eq!(m.counters.failovers, 0);
    // An operator's trigger still works.
    assert!(m.trigger(&TriggerRequest { target: Some("pg-b".into()), force: false, who: "carol".into() }, c.tick()).is_ok());
}

#[test]
fn maintenance_runs_out() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let mut on = maintenance(0, &c);
    on.until = humantime::format_rfc3339(c.0.wall + Duration::from_millis(250)).to_string();
    m.set_maintenance(Some(on), c.tick());
    assert!(m.maintenance().is_some());
    see(&mut m, &mut c, 1, standby(4899, 1));
    let acts = see(&mut m, &mut c, 1, standby(4899, 1));
    assert_eq!(kinds(&acts), [EventKind::MaintenanceOff]);
    assert!(acts.iter().any(|a| matches!(a, Action::Maintenance(None))));
    assert!(m.maintenance().is_none());
}

/// A leader with one other live proxy, `p2`.
fn leading_with_a_peer() -> (Machine, Clock) {
    let (mut m, mut c) = draining_machine(2);
    m.join("me".into(), false);
    let record = PrimaryRecord { name: "pg-a".into(), timeline: Some(1), system_identifier: None, epoch: 1, by: "me".into() };
    let snapshot = Snapshot { record: Some(record), record_revision: 10, members: [("p2".to_string(), view("p2", None))].into(), ..Default::default() };
    m.coordinated(vec![Event::EtcdUp(true), Event::Leadership { leader: Some("me".into()), is_leader: true }, Event::Loaded(snapshot)], c.tick());
    (m, c)
}

fn view(name: &str, drain: Option<PauseAck>) -> MemberView {
    MemberView { name: name.into(), leader: false, primary: Some("pg-a".into()), down: vec![], backends: Default::default(), paused: None, drain }
}

fn ack(m: &mut Machine, c: &mut Clock, id: &str, phase: DrainPhase) -> Vec<Action> {
    let a = PauseAck { id: id.into(), phase: Some(phase), census: quiet(2) };
    m.coordinated(vec![Event::Member { name: "p2".into(), view: Some(view("p2", Some(a))) }], c.tick())
}

#[test]
fn a_coordinated_leader_stops_writes_only_once_every_proxy_confirmed_the_cut() {
    let (mut m, mut c) = leading_with_a_peer();
    let (attempt, acts) = trigger(&mut m, &mut c);
    assert_eq!(shared_drains(&acts), [Some(DrainPhase::Drain)]);
    let id = format!("me-{attempt}");
    // This proxy's sessions are quiet, the peer's not yet: still draining.
    let acts = m.drained(DrainId::Attempt(attempt), quiet(1), c.tick());
    assert!(routes(&acts).is_empty(), "waits for the other proxy's drain");
    // The peer drained: cut everywhere, but writes wait for the peer's confirmation.
    let acts = ack(&mut m, &mut c, &id, DrainPhase::Drain);
    assert_eq!(routes(&acts), [None]);
    assert_eq!(shared_drains(&acts), [Some(DrainPhase::Cut)]);
    assert!(!stops(&acts), "not before p2 stopped routing to pg-a");
    let acts = ack(&mut m, &mut c, &id, DrainPhase::Cut);
    assert!(stops(&acts));
}

#[test]
fn a_proxy_that_does_not_confirm_the_cut_undoes_the_switchover_before_any_write_stops() {
    let (mut m, mut c) = leading_with_a_peer();
    let (attempt, _) = trigger(&mut m, &mut c);
    let id = format!("me-{attempt}");
    m.drained(DrainId::Attempt(attempt), quiet(1), c.tick());
    ack(&mut m, &mut c, &id, DrainPhase::Drain);
    let mut acts = Vec::new();
    for _ in 0..30 {
        acts.extend(see(&mut m, &mut c, 1, standby(4899, 1)));
    }
    assert!(!stops(&acts));
    match concluded(&acts) {
        Some(Outcome::Aborted(why)) => assert!(why.contains("p2 did not confirm") && why.contains("before any write was stopped"), "{why}"),
        other => panic!("expected a 409, got {other:?}"),
    }
    assert_eq!(routes(&acts), [Some(0)], "pg-a gets the route back");
    assert_eq!(gates(&acts), [None]);
    assert_eq!(shared_drains(&acts), [None]);
    assert_eq!(kinds(&acts), [EventKind::SwitchoverAborted]);
}

#[test]
fn a_follower_drains_with_the_leader_and_routes_to_the_new_primary_when_the_record_moves() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    m.settings.drain_timeout = Duration::from_secs(5);
    m.join("me".into(), false);
    let record = |name: &str, epoch| PrimaryRecord { name: name.into(), timeline: Some(1), system_identifier: None, epoch, by: "p1".into() };
    let snapshot = Snapshot { record: Some(record("pg-a", 1)), record_revision: 10, ..Default::default() };
    m.coordinated(vec![Event::EtcdUp(true), Event::Leadership { leader: Some("p1".into()), is_leader: false }, Event::Loaded(snapshot)], c.tick());
    let drain = |phase| DrainRecord { id: "p1-1".into(), from: "pg-a".into(), to: "pg-b".into(), phase, drain_ms: 5000, by: "p1".into() };
    let acts = m.coordinated(vec![Event::Drain(Some(drain(DrainPhase::Drain)))], c.tick());
    assert_eq!(gates(&acts), [Some(Scope::Backend(PG_A))]);
    assert_eq!(drain_wait(&acts), Some((DrainId::Shared("p1-1".into()), Scope::Backend(PG_A))));
    assert!(routes(&acts).is_empty());
    m.drained(DrainId::Shared("p1-1".into()), quiet(4), c.tick());
    assert_eq!(m.own_view().unwrap().drain.map(|a| (a.phase, a.census.quiet)), Some((Some(DrainPhase::Drain), 4)));
    // The cut: this proxy stops routing to pg-a and says so.
    let acts = m.coordinated(vec![Event::Drain(Some(drain(DrainPhase::Cut)))], c.tick());
    assert_eq!(routes(&acts), [None]);
    assert!(m.route_reason.contains("switched over from pg-a to pg-b"), "{}", m.route_reason);
    assert!(promotes(&acts).is_empty(), "a follower never promotes");
    assert_eq!(m.own_view().unwrap().drain.and_then(|a| a.phase), Some(DrainPhase::Cut));
    // The leader promoted pg-b and recorded it: routed here as soon as its checks agree.
    m.coordinated(vec![Event::Record(Some(record("pg-b", 2)), 11)], c.tick());
    let acts = see(&mut m, &mut c, 1, primary(5000, 2));
    assert_eq!(routes(&acts), [Some(1)]);
    let followed = events(&acts).into_iter().find(|e| e.kind == EventKind::Failover).expect("the follower records the switchover");
    assert!(followed.reason.contains("leader is switching the primary over from pg-a to pg-b"), "{}", followed.reason);
    assert_eq!(followed.trigger, "external");
    let acts = m.coordinated(vec![Event::Drain(None)], c.tick());
    assert_eq!(gates(&acts), [None]);
    assert!(m.own_view().unwrap().drain.is_none());
}
