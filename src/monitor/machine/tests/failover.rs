//! Detection, confirmation, promotion and its outcomes.

use super::*;

#[test]
fn sessions_are_cut_at_the_threshold_but_promotion_waits_for_the_confirmation() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let acts = fail(&mut m, &mut c, 0, 2);
    assert!(routes(&acts).is_empty(), "two failures are below the threshold: keep routing");
    let acts = fail(&mut m, &mut c, 0, 1);
    assert_eq!(routes(&acts), [None], "third failure clears the route (cuts sessions, holds clients)");
    assert!(acts.contains(&Action::CheckNow(b(1))), "the standby's position is read again at once");
    assert!(promotes(&acts).is_empty(), "down only 200ms");
    assert!(m.backends[b(0)].fence.is_none(), "nothing fenced while confirming");
    assert_eq!(m.phase(), "confirming");
    assert!(m.route_reason.contains("stays down for 500ms"), "{}", m.route_reason);
    // Down 500ms, but the standby's latest position predates the outage: read it first.
    let acts = fail(&mut m, &mut c, 0, 3);
    assert!(promotes(&acts).is_empty(), "{acts:?}");
    let acts = see(&mut m, &mut c, 1, standby(4950, 1));
    assert_eq!(promotes(&acts), [1]);
    assert_eq!(m.state, State::FailoverInProgress);
    assert_eq!(m.backends[b(0)].fence.as_ref().unwrap().kind, FenceKind::Unreachable);
    assert_eq!(kinds(&acts), [EventKind::Fence]);

    let acts = m.promoted(attempt_of(&acts), b(1), Ok(primary(4950, 2)), c.tick());
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(m.state, State::FailoverComplete);
    assert_eq!(m.counters.failovers, 1);
    let ev = events(&acts).pop().unwrap();
    assert_eq!((ev.kind, ev.from.as_deref(), ev.to.as_deref(), ev.trigger.as_str()), (EventKind::Failover, Some("pg-a"), Some("pg-b"), "automatic"));
    assert_eq!(ev.wal_distance_bytes, Some(50), "old primary's last LSN minus the promoted standby's");
    assert_eq!(ev.duration_ms, Some(500));
    assert!(acts.contains(&Action::FailoverDone(Duration::from_millis(500))));
}

/// A restart (refused for a few hundred ms) or a crash restart (57P03) of the primary is
/// shorter than the confirmation: its sessions are cut, clients held, and the route goes
/// back to it. Nothing is fenced or promoted.
#[test]
fn a_blip_shorter_than_the_confirmation_is_not_a_failover() {
    for e in [refused as fn() -> CheckError, || CheckError::Server { code: "57P03".into(), message: "the database system is starting up".into() }] {
        let (mut m, mut c) = running(2, PromoteMode::Auto);
        let mut acts = fail_with(&mut m, &mut c, 0, 4, e);
        acts.extend(see(&mut m, &mut c, 1, standby(4900, 1)));
        assert_eq!(routes(&acts), [None]);
        let acts = see(&mut m, &mut c, 0, primary(5000, 1));
        assert_eq!(routes(&acts), [Some(0)], "held clients go to the same primary");
        assert_eq!(kinds(&acts), [EventKind::Recovery], "no fence, no unfence, no failover");
        assert!(m.in_flight.is_none() && m.backends[b(0)].fence.is_none());
        assert_eq!((m.counters.failovers, m.state), (0, State::Healthy));
    }
}

#[test]
fn picks_the_standby_with_most_wal_at_the_end_and_skips_laggards() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    // Before the crash pg-b was ahead; afterwards pg-c turns out to have received more.
    see(&mut m, &mut c, 1, standby(4990, 1));
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4991, 1)), (2, standby(4999, 1))]);
    assert_eq!(promotes(&acts), [2], "final positions decide");

    let (mut m, mut c) = running(3, PromoteMode::Auto);
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4950, 1)), (2, standby(4950, 1))]);
    assert_eq!(promotes(&acts), [1], "tie: config order");

    let (mut m, mut c) = running(2, PromoteMode::Auto);
    see(&mut m, &mut c, 1, standby(3000, 1));
    assert!(m.not_eligible(b(1)).unwrap().contains("exceeds max_lag_bytes"));
    assert_eq!(m.state, State::RecoveryInProgress, "standby catching up");
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(3000, 1))]);
    assert!(promotes(&acts).is_empty(), "a standby beyond max_lag_bytes is never promoted");
    assert_eq!((m.state, m.route), (State::Degraded, None));
    assert!(m.route_reason.contains("no standby can be promoted"), "{}", m.route_reason);
}

#[test]
fn no_eligible_standby_waits_then_promotes_when_one_appears() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    fail(&mut m, &mut c, 1, 3);
    // The standby has been down a while when the primary goes.
    c.0.mono += Duration::from_secs(5);
    let acts = fail(&mut m, &mut c, 0, 8);
    assert!(promotes(&acts).is_empty());
    assert_eq!((m.state, m.route), (State::Unknown, None));
    // The standby returns, close enough to the old primary's last position.
    let acts = see(&mut m, &mut c, 1, standby(4950, 1));
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
    for _ in 0..6 {
        acts.extend(fail(&mut m, &mut c, 0, 1));
        acts.extend(fail(&mut m, &mut c, 1, 1));
    }
    assert!(promotes(&acts).is_empty(), "the standby is silent too");
    assert_eq!(m.route, None, "the unanswering primary gets no new sessions meanwhile");
    // The standby answers first: still no promotion, the primary's last failure began earlier.
    let acts = see(&mut m, &mut c, 1, standby(4900, 1));
    assert!(promotes(&acts).is_empty(), "{acts:?}");
    // Then the primary answers: it gets the route back; no failover is counted.
    let acts = see(&mut m, &mut c, 0, primary(5000, 1));
    assert_eq!(routes(&acts), [Some(0)]);
    assert!(promotes(&acts).is_empty());
    assert!(m.backends[b(0)].fence.is_none() && m.in_flight.is_none());
    assert_eq!(kinds(&acts), [EventKind::Recovery]);
    assert_eq!((m.counters.failovers, m.state), (0, State::Healthy));
}

/// The same stall, but the primary really is gone: once the standby answers, the primary
/// failing a whole check after that (ending a check timeout later) promotes the standby.
#[test]
fn after_a_stall_of_both_a_primary_still_failing_is_failed_over() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    for _ in 0..6 {
        fail(&mut m, &mut c, 0, 1);
        fail(&mut m, &mut c, 1, 1);
    }
    let acts = see(&mut m, &mut c, 1, standby(4900, 1));
    assert!(promotes(&acts).is_empty());
    // 100 ms later: that check began before the standby answered (timeout 250 ms).
    assert!(promotes(&fail(&mut m, &mut c, 0, 1)).is_empty());
    assert!(promotes(&fail(&mut m, &mut c, 0, 1)).is_empty());
    // 300 ms after the standby's answer: a whole check of the primary failed since.
    let acts = fail(&mut m, &mut c, 0, 1);
    assert_eq!(promotes(&acts), [1]);
    let acts = m.promoted(attempt_of(&acts), b(1), Ok(primary(4900, 2)), c.tick());
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
    let acts = fail(&mut m, &mut c, 0, 8);
    assert!(m.eligible(b(1)), "one failure is below the threshold");
    assert!(promotes(&acts).is_empty());
    assert_eq!(m.state, State::Degraded);
    // Its failure was long before the primary's outage: promoted as soon as it answers.
    assert_eq!(promotes(&see(&mut m, &mut c, 1, standby(4900, 1))), [1]);
}

/// Nothing can be promoted (the standby is down) and the primary restarts: it gets the
/// route back instead of staying out until an operator acts.
#[test]
fn a_primary_back_before_anything_was_promoted_takes_the_route_back() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    fail(&mut m, &mut c, 1, 3);
    c.0.mono += Duration::from_secs(5);
    fail(&mut m, &mut c, 0, 10);
    assert_eq!((m.state, m.route), (State::Unknown, None));
    let acts = see(&mut m, &mut c, 0, primary(5000, 1));
    assert_eq!(routes(&acts), [Some(0)]);
    assert!(m.backends[b(0)].fence.is_none() && m.in_flight.is_none());
    assert_eq!((m.state, m.counters.failovers), (State::Degraded, 0));
}

#[test]
fn a_refused_promotion_is_recorded_and_the_next_candidate_tried() {
    let (mut m, mut c, acts) = lost(3);
    assert_eq!(promotes(&acts), [1]);
    let denied = PromoteError::Refused(CheckError::Server { code: "42501".into(), message: "permission denied for function pg_promote".into() });
    let acts = m.promoted(attempt_of(&acts), b(1), Err(denied), c.tick());
    assert_eq!(kinds(&acts), [EventKind::FailoverFailed]);
    assert_eq!(promotes(&acts), [2]);
    assert_eq!(m.state, State::FailoverInProgress);
}

/// A request that never reached the candidate promoted nothing: the same candidate is
/// tried again once a check that began later succeeds.
#[test]
fn an_unsent_promotion_is_retried_after_a_fresh_check() {
    let (mut m, mut c, acts) = lost(2);
    let attempt = attempt_of(&acts);
    let acts = m.promoted(attempt, b(1), Err(PromoteError::NotSent(refused())), c.tick());
    assert!(promotes(&acts).is_empty());
    assert_eq!(m.in_flight.as_ref().unwrap().to, None);
    assert_eq!(promotes(&see(&mut m, &mut c, 1, standby(4899, 1))), [1]);
}

/// `pg_promote` timing out means "not finished yet": the route stays empty, the old primary
/// does not get it back, no second candidate is asked; when the candidate reports primary,
/// that is the one failover.
#[test]
fn a_promotion_once_asked_for_is_committed() {
    let (mut m, mut c, acts) = lost(3);
    let attempt = attempt_of(&acts);
    let acts = m.promoted(attempt, b(1), Err(PromoteError::Pending("pg_promote did not finish within 1s".into())), c.tick());
    assert!(routes(&acts).is_empty() && promotes(&acts).is_empty());
    assert_eq!((m.route, m.phase()), (None, "promoting"));
    // The old primary comes back writable meanwhile: no route for it.
    let acts = see(&mut m, &mut c, 0, primary(5000, 1));
    assert!(routes(&acts).is_empty() && promotes(&acts).is_empty(), "{acts:?}");
    let acts = see(&mut m, &mut c, 2, standby(4898, 1));
    assert!(promotes(&acts).is_empty(), "no second candidate while the first may finish");
    let acts = see(&mut m, &mut c, 1, standby(4899, 1));
    assert!(routes(&acts).is_empty());
    // The promotion finishes: routed, one failover, and the old primary (fenced before the
    // promotion was asked for) lost a split brain.
    let acts = see(&mut m, &mut c, 1, primary(4899, 2));
    assert_eq!(routes(&acts), [Some(1)]);
    assert_eq!(m.counters.failovers, 1);
    assert_eq!(m.backends[b(0)].fence.as_ref().unwrap().kind, FenceKind::SplitBrain);
}

/// A candidate that stops answering after its promotion was asked for is given up once it
/// is down past the threshold, fenced (it may come back promoted), and the next one tried.
#[test]
fn a_candidate_down_past_the_threshold_is_given_up_and_fenced() {
    let (mut m, mut c, acts) = lost(3);
    m.promoted(attempt_of(&acts), b(1), Err(PromoteError::Pending("timed out".into())), c.tick());
    assert!(promotes(&fail(&mut m, &mut c, 1, 2)).is_empty(), "below the threshold: still waiting");
    let acts = fail(&mut m, &mut c, 1, 1);
    assert_eq!(m.backends[b(1)].fence.as_ref().unwrap().kind, FenceKind::PromotionAsked);
    assert!(kinds(&acts).contains(&EventKind::FailoverFailed));
    assert_eq!(promotes(&acts), [2]);
    // Answering in recovery does not clear that fence: it may still finish promoting.
    see(&mut m, &mut c, 1, standby(4899, 1));
    assert!(m.backends[b(1)].fence.is_some());
    let acts = m.promoted(attempt_of(&acts), b(2), Ok(primary(4898, 2)), c.tick());
    assert_eq!(routes(&acts), [Some(2)]);
    // pg-b finishes its promotion after all: fenced, never routed.
    see(&mut m, &mut c, 1, primary(4899, 2));
    assert_eq!(m.route, Some(b(2)));
    assert_eq!(m.counters.split_brains, 1);
    assert_eq!(m.backends[b(1)].fence.as_ref().unwrap().kind, FenceKind::SplitBrain);
}

#[test]
fn late_results_of_an_earlier_attempt_are_ignored() {
    let (mut m, mut c, acts) = lost(3);
    let old = attempt_of(&acts);
    let denied = PromoteError::Refused(CheckError::Server { code: "42501".into(), message: "no".into() });
    m.promoted(old + 7, b(1), Err(denied.clone()), c.tick());
    assert_eq!(m.in_flight.as_ref().unwrap().to, Some(b(1)), "a result for another attempt changes nothing");
    let acts = m.replayed(old, b(1), Ok(1), c.tick());
    assert!(acts.iter().all(|a| !matches!(a, Action::Promote { .. })));
}

/// A promotion whose request came back unfinished, with the candidate still a standby long
/// after (the request may never have reached it): asked again, not given up, not undone.
#[test]
fn a_pending_promotion_is_asked_for_again() {
    let (mut m, mut c, acts) = lost(2);
    let attempt = attempt_of(&acts);
    m.promoted(attempt, b(1), Err(PromoteError::Pending("the connection broke while promoting".into())), c.tick());
    let mut acts = Vec::new();
    for _ in 0..12 {
        acts.extend(see(&mut m, &mut c, 1, standby(4899, 1)));
    }
    assert_eq!(promotes(&acts), [1], "asked again once promote_timeout (1s) passed: {acts:?}");
    assert_eq!(m.route, None);
}

/// While pg-b is being promoted, another manager promotes pg-c, which ends on a higher
/// timeline: pg-b is fenced by the split-brain guard and the attempt follows pg-c.
#[test]
fn a_candidate_that_loses_a_split_brain_while_promoting_is_dropped() {
    let (mut m, mut c, acts) = lost(3);
    let attempt = attempt_of(&acts);
    m.promoted(attempt, b(1), Err(PromoteError::Pending("timed out".into())), c.tick());
    see(&mut m, &mut c, 2, primary(4898, 3));
    assert_eq!(m.route, None, "pg-b may still finish: nothing is routed meanwhile");
    let acts = see(&mut m, &mut c, 1, primary(4899, 2));
    assert_eq!(m.route, Some(b(2)));
    assert!(m.in_flight.is_none());
    assert!(kinds(&acts).contains(&EventKind::SplitBrain));
}

/// The primary with the most WAL may be a standby whose latest check failed: the choice
/// waits for its answer instead of promoting one with less WAL.
#[test]
fn the_choice_waits_for_a_standby_whose_latest_check_failed() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    let mut acts = fail(&mut m, &mut c, 0, 3);
    acts.extend(see(&mut m, &mut c, 1, standby(4950, 1)));
    acts.extend(fail(&mut m, &mut c, 2, 1));
    acts.extend(fail(&mut m, &mut c, 0, 3));
    assert!(promotes(&acts).is_empty(), "pg-c's position is unknown: {acts:?}");
    let mut acts = see(&mut m, &mut c, 2, standby(4999, 1));
    // pg-c was silent during the outage too: the primary must fail once more after that.
    acts.extend(fail(&mut m, &mut c, 0, 3));
    assert_eq!(promotes(&acts), [2], "pg-c had the most WAL");
}
