use std::time::Duration;

use super::*;

const SYSID: u64 = 7_000_000_000_000_000_001;

fn machine(n: usize, promote: PromoteMode) -> Machine {
    let names: Vec<String> = (0..n).map(|i| format!("pg-{}", (b'a' + i as u8) as char)).collect();
    Machine::new(Settings { failure_threshold: 3, max_lag_bytes: 1000, promote, check_timeout: Duration::from_millis(250) }, &names, &[])
}

fn primary(lsn: u64, tl: u32) -> Observation {
    Observation { in_recovery: false, system_identifier: SYSID, timeline: Some(tl), current_lsn: Some(lsn), receive_lsn: None, replay_lsn: None, response_time: Duration::from_millis(2) }
}

fn standby(lsn: u64, tl: u32) -> Observation {
    Observation { in_recovery: true, system_identifier: SYSID, timeline: Some(tl), current_lsn: None, receive_lsn: Some(lsn), replay_lsn: Some(lsn), response_time: Duration::from_millis(2) }
}

/// A clock that moves 100 ms per input, so durations are checkable.
struct Clock(Now);

impl Clock {
    fn new() -> Clock {
        Clock(Now::now())
    }
    fn tick(&mut self) -> Now {
        self.0.mono += Duration::from_millis(100);
        self.0.wall += Duration::from_millis(100);
        self.0
    }
}

fn routes(acts: &[Action]) -> Vec<Option<usize>> {
    acts.iter().filter_map(|a| if let Action::Route { target, .. } = a { Some(*target) } else { None }).collect()
}

fn promotes(acts: &[Action]) -> Vec<usize> {
    acts.iter().filter_map(|a| if let Action::Promote(i) = a { Some(*i) } else { None }).collect()
}

fn events(acts: &[Action]) -> Vec<Event> {
    acts.iter().filter_map(|a| if let Action::Record(e) = a { Some(e.clone()) } else { None }).collect()
}

fn fail(m: &mut Machine, c: &mut Clock, i: usize, times: u32) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..times {
        all.extend(m.observe(i, Err("connection refused".into()), c.tick()));
    }
    all
}

/// pg-a primary at LSN 5000, pg-b (and pg-c) standbys close behind: healthy and routed.
fn running(n: usize, promote: PromoteMode) -> (Machine, Clock) {
    let mut m = machine(n, promote);
    let mut c = Clock::new();
    let acts = m.observe(0, Ok(primary(5000, 1)), c.tick());
    assert_eq!(routes(&acts), [Some(0)]);
    for i in 1..n {
        m.observe(i, Ok(standby(4900 - i as u64, 1)), c.tick());
    }
    (m, c)
}

#[test]
fn starts_healthy_degraded_or_unknown() {
    let (m, _) = running(2, PromoteMode::Auto);
    assert_eq!((m.state, m.route), (State::Healthy, Some(0)));
    assert_eq!(m.lag_bytes(1), Some(101));
    assert!(m.eligible(1) && !m.eligible(0));

    let (m, _) = running(1, PromoteMode::Auto);
    assert_eq!(m.state, State::Degraded, "primary only");

    let mut m = machine(2, PromoteMode::Auto);
    let mut c = Clock::new();
    fail(&mut m, &mut c, 0, 3);
    fail(&mut m, &mut c, 1, 3);
    assert_eq!((m.state, m.route), (State::Unknown, None), "nothing healthy");
}

#[test]
fn threshold_failures_then_auto_promotion_completes() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let acts = fail(&mut m, &mut c, 0, 2);
    assert!(routes(&acts).is_empty(), "two failures are below the threshold: keep routing");
    assert_eq!(m.route, Some(0));
    let acts = fail(&mut m, &mut c, 0, 1);
    assert_eq!(routes(&acts), [None], "third failure clears the route (cuts sessions)");
    assert_eq!(promotes(&acts), [1]);
    assert_eq!(m.state, State::FailoverInProgress);
    assert!(m.backends[0].fence.is_some(), "old primary fenced");
    assert_eq!(events(&acts)[0].kind, EventKind::Fence);

    let acts = m.promoted(1, Ok(primary(4899, 2)), c.tick());
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(m.state, State::FailoverComplete);
    assert_eq!(m.counters.failovers, 1);
    assert!(m.last_failover_time.is_some());
    let ev = events(&acts).pop().unwrap();
    assert_eq!(ev.kind, EventKind::Failover);
    assert_eq!((ev.from.as_deref(), ev.to.as_deref()), (Some("pg-a"), Some("pg-b")));
    assert_eq!(ev.trigger, "automatic");
    assert_eq!(ev.wal_distance_bytes, Some(101), "old primary's last LSN minus the standby's");
    assert_eq!(ev.duration_ms, Some(100));
    assert!(acts.contains(&Action::FailoverDone(Duration::from_millis(100))));
}

#[test]
fn picks_the_standby_with_most_wal_and_skips_laggards() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    m.observe(2, Ok(standby(4990, 1)), c.tick());
    let acts = fail(&mut m, &mut c, 0, 3);
    assert_eq!(promotes(&acts), [2], "pg-c has more WAL");

    let (mut m, mut c) = running(3, PromoteMode::Auto);
    m.observe(1, Ok(standby(4950, 1)), c.tick());
    m.observe(2, Ok(standby(4950, 1)), c.tick());
    assert_eq!(promotes(&fail(&mut m, &mut c, 0, 3)), [1], "tie: config order");

    let (mut m, mut c) = running(2, PromoteMode::Auto);
    m.observe(1, Ok(standby(3000, 1)), c.tick());
    assert!(m.not_eligible(1).unwrap().contains("exceeds max_lag_bytes"));
    assert_eq!(m.state, State::RecoveryInProgress, "standby catching up");
    let acts = fail(&mut m, &mut c, 0, 3);
    assert!(promotes(&acts).is_empty(), "a standby beyond max_lag_bytes is never promoted");
    assert_eq!((m.state, m.route), (State::Degraded, None));
}

#[test]
fn no_eligible_standby_waits_then_promotes_when_one_appears() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    fail(&mut m, &mut c, 1, 3);
    // The standby has been down a while when the primary goes.
    c.0.mono += Duration::from_secs(5);
    let acts = fail(&mut m, &mut c, 0, 3);
    assert!(promotes(&acts).is_empty());
    assert_eq!((m.state, m.route), (State::Unknown, None));
    // The standby returns, close enough to the old primary's last position.
    let acts = m.observe(1, Ok(standby(4950, 1)), c.tick());
    assert_eq!(promotes(&acts), [1]);
    assert_eq!(m.counters.recoveries, 1);
    assert_eq!(events(&acts)[0].kind, EventKind::Recovery);
}

/// Both servers stop answering at once (seen on a saturated 2-vCPU VM: every check to both
/// timed out for seconds). The standby is not promoted while it, too, is silent, nor the
/// moment it answers again: first the old primary must fail a check that began after that.
/// Here the primary answers first, so the failover is abandoned and nothing was promoted.
#[test]
fn a_stall_of_both_servers_is_not_a_failover() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let mut acts = Vec::new();
    for _ in 0..3 {
        acts.extend(fail(&mut m, &mut c, 0, 1));
        acts.extend(fail(&mut m, &mut c, 1, 1));
    }
    assert!(promotes(&acts).is_empty(), "the standby is silent too");
    assert_eq!(m.route, None, "the unanswering primary gets no new sessions meanwhile");
    assert!(m.backends[0].fence.is_some());
    // The standby answers first: still no promotion, the primary's last failure began earlier.
    let acts = m.observe(1, Ok(standby(4900, 1)), c.tick());
    assert!(promotes(&acts).is_empty(), "{acts:?}");
    // Then the primary answers: it gets the route back, unfenced; no failover is counted.
    let acts = m.observe(0, Ok(primary(5000, 1)), c.tick());
    assert_eq!(routes(&acts), [Some(0)]);
    assert!(promotes(&acts).is_empty());
    assert!(m.backends[0].fence.is_none() && m.in_flight.is_none());
    let ev = events(&acts);
    assert_eq!(ev[0].kind, EventKind::Recovery);
    assert_eq!(ev[1].kind, EventKind::Unfence);
    assert!(ev[1].reason.contains("failover abandoned"), "{}", ev[1].reason);
    assert_eq!((m.counters.failovers, m.state), (0, State::Healthy));
}

/// The same stall, but the primary really is gone: once the standby answers, the primary
/// failing a whole check after that (ending a check timeout later) promotes the standby.
#[test]
fn after_a_stall_of_both_a_primary_still_failing_is_failed_over() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    for _ in 0..3 {
        fail(&mut m, &mut c, 0, 1);
        fail(&mut m, &mut c, 1, 1);
    }
    let acts = m.observe(1, Ok(standby(4900, 1)), c.tick());
    assert!(promotes(&acts).is_empty());
    // 100 ms later: that check began before the standby answered (timeout 250 ms).
    assert!(promotes(&fail(&mut m, &mut c, 0, 1)).is_empty());
    assert!(promotes(&fail(&mut m, &mut c, 0, 1)).is_empty());
    // 300 ms after the standby's answer: a whole check of the primary failed since.
    assert_eq!(promotes(&fail(&mut m, &mut c, 0, 1)), [1]);
    let acts = m.promoted(1, Ok(primary(4900, 2)), c.tick());
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(m.counters.failovers, 1);
}

/// A standby whose latest check failed is not promoted until it answers again, even below
/// the failure threshold (still "healthy").
#[test]
fn a_standby_whose_last_check_failed_waits_for_its_next_answer() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    fail(&mut m, &mut c, 1, 1);
    c.0.mono += Duration::from_secs(5);
    let acts = fail(&mut m, &mut c, 0, 3);
    assert!(m.eligible(1), "one failure is below the threshold");
    assert!(promotes(&acts).is_empty());
    assert_eq!(m.state, State::Degraded);
    // Its failure was long before the primary's outage: promoted as soon as it answers.
    assert_eq!(promotes(&m.observe(1, Ok(standby(4900, 1)), c.tick())), [1]);
}

/// Nothing can be promoted (the standby is down) and the primary restarts: it gets the
/// route back instead of staying fenced until an operator acts.
#[test]
fn a_primary_back_before_anything_was_promoted_takes_the_route_back() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    fail(&mut m, &mut c, 1, 3);
    c.0.mono += Duration::from_secs(5);
    fail(&mut m, &mut c, 0, 3);
    assert_eq!((m.state, m.route), (State::Unknown, None));
    assert!(m.backends[0].fence.is_some());
    let acts = m.observe(0, Ok(primary(5000, 1)), c.tick());
    assert_eq!(routes(&acts), [Some(0)]);
    assert!(m.backends[0].fence.is_none() && m.in_flight.is_none());
    assert_eq!((m.state, m.counters.failovers), (State::Degraded, 0));
    // A manual switchover's old primary is not given back this way: it was superseded alive.
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    m.trigger(Some("pg-b"), "ops", c.tick()).unwrap();
    let acts = m.observe(0, Ok(primary(5000, 1)), c.tick());
    assert!(routes(&acts).is_empty(), "{acts:?}");
    assert_eq!(m.in_flight.as_ref().and_then(|f| f.to), Some(1));
}

#[test]
fn failed_promotion_is_recorded_and_the_next_candidate_tried() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    let acts = fail(&mut m, &mut c, 0, 3);
    assert_eq!(promotes(&acts), [1]);
    let acts = m.promoted(1, Err("permission denied for function pg_promote".into()), c.tick());
    assert_eq!(events(&acts)[0].kind, EventKind::FailoverFailed);
    assert_eq!(promotes(&acts), [2]);
    assert_eq!(m.state, State::FailoverInProgress);
}

#[test]
fn never_mode_follows_an_external_promotion() {
    let (mut m, mut c) = running(2, PromoteMode::Never);
    let acts = fail(&mut m, &mut c, 0, 3);
    assert!(promotes(&acts).is_empty(), "never mode does not promote");
    assert_eq!((m.state, m.route), (State::FailoverInProgress, None));
    let acts = m.observe(1, Ok(primary(4900, 2)), c.tick());
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(m.state, State::FailoverComplete);
    assert_eq!(events(&acts).last().unwrap().trigger, "automatic");
    assert_eq!(m.counters.failovers, 1);
}

#[test]
fn external_promotion_while_old_primary_alive_is_a_split_brain_won_by_higher_timeline() {
    let (mut m, mut c) = running(2, PromoteMode::Never);
    let acts = m.observe(1, Ok(primary(4900, 2)), c.tick());
    assert_eq!(m.counters.split_brains, 1);
    assert!(events(&acts).iter().any(|e| e.kind == EventKind::SplitBrain && e.from.as_deref() == Some("pg-a")));
    assert_eq!(m.backends[0].fence.as_ref().unwrap().kind, FenceKind::SplitBrain);
    assert_eq!(m.route, Some(1));
    assert_eq!(m.counters.failovers, 1);
    assert!(events(&acts).iter().any(|e| e.kind == EventKind::Failover && e.trigger == "external"));
    // Later checks of the same pair count nothing new.
    m.observe(0, Ok(primary(5001, 1)), c.tick());
    m.observe(1, Ok(primary(4950, 2)), c.tick());
    assert_eq!(m.counters.split_brains, 1);
    assert_eq!(m.route, Some(1));
}

#[test]
fn old_primary_returning_writable_stays_fenced_no_failback() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    fail(&mut m, &mut c, 0, 3);
    m.promoted(1, Ok(primary(4899, 2)), c.tick());
    let acts = m.observe(0, Ok(primary(5000, 1)), c.tick());
    assert!(routes(&acts).is_empty(), "never fails back");
    assert_eq!(m.route, Some(1));
    assert_eq!(m.counters.split_brains, 1);
    assert_eq!(m.counters.recoveries, 1);
    assert!(m.backends[0].fence.is_some());
    // Even when unfenced by an operator it loses on timeline.
    let acts = m.unfence("pg-a", "ops", c.tick()).unwrap();
    assert_eq!(events(&acts)[0].kind, EventKind::Unfence);
    assert_eq!(m.route, Some(1));
    assert!(m.backends[0].fence.is_some(), "fenced again at once by the split-brain guard");
    assert_eq!(m.counters.split_brains, 2);
}

#[test]
fn rebuilt_old_primary_is_unfenced_and_state_returns_to_healthy() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    fail(&mut m, &mut c, 0, 3);
    m.promoted(1, Ok(primary(9000, 2)), c.tick());
    assert_eq!(m.state, State::FailoverComplete);
    // Rebuilt as a standby of pg-b, still far behind: unfenced, catching up.
    let acts = m.observe(0, Ok(standby(1000, 2)), c.tick());
    assert!(events(&acts).iter().any(|e| e.kind == EventKind::Unfence));
    assert!(m.backends[0].fence.is_none());
    assert_eq!(m.state, State::RecoveryInProgress);
    m.observe(0, Ok(standby(8990, 2)), c.tick());
    assert_eq!(m.state, State::Healthy);
    assert_eq!(m.route, Some(1), "still no failback");
}

#[test]
fn restart_routes_to_the_real_primary_not_the_configured_one() {
    let mut m = machine(2, PromoteMode::Auto);
    let mut c = Clock::new();
    let acts = m.observe(0, Ok(standby(100, 2)), c.tick());
    assert!(routes(&acts).is_empty());
    let acts = m.observe(1, Ok(primary(200, 2)), c.tick());
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(m.counters.failovers, 0, "not a failover, just the truth");
    assert_eq!(m.state, State::Healthy);

    // Configured primary down at start-up, standby healthy: promote it once the primary
    // reaches the threshold.
    let mut m = machine(2, PromoteMode::Auto);
    m.observe(1, Ok(standby(100, 1)), c.tick());
    assert!(promotes(&fail(&mut m, &mut c, 0, 2)).is_empty());
    assert_eq!(promotes(&fail(&mut m, &mut c, 0, 1)), [1]);

    // Journal says pg-a is fenced: it is never routed even though it is writable.
    let names = ["pg-a".to_string(), "pg-b".to_string()];
    let mut m = Machine::new(Settings { failure_threshold: 3, max_lag_bytes: 1000, promote: PromoteMode::Auto, check_timeout: Duration::from_millis(250) }, &names, &["pg-a".into()]);
    m.observe(0, Ok(primary(100, 1)), c.tick());
    m.observe(1, Ok(standby(100, 1)), c.tick());
    assert_eq!(m.route, None);
    assert_eq!(m.state, State::Degraded);
}

#[test]
fn manual_trigger_rules() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    assert!(matches!(m.trigger(Some("pg-x"), "ops", c.tick()), Err(Refusal::UnknownBackend(_))));
    assert!(matches!(m.trigger(Some("pg-a"), "ops", c.tick()), Err(Refusal::Conflict(e)) if e.contains("already the primary")));
    m.observe(2, Ok(standby(10, 1)), c.tick());
    assert!(matches!(m.trigger(Some("pg-c"), "ops", c.tick()), Err(Refusal::Conflict(e)) if e.contains("max_lag_bytes")));
    let (target, acts) = m.trigger(None, "alice", c.tick()).unwrap();
    assert_eq!(target, "pg-b");
    assert_eq!(routes(&acts), [None]);
    assert_eq!(promotes(&acts), [1]);
    assert_eq!(m.backends[0].fence.as_ref().unwrap().kind, FenceKind::Superseded);
    assert!(matches!(m.trigger(None, "bob", c.tick()), Err(Refusal::Conflict(e)) if e.contains("already in progress")));
    let acts = m.promoted(1, Ok(primary(4899, 2)), c.tick());
    let ev = events(&acts).pop().unwrap();
    assert_eq!((ev.kind, ev.trigger.as_str()), (EventKind::Failover, "manual:alice"));
    // The old primary is still writable, but it was superseded on purpose: no split brain.
    m.observe(0, Ok(primary(5000, 1)), c.tick());
    assert_eq!(m.counters.split_brains, 0);
    assert_eq!(m.route, Some(1));

    let (mut m, mut c) = running(2, PromoteMode::Never);
    assert!(matches!(m.trigger(None, "ops", c.tick()), Err(Refusal::Conflict(e)) if e.contains("never")));
    let (mut m, mut c) = running(1, PromoteMode::Auto);
    assert!(matches!(m.trigger(None, "ops", c.tick()), Err(Refusal::Conflict(e)) if e.contains("no standbys")));
    let _ = &mut c;
    assert_eq!(m.state, State::Degraded, "a refused trigger changes nothing");
}

#[test]
fn foreign_cluster_is_never_eligible() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let mut o = standby(4999, 1);
    o.system_identifier = 42;
    m.observe(1, Ok(o), c.tick());
    assert!(m.not_eligible(1).unwrap().contains("another cluster"));
    assert!(promotes(&fail(&mut m, &mut c, 0, 3)).is_empty());
}

#[test]
fn demoted_primary_moves_the_route_to_the_new_one() {
    let (mut m, mut c) = running(2, PromoteMode::Never);
    // An external manager demotes pg-a, then promotes pg-b.
    let acts = m.observe(0, Ok(standby(5000, 1)), c.tick());
    assert_eq!(routes(&acts), [None]);
    assert!(m.backends[0].fence.is_none(), "a demoted server needs no fence");
    let acts = m.observe(1, Ok(primary(5000, 2)), c.tick());
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(m.counters.split_brains, 0);
}

#[test]
fn failed_manual_switchover_restores_the_old_primary() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let (_, acts) = m.trigger(Some("pg-b"), "ops", c.tick()).unwrap();
    assert_eq!(routes(&acts), [None]);
    let acts = m.promoted(1, Err("timed out".into()), c.tick());
    let ev = &events(&acts)[0];
    assert_eq!(ev.kind, EventKind::FailoverFailed);
    assert!(ev.reason.contains("pg-a stays primary"), "{}", ev.reason);
    assert_eq!(routes(&acts), [Some(0)], "route restored");
    assert!(m.backends[0].fence.is_none());
    assert!(m.in_flight.is_none());
    assert_eq!(m.counters.failovers, 0);
}
