//! Error kinds, switchover, operator commands, timelines and re-pointing.

use super::*;

fn misconfigured() -> CheckError {
    CheckError::Server { code: "28P01".into(), message: "password authentication failed for user \"postgres\"".into() }
}

fn overloaded() -> CheckError {
    CheckError::Server { code: "53300".into(), message: "sorry, too many clients already".into() }
}

fn trigger(m: &mut Machine, c: &mut Clock, target: Option<&str>, force: bool) -> Result<(Started, Vec<Action>), Refusal> {
    m.trigger(&TriggerRequest { target: target.map(str::to_string), force, who: "alice".into() }, c.tick())
}

#[test]
fn misconfigured_and_overloaded_checks_never_fail_over() {
    for e in [misconfigured as fn() -> CheckError, overloaded] {
        let (mut m, mut c) = running(2, PromoteMode::Auto);
        let acts = fail_with(&mut m, &mut c, 0, 10, e);
        assert!(routes(&acts).is_empty() && promotes(&acts).is_empty(), "{acts:?}");
        assert_eq!((m.route, m.state), (Some(b(0)), State::Degraded), "the primary keeps its role; the state says something is wrong");
        assert_eq!(m.backends[b(0)].problem().map(|e| e.kind()), Some(e().kind()));
        assert_eq!(m.backends[b(0)].failure_count, 10);
        assert!(m.backends[b(0)].healthy);
        // A down failure between them does not add up with earlier ones: the server answered.
        let acts = fail(&mut m, &mut c, 0, 2);
        assert!(routes(&acts).is_empty());
        see(&mut m, &mut c, 0, primary(5000, 1));
        assert_eq!(m.state, State::Healthy);
    }
}

#[test]
fn a_wrong_setting_at_start_up_is_named_as_such() {
    let mut m = machine(2, PromoteMode::Auto);
    let mut c = Clock::new();
    let nope = || CheckError::Server { code: "3D000".into(), message: "database \"nope\" does not exist".into() };
    for _ in 0..5 {
        fail_with(&mut m, &mut c, 0, 1, nope);
        fail_with(&mut m, &mut c, 1, 1, nope);
    }
    assert_eq!((m.route, m.state), (None, State::Degraded), "servers answer: not unknown, and nothing is promoted");
    assert!(m.in_flight.is_none());
    assert!(m.route_reason.contains("checks to pg-a fail: database \"nope\" does not exist (SQLSTATE 3D000) [misconfigured]"), "{}", m.route_reason);
}

#[test]
fn a_switchover_stops_writes_waits_for_the_catch_up_and_loses_nothing() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let (started, acts) = trigger(&mut m, &mut c, None, false).unwrap();
    assert_eq!((started.to.as_str(), started.switchover), ("pg-b", true));
    assert_eq!(routes(&acts), [None], "sessions cut, new ones held");
    assert!(acts.contains(&Action::StopWrites { attempt: started.attempt, backend: PG_A }));
    assert!(promotes(&acts).is_empty());
    assert_eq!((m.phase(), m.state), ("stopping_writes", State::FailoverInProgress));
    // The primary stays writable and answering throughout: no split brain, no give-back.
    assert!(routes(&see(&mut m, &mut c, 0, primary(5200, 1))).is_empty());
    let acts = m.writes_stopped(started.attempt, b(0), Ok(5300), c.tick());
    assert!(acts.contains(&Action::AwaitReplay { attempt: started.attempt, backend: b(1), lsn: 5300 }));
    assert_eq!(m.phase(), "catching_up");
    let acts = m.replayed(started.attempt, b(1), Ok(5300), c.tick());
    assert_eq!(promotes(&acts), [1]);
    assert_eq!(m.backends[b(0)].fence.as_ref().unwrap().kind, FenceKind::Superseded);
    let acts = m.promoted(started.attempt, b(1), Ok(primary(5300, 2)), c.tick());
    assert_eq!(routes(&acts), [Some(1)]);
    let ev = events(&acts).pop().unwrap();
    assert_eq!((ev.kind, ev.trigger.as_str(), ev.wal_distance_bytes), (EventKind::Failover, "manual:alice", Some(0)));
    assert_eq!(concluded(&acts), Some(Outcome::Completed { to: "pg-b".into() }));
    see(&mut m, &mut c, 0, primary(5300, 1));
    assert_eq!((m.counters.split_brains, m.route), (0, Some(b(1))), "superseded on purpose: not a split brain");
}

#[test]
fn a_switchover_whose_standby_cannot_catch_up_is_undone() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let (started, _) = trigger(&mut m, &mut c, Some("pg-b"), false).unwrap();
    m.writes_stopped(started.attempt, b(0), Ok(9000), c.tick());
    let behind = OpError::Behind { replayed: Some(4900), target: 9000, within: Duration::from_secs(15) };
    let acts = m.replayed(started.attempt, b(1), Err(behind), c.tick());
    assert!(acts.contains(&Action::AllowWrites { attempt: started.attempt, backend: PG_A }));
    assert!(routes(&acts).is_empty(), "the route waits until the old primary accepts writes again");
    assert!(promotes(&acts).is_empty());
    let acts = m.writes_allowed(started.attempt, b(0), Ok(()), c.tick());
    assert_eq!(routes(&acts), [Some(0)]);
    assert_eq!(kinds(&acts), [EventKind::SwitchoverAborted]);
    match concluded(&acts) {
        Some(Outcome::Aborted(why)) => assert!(why.contains("did not catch up") && why.contains("pg-a stays primary"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(m.backends[b(0)].fence.is_none() && m.in_flight.is_none());
    assert_eq!((m.counters.failovers, m.state), (0, State::Healthy));
}

#[test]
fn a_switchover_step_refused_by_a_server_is_undone_and_reported() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let (started, _) = trigger(&mut m, &mut c, None, false).unwrap();
    let denied = OpError::Check(CheckError::Server { code: "42501".into(), message: "permission denied to set parameter".into() });
    let acts = m.writes_stopped(started.attempt, b(0), Err(denied), c.tick());
    assert!(acts.contains(&Action::AllowWrites { attempt: started.attempt, backend: PG_A }));
    let acts = m.writes_allowed(started.attempt, b(0), Ok(()), c.tick());
    assert!(matches!(concluded(&acts), Some(Outcome::Failed(why)) if why.contains("permission denied")));
    assert_eq!(m.route, Some(b(0)));

    // Refused at the promotion itself: the old primary (already fenced) is unfenced again.
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let (started, _) = trigger(&mut m, &mut c, None, false).unwrap();
    m.writes_stopped(started.attempt, b(0), Ok(5000), c.tick());
    m.replayed(started.attempt, b(1), Ok(5000), c.tick());
    let denied = PromoteError::Refused(CheckError::Server { code: "42501".into(), message: "permission denied for function pg_promote".into() });
    let acts = m.promoted(started.attempt, b(1), Err(denied), c.tick());
    assert!(acts.contains(&Action::AllowWrites { attempt: started.attempt, backend: PG_A }));
    let acts = m.writes_allowed(started.attempt, b(0), Ok(()), c.tick());
    assert_eq!(routes(&acts), [Some(0)]);
    assert!(m.backends[b(0)].fence.is_none());
    assert!(matches!(concluded(&acts), Some(Outcome::Failed(_))));
}

#[test]
fn force_promotes_at_once_and_hurries_a_confirming_failover() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let (started, acts) = trigger(&mut m, &mut c, Some("pg-b"), true).unwrap();
    assert!(!started.switchover);
    assert_eq!(promotes(&acts), [1]);
    assert_eq!(m.backends[b(0)].fence.as_ref().unwrap().kind, FenceKind::Superseded);
    // A force whose promotion never reached the standby: the old primary is still there
    // and gets the route back.
    let acts = m.promoted(started.attempt, b(1), Err(PromoteError::NotSent(CheckError::Timeout(Duration::from_millis(250)))), c.tick());
    assert!(matches!(concluded(&acts), Some(Outcome::Failed(_))));
    assert_eq!(routes(&acts), [Some(0)]);
    assert!(m.backends[b(0)].fence.is_none() && m.in_flight.is_none());

    let (mut m, mut c) = running(2, PromoteMode::Auto);
    fail(&mut m, &mut c, 0, 3);
    assert_eq!(m.phase(), "confirming");
    assert!(matches!(trigger(&mut m, &mut c, None, false), Err(Refusal::Conflict(e)) if e.contains("force")));
    let (started, acts) = trigger(&mut m, &mut c, None, true).unwrap();
    assert_eq!(promotes(&acts), [1]);
    let acts = m.promoted(started.attempt, b(1), Ok(primary(4900, 2)), c.tick());
    assert_eq!(concluded(&acts), Some(Outcome::Completed { to: "pg-b".into() }));
    assert_eq!(events(&acts).pop().unwrap().trigger, "manual:alice");
}

#[test]
fn manual_trigger_rules() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    assert!(matches!(trigger(&mut m, &mut c, Some("pg-x"), false), Err(Refusal::UnknownBackend(_))));
    assert!(matches!(trigger(&mut m, &mut c, Some("pg-a"), false), Err(Refusal::Conflict(e)) if e.contains("already the primary")));
    see(&mut m, &mut c, 2, standby(10, 1));
    assert!(matches!(trigger(&mut m, &mut c, Some("pg-c"), false), Err(Refusal::Conflict(e)) if e.contains("max_lag_bytes")));
    let (started, _) = trigger(&mut m, &mut c, None, false).unwrap();
    assert_eq!(started.to, "pg-b");
    assert!(matches!(trigger(&mut m, &mut c, None, false), Err(Refusal::Conflict(e)) if e.contains("already in progress")));

    let (mut m, mut c) = running(2, PromoteMode::Never);
    assert!(matches!(trigger(&mut m, &mut c, None, false), Err(Refusal::Conflict(e)) if e.contains("never")));
    let (mut m, mut c) = running(1, PromoteMode::Auto);
    assert!(matches!(trigger(&mut m, &mut c, None, false), Err(Refusal::Conflict(e)) if e.contains("no standbys")));
    assert_eq!(m.state, State::Degraded, "a refused trigger changes nothing");
}

#[test]
fn old_primary_returning_writable_stays_fenced_no_failback() {
    let (mut m, mut c, acts) = lost(2);
    m.promoted(attempt_of(&acts), b(1), Ok(primary(4899, 2)), c.tick());
    let acts = see(&mut m, &mut c, 0, primary(5000, 1));
    assert!(routes(&acts).is_empty(), "never fails back");
    assert_eq!(m.route, Some(b(1)));
    assert_eq!(m.counters.split_brains, 1);
    assert_eq!(m.counters.recoveries, 1);
    assert!(m.backends[b(0)].fence.is_some());
    // Even when unfenced by an operator it loses on timeline.
    let acts = m.unfence("pg-a", "ops", c.tick()).unwrap();
    assert_eq!(events(&acts)[0].kind, EventKind::Unfence);
    assert_eq!(m.route, Some(b(1)));
    assert!(m.backends[b(0)].fence.is_some(), "fenced again at once by the split-brain guard");
    assert_eq!(m.counters.split_brains, 2);
}

#[test]
fn rebuilt_old_primary_is_unfenced_and_state_returns_to_healthy() {
    let (mut m, mut c, acts) = lost(2);
    m.promoted(attempt_of(&acts), b(1), Ok(primary(9000, 2)), c.tick());
    assert_eq!(m.state, State::FailoverComplete);
    // Rebuilt as a standby of pg-b, still far behind: unfenced, catching up.
    let acts = see(&mut m, &mut c, 0, standby(1000, 2));
    assert!(kinds(&acts).contains(&EventKind::Unfence));
    assert!(m.backends[b(0)].fence.is_none());
    assert_eq!(m.state, State::RecoveryInProgress);
    see(&mut m, &mut c, 0, standby(8990, 2));
    assert_eq!(m.state, State::Healthy);
    assert_eq!(m.route, Some(b(1)), "still no failback");
}

/// Primary and two standbys: after pg-b is promoted, pg-c (still on timeline 1, streaming
/// from nobody) is not eligible and is re-pointed at once; it is eligible, and the state
/// healthy, only once it streams on pg-b's timeline.
#[test]
fn a_standby_left_on_the_old_timeline_is_repointed_and_never_promoted_meanwhile() {
    let (mut m, mut c, acts) = lost(3);
    assert_eq!(promotes(&acts), [1]);
    let acts = m.promoted(attempt_of(&acts), b(1), Ok(primary(4899, 2)), c.tick());
    assert_eq!(routes(&acts), [Some(1)]);
    assert!(acts.contains(&Action::Repoint { standby: b(2), primary: b(1) }), "{acts:?}");
    let acts = see(&mut m, &mut c, 2, stranded(4898, 1));
    assert!(!acts.iter().any(|a| matches!(a, Action::Repoint { .. })), "not again right away");
    let why = m.not_eligible(b(2)).unwrap();
    assert!(why.contains("timeline 1") && why.contains("re-pointing it at pg-b"), "{why}");
    assert_eq!(m.state, State::FailoverComplete, "no standby can take over yet");
    m.repointed(b(2), b(1), Ok(Repointed { slot: Some("slot_2".into()), changed: true }), c.tick());
    assert!(m.not_eligible(b(2)).unwrap().contains("waiting for it to stream"));
    // pg-b dies before pg-c follows it: pg-c is not promoted (it would lose pg-b's writes).
    let acts = lose_primary_b(&mut m, &mut c);
    assert!(promotes(&acts).is_empty(), "{acts:?}");
    assert!(m.not_eligible(b(2)).unwrap().contains("lost primary was on timeline 2"));
    // pg-b comes back; pg-c follows it on timeline 2: eligible, healthy.
    see(&mut m, &mut c, 1, primary(5100, 2));
    assert_eq!(m.route, Some(b(1)));
    see(&mut m, &mut c, 2, standby(5100, 2));
    assert!(m.eligible(b(2)));
    assert_eq!(m.state, State::Healthy);
}

fn lose_primary_b(m: &mut Machine, c: &mut Clock) -> Vec<Action> {
    let mut acts = fail(m, c, 1, 3);
    acts.extend(see(m, c, 2, stranded(4898, 1)));
    acts.extend(fail(m, c, 1, 6));
    acts
}

#[test]
fn a_diverged_standby_is_named_as_such() {
    let (mut m, mut c, acts) = lost(3);
    m.promoted(attempt_of(&acts), b(1), Ok(primary(4899, 2)), c.tick());
    // pg-c had received more of pg-a's WAL than pg-b when pg-b was promoted.
    see(&mut m, &mut c, 2, stranded(4990, 1));
    let why = m.not_eligible(b(2)).unwrap();
    assert!(why.contains("diverged"), "{why}");
}

#[test]
fn a_standby_without_a_wal_receiver_is_not_eligible_and_is_repointed_after_a_while() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let acts = see(&mut m, &mut c, 1, stranded(4900, 1));
    assert!(m.not_eligible(b(1)).unwrap().contains("no WAL receiver"));
    assert_eq!(m.state, State::Degraded);
    assert!(!acts.iter().any(|a| matches!(a, Action::Repoint { .. })), "a receiver restarting is given three intervals");
    see(&mut m, &mut c, 1, stranded(4900, 1));
    let mut acts = Vec::new();
    for _ in 0..8 {
        acts.extend(see(&mut m, &mut c, 1, stranded(4900, 1)));
    }
    assert_eq!(acts.iter().filter(|a| matches!(a, Action::Repoint { .. })).count(), 1);
    let err = OpError::Conninfo(crate::monitor::conninfo::ConninfoError::Empty);
    m.repointed(b(1), b(0), Err(err), c.tick());
    assert!(m.not_eligible(b(1)).unwrap().contains("re-pointing it at pg-a failed: primary_conninfo is empty"));
}

/// A switchover with a second standby: before the candidate is promoted, the other standby
/// is pointed at it and must stream from it, so it never receives the old primary's last
/// background WAL (which would leave it diverged from the new timeline).
#[test]
fn a_switchover_cascades_the_other_standbys_from_the_candidate_first() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    for (i, b) in m.backends.iter_mut().enumerate() {
        b.address = format!("127.0.0.1:{}", 5432 + i);
    }
    let (started, _) = trigger(&mut m, &mut c, Some("pg-b"), false).unwrap();
    m.writes_stopped(started.attempt, b(0), Ok(5000), c.tick());
    let acts = m.replayed(started.attempt, b(1), Ok(5000), c.tick());
    assert!(acts.contains(&Action::Repoint { standby: b(2), primary: b(1) }), "{acts:?}");
    assert!(promotes(&acts).is_empty());
    assert_eq!(m.phase(), "cascading");
    let acts = m.repointed(b(2), b(1), Ok(Repointed { slot: None, changed: true }), c.tick());
    assert!(acts.contains(&Action::CheckNow(b(2))));
    assert!(promotes(&acts).is_empty(), "still streaming from pg-a");
    let mut cascaded = standby(5000, 1);
    cascaded.receiver = Some(Receiver { status: "streaming".into(), timeline: Some(1), upstream: Some("127.0.0.1:5433".into()) });
    let acts = see(&mut m, &mut c, 2, cascaded);
    assert_eq!(promotes(&acts), [1]);

    // A standby that never switches does not hold the switchover forever.
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    let (started, _) = trigger(&mut m, &mut c, Some("pg-b"), false).unwrap();
    m.writes_stopped(started.attempt, b(0), Ok(5000), c.tick());
    m.replayed(started.attempt, b(1), Ok(5000), c.tick());
    let mut acts = Vec::new();
    for _ in 0..25 {
        acts.extend(see(&mut m, &mut c, 2, standby(5000, 1)));
    }
    assert_eq!(promotes(&acts), [1], "promoted after switchover_wait (2s)");
}

/// A trigger while the routed primary's latest check failed (below the threshold, or a
/// check turned away) is still a switchover: it may be writable, so writes are stopped first.
#[test]
fn a_trigger_on_a_routed_primary_is_a_switchover_even_after_a_failed_check() {
    for e in [refused as fn() -> CheckError, overloaded] {
        let (mut m, mut c) = running(2, PromoteMode::Auto);
        fail_with(&mut m, &mut c, 0, 1, e);
        let (started, acts) = trigger(&mut m, &mut c, None, false).unwrap();
        assert!(started.switchover);
        assert!(acts.iter().any(|a| matches!(a, Action::StopWrites { backend: PG_A, .. })));
        assert!(promotes(&acts).is_empty());
    }
}

/// Restarted while one backend's checks are turned away (its role unknown) and another is
/// down: nothing is promoted, since the unknown one may be a live primary.
#[test]
fn nothing_is_promoted_at_start_up_while_a_backend_s_role_is_unknown() {
    let mut m = machine(3, PromoteMode::Auto);
    let mut c = Clock::new();
    see(&mut m, &mut c, 1, stranded(100, 1));
    let mut acts = Vec::new();
    for _ in 0..8 {
        acts.extend(fail_with(&mut m, &mut c, 0, 1, overloaded));
        acts.extend(fail(&mut m, &mut c, 2, 1));
    }
    assert!(promotes(&acts).is_empty() && m.in_flight.is_none(), "{acts:?}");
}

/// A switchover left its old primary read-only (the undo could not reach it, or the proxy
/// stopped in the middle; restored from the state directory): once it is the routed
/// primary, it is made writable again, and asked again until it is.
#[test]
fn a_primary_left_read_only_by_a_switchover_is_made_writable_again() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let (started, _) = trigger(&mut m, &mut c, None, false).unwrap();
    m.writes_stopped(started.attempt, b(0), Ok(9000), c.tick());
    let behind = OpError::Behind { replayed: Some(4900), target: 9000, within: Duration::from_secs(1) };
    m.replayed(started.attempt, b(1), Err(behind), c.tick());
    let acts = m.writes_allowed(started.attempt, b(0), Err(OpError::Check(CheckError::Timeout(Duration::from_millis(250)))), c.tick());
    assert_eq!(routes(&acts), [Some(0)]);
    assert!(acts.contains(&Action::AllowWrites { attempt: 0, backend: PG_A }), "{acts:?}");
    assert!(m.read_only_left.contains(&b(0)));
    let mut later = Vec::new();
    for _ in 0..25 {
        later.extend(see(&mut m, &mut c, 0, primary(5000, 1)));
    }
    assert_eq!(later.iter().filter(|a| matches!(a, Action::AllowWrites { .. })).count(), 1, "asked again after 2s");
    m.writes_allowed(0, b(0), Ok(()), c.tick());
    assert!(m.read_only_left.is_empty());
    assert!(!see(&mut m, &mut c, 0, primary(5000, 1)).iter().any(|a| matches!(a, Action::AllowWrites { .. })));
}
