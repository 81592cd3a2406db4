//! Coordination through etcd as the machine sees it: who may promote, the record every proxy
//! routes by, the quorum's veto, fences shared by another proxy.

use super::*;

/// `running(n)` as one of several coordinated proxies, etcd up, `pg-a` recorded.
fn coordinated(n: usize, is_leader: bool) -> (Machine, Clock) {
    let (mut m, mut c) = running(n, PromoteMode::Auto);
    let leader = if is_leader { "me" } else { "other" };
    let acts = m.coordinate(
        |co| {
            co.me = "me".into();
            co.settled = true;
            co.etcd_up = true;
            co.leader = Some(leader.into());
            co.is_leader = is_leader;
            co.record = Some(0);
        },
        c.tick(),
    );
    assert!(routes(&acts).is_empty(), "the recorded primary stays routed");
    (m, c)
}

#[test]
fn a_follower_never_promotes_and_follows_the_leaders_record() {
    let (mut m, mut c) = coordinated(3, false);
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4899, 1)), (2, standby(4898, 1))]);
    assert!(promotes(&acts).is_empty(), "only the leader promotes: {acts:?}");
    assert_eq!(m.phase(), "waiting_for_external_promotion");
    assert!(m.route_reason.contains("waiting for the coordinating leader (other)"), "{}", m.route_reason);
    // The leader records pg-c and promotes it; pg-b promoted by someone else is not followed.
    see(&mut m, &mut c, 1, primary(4899, 2));
    assert_eq!(m.route, None, "pg-b is primary but not recorded");
    m.coordinate(|co| co.record = Some(2), c.tick());
    see(&mut m, &mut c, 2, primary(4898, 2));
    assert_eq!(m.route, Some(2));
    assert_eq!(kinds(&m.coordinate(|co| co.leader = Some("third".into()), c.tick())), []);
}

#[test]
fn a_routed_primary_that_leaves_the_record_is_cut() {
    let (mut m, mut c) = coordinated(2, false);
    // A switchover by the leader: the record moves to pg-b before pg-b is promoted.
    let acts = m.coordinate(|co| co.record = Some(1), c.tick());
    assert_eq!(routes(&acts), [None], "sessions to pg-a are cut at once");
    assert!(m.route_reason.contains("no longer the recorded primary"), "{}", m.route_reason);
    // pg-a answering as a primary does not win it back.
    assert!(routes(&see(&mut m, &mut c, 0, primary(5000, 1))).is_empty());
    let acts = see(&mut m, &mut c, 1, primary(5000, 2));
    assert_eq!(routes(&acts), [Some(1)]);
}

#[test]
fn the_leader_promotes_only_with_a_quorum_and_etcd() {
    let (mut m, mut c) = coordinated(2, true);
    let views = |down: &[&str]| -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        [("p2".to_string(), down.iter().map(|s| s.to_string()).collect()), ("p3".to_string(), Default::default())].into_iter().collect()
    };
    m.coordinate(
        |co| {
            co.majority = true;
            co.views = views(&[]);
        },
        c.tick(),
    );
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4899, 1))]);
    assert!(promotes(&acts).is_empty(), "vetoed: {acts:?}");
    assert!(m.route_reason.contains("waiting for the other proxies to agree: 1 of 3 live proxies see pg-a down"), "{}", m.route_reason);
    // A second proxy agrees as etcd goes away: still nothing.
    let acts = m.coordinate(
        |co| {
            co.views = views(&["pg-a"]);
            co.etcd_up = false;
        },
        c.tick(),
    );
    assert!(promotes(&acts).is_empty());
    assert!(m.route_reason.contains("etcd is unreachable"), "{}", m.route_reason);
    assert_eq!(m.phase(), "waiting_for_external_promotion");
    // etcd is back: two of three see it down, the leader promotes.
    let acts = m.coordinate(|co| co.etcd_up = true, c.tick());
    assert_eq!(promotes(&acts), [1]);
}

#[test]
fn a_proxy_that_wins_the_election_counts_the_quorum_before_it_promotes() {
    // A follower that cannot reach the primary (its own path) has a confirmed outage when it
    // is elected: the others' views are counted in the same decision.
    let (mut m, mut c) = coordinated(2, false);
    m.coordinate(
        |co| {
            co.majority = true;
            co.views = [("p2".to_string(), Default::default()), ("p3".to_string(), Default::default())].into_iter().collect();
        },
        c.tick(),
    );
    lose_primary(&mut m, &mut c, &[(1, standby(4899, 1))]);
    let acts = m.coordinate(
        |co| {
            co.is_leader = true;
            co.leader = Some("me".into());
        },
        c.tick(),
    );
    assert!(promotes(&acts).is_empty(), "{acts:?}");
    assert!(m.route_reason.contains("1 of 3"), "{}", m.route_reason);
}

#[test]
fn nothing_is_routed_or_promoted_before_etcd_has_spoken() {
    let mut m = machine(2, PromoteMode::Auto);
    m.coord = Some(Coord::new("me".into(), true));
    let mut c = Clock::new();
    see(&mut m, &mut c, 1, standby(4900, 1));
    let acts = see(&mut m, &mut c, 0, primary(5000, 1));
    assert!(routes(&acts).is_empty() || routes(&acts) == [None], "{acts:?}");
    assert_eq!(m.route, None);
    assert!(m.route_reason.contains("first read of etcd"), "{}", m.route_reason);
    assert!(!m.may_promote());
    // etcd's first read: pg-a recorded.
    m.coordinate(
        |co| {
            co.etcd_up = true;
            co.record = Some(0);
        },
        c.tick(),
    );
    assert_eq!(m.route, None, "still unsettled");
    let acts = m.coordinate(|co| co.settled = true, c.tick());
    assert_eq!(routes(&acts), [Some(0)]);
    // A record naming no backend of this proxy: nothing routed, nothing recorded over it.
    let acts = m.coordinate(
        |co| {
            co.record = None;
            co.record_foreign = Some("pg-z".into());
            co.is_leader = true;
        },
        c.tick(),
    );
    assert_eq!(routes(&acts), [None]);
    assert_eq!(m.record_wanted(), None);
}

#[test]
fn an_operator_trigger_is_the_leaders() {
    let (mut m, mut c) = coordinated(2, false);
    let r = m.trigger(&TriggerRequest { target: None, force: false, who: "alice".into() }, c.tick());
    match r {
        Err(Refusal::Conflict(why)) => assert!(why.contains("does not lead"), "{why}"),
        other => panic!("{other:?}"),
    }
    let (mut m, mut c) = coordinated(2, true);
    assert!(m.trigger(&TriggerRequest { target: None, force: false, who: "alice".into() }, c.tick()).is_ok());
}

#[test]
fn a_fence_set_by_another_proxy_is_kept_and_lifted_with_it() {
    let (mut m, mut c) = coordinated(3, false);
    let f = Fence::new(FenceKind::SplitBrain, "split brain".into());
    let mut acts = m.peer_fence(1, Some(f), "p2", c.tick());
    acts.extend(m.reevaluate(c.tick()));
    assert_eq!(kinds(&acts), [EventKind::Fence], "the last check (before the fence) does not lift it");
    assert!(m.backends[1].fence.as_ref().unwrap().reason.starts_with("fenced by p2: split brain"));
    assert!(!m.eligible(1), "a fenced standby is not a candidate");
    let acts = m.peer_fence(1, None, "p2", c.tick());
    assert_eq!(kinds(&acts), [EventKind::Unfence]);
    assert!(m.backends[1].fence.is_none());
    // A check begun after the fence that finds it rebuilt as a standby lifts it here (and so,
    // through etcd, everywhere).
    let f = Fence::new(FenceKind::Unreachable, "old primary".into());
    m.peer_fence(2, Some(f), "p2", c.tick());
    let acts = m.observe(2, Ok(standby(4800, 1)), Duration::ZERO, c.tick());
    assert_eq!(kinds(&acts), [EventKind::Unfence]);
}

#[test]
fn the_leader_re_records_only_when_the_record_names_no_routable_primary() {
    let (mut m, mut c) = coordinated(2, true);
    assert_eq!(m.record_wanted(), None, "pg-a recorded and routed");
    m.coordinate(|co| co.record = None, c.tick());
    assert_eq!(m.record_wanted(), Some(0), "a new cluster: record the routed primary");
    m.coordinate(|co| co.record = Some(0), c.tick());
    // A switchover recorded pg-b, then pg-b refused the promotion and it was undone.
    let (started, _) = m.trigger(&TriggerRequest { target: None, force: false, who: "alice".into() }, c.tick()).unwrap();
    m.writes_stopped(started.attempt, 0, Ok(5000), c.tick());
    m.replayed(started.attempt, 1, Ok(5000), c.tick());
    m.coordinate(|co| co.record = Some(1), c.tick());
    assert_eq!(m.record_wanted(), None, "not while the switchover runs");
    let denied = PromoteError::Refused(CheckError::Server { code: "42501".into(), message: "permission denied for function pg_promote".into() });
    m.promoted(started.attempt, 1, Err(denied), c.tick());
    m.writes_allowed(started.attempt, 0, Ok(()), c.tick());
    see(&mut m, &mut c, 1, standby(5000, 1));
    see(&mut m, &mut c, 0, primary(5000, 1));
    assert_eq!(m.route, None, "pg-a is not recorded");
    assert_eq!(m.record_wanted(), Some(0), "the leader records pg-a again");
    let acts = m.coordinate(|co| co.record = Some(0), c.tick());
    assert_eq!(routes(&acts), [Some(0)]);
    // A follower never records.
    m.coordinate(|co| co.is_leader = false, c.tick());
    m.coordinate(|co| co.record = None, c.tick());
    assert_eq!(m.record_wanted(), None);
}

#[test]
fn a_peers_fence_on_the_routed_primary_is_never_lifted_by_this_proxy() {
    // A switchover by the leader reaches a follower as the old primary's fence (the record
    // follows): the old primary still answers, writable, but the fence is not this proxy's
    // to lift, so it is not given back the route.
    let (mut m, mut c) = coordinated(2, false);
    let f = Fence::new(FenceKind::Superseded, "switchover to pg-b".into());
    let mut acts = m.peer_fence(0, Some(f), "p1", c.tick());
    acts.extend(m.reevaluate(c.tick()));
    assert_eq!(routes(&acts), [None], "sessions to the fenced primary are cut");
    for _ in 0..5 {
        let acts = see(&mut m, &mut c, 0, primary(5000, 1));
        assert!(!kinds(&acts).contains(&EventKind::Unfence), "{acts:?}");
    }
    assert!(m.backends[0].fence.is_some());
    assert_eq!(m.route, None);
    m.coordinate(|co| co.record = Some(1), c.tick());
    let acts = see(&mut m, &mut c, 1, primary(5000, 2));
    assert_eq!(routes(&acts), [Some(1)]);
}
