//! Synchronous mode: the lists the machine asks for, what it records when no standby is
//! left, and which standby a failover may promote.

use super::*;
use crate::config::SyncMode;
use crate::monitor::observation::Sender;

fn mode(m: &mut Machine, c: &mut Clock, mode: SyncMode) -> Vec<Action> {
    let mut s = m.settings.clone();
    s.synchronous = mode;
    m.reload(s, false, c.tick())
}

/// A primary whose `synchronous_standby_names` is `list`, with these standbys streaming
/// from it (name, flushed position).
fn primary_list(lsn: u64, list: &str, streaming: &[(&str, u64)]) -> Observation {
    let listed = crate::monitor::standby_names::parse(list).unwrap();
    let sync_state = |n: &str| if listed.as_ref().is_some_and(|l| l.matches(n)) { "quorum" } else { "async" };
    Observation {
        sync_names: Some(list.into()),
        senders: streaming
            .iter()
            .map(|(n, f)| Sender { name: n.to_string(), state: "streaming".into(), sync_state: sync_state(n).into(), flush_lsn: Some(*f) })
            .collect(),
        ..primary(lsn, 1)
    }
}

/// The lists asked for, by backend index.
fn sets(acts: &[Action]) -> Vec<(usize, Option<String>)> {
    acts.iter().filter_map(|a| if let Action::SetSynchronous { backend, value } = a { Some((backend.index(), value.clone())) } else { None }).collect()
}

fn applied(m: &mut Machine, c: &mut Clock, i: usize, value: Option<&str>) -> Vec<Action> {
    m.synchronous_applied(b(i), value.map(str::to_string), Ok(()), c.tick())
}

const BOTH: &str = r#"ANY 1 ("pg-b", "pg-c")"#;
const ONLY_B: &str = r#"ANY 1 ("pg-b")"#;

#[test]
fn the_primary_lists_the_standbys_streaming_under_their_name_and_standbys_are_cleared() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    let acts = mode(&mut m, &mut c, SyncMode::On);
    assert!(sets(&acts).is_empty() && kinds(&acts).is_empty(), "the standbys stream under other names: their list stays while they are named");
    assert_eq!(m.sync_health().0, SyncHealth::Unknown);
    let acts = see(&mut m, &mut c, 0, primary_list(5000, "", &[("pg-b", 4990), ("pg-c", 4990)]));
    assert_eq!(sets(&acts), [(0, Some(BOTH.into()))]);
    assert!(kinds(&acts).is_empty());
    assert_eq!(m.sync_health().0, SyncHealth::Protected);
    assert!(sets(&see(&mut m, &mut c, 0, primary_list(5000, "", &[("pg-b", 4990), ("pg-c", 4990)]))).is_empty(), "asked already");
    applied(&mut m, &mut c, 0, Some(BOTH));
    let acts = see(&mut m, &mut c, 0, primary_list(5001, BOTH, &[("pg-b", 4990), ("pg-c", 4990)]));
    assert!(sets(&acts).is_empty() && kinds(&acts).is_empty(), "{acts:?}");
    assert_eq!(m.sync_health().0, SyncHealth::Protected);

    // A standby with a list of its own (from a base backup, or an old primary rebuilt) gets
    // it emptied: it starts from what the machine gives it if it is ever promoted.
    let acts = see(&mut m, &mut c, 1, Observation { sync_names: Some("ANY 1 (*)".into()), ..standby(4990, 1) });
    assert_eq!(sets(&acts), [(1, Some(String::new()))]);
}

#[test]
fn the_list_follows_standbys_that_leave_and_return_and_on_empties_it() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    mode(&mut m, &mut c, SyncMode::On);
    see(&mut m, &mut c, 0, primary_list(5000, BOTH, &[("pg-b", 5000), ("pg-c", 5000)]));
    assert_eq!(m.sync_health().0, SyncHealth::Protected);

    // pg-c leaves: the list names pg-b only; pg-c still counts as possibly holding writes
    // pg-b lacks until pg-b has flushed past the point where the shorter list took effect.
    see(&mut m, &mut c, 2, stranded(5000, 1));
    let acts = see(&mut m, &mut c, 0, primary_list(5010, BOTH, &[("pg-b", 5010)]));
    assert_eq!(sets(&acts), [(0, Some(ONLY_B.into()))]);
    applied(&mut m, &mut c, 0, Some(ONLY_B));
    see(&mut m, &mut c, 0, primary_list(5100, ONLY_B, &[("pg-b", 5050)]));
    assert!(m.synchronous_set(b(0)).members.contains(&b(2)), "pg-b has not flushed past 5100 yet");
    assert_eq!(m.synchronous_set(b(0)).need, 2, "both must answer for a failover");
    see(&mut m, &mut c, 0, primary_list(5200, ONLY_B, &[("pg-b", 5100)]));
    assert_eq!(m.synchronous_set(b(0)).members, [b(1)].into(), "settled");

    // pg-b leaves too: with "on" the list is emptied, logged, recorded and counted.
    let mut acts = fail(&mut m, &mut c, 1, 3);
    acts.extend(see(&mut m, &mut c, 0, primary_list(5300, ONLY_B, &[])));
    assert_eq!(sets(&acts), [(0, Some(String::new()))]);
    let ev = events(&acts).into_iter().find(|e| e.kind == EventKind::SynchronousUnprotected).expect("recorded");
    assert!(ev.reason.contains("emptied") && ev.reason.contains("pg-b: down"), "{}", ev.reason);
    assert_eq!((m.sync_health().0, m.counters.sync_emptied), (SyncHealth::Unprotected, 1));

    // It returns and streams: listed again, protected again.
    applied(&mut m, &mut c, 0, Some(""));
    see(&mut m, &mut c, 1, standby(5300, 1));
    let acts = see(&mut m, &mut c, 0, primary_list(5300, "", &[("pg-b", 5300)]));
    assert_eq!(sets(&acts), [(0, Some(ONLY_B.into()))]);
    assert_eq!(kinds(&acts), [EventKind::SynchronousProtected]);
}

#[test]
fn strict_keeps_writes_waiting_and_says_why() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    // Both standbys lost their WAL receivers.
    see(&mut m, &mut c, 1, stranded(4900, 1));
    see(&mut m, &mut c, 2, stranded(4900, 1));
    let acts = mode(&mut m, &mut c, SyncMode::Strict);
    assert_eq!(sets(&acts), [(0, Some(BOTH.into()))], "every standby that could be synchronous, so a commit waits for one");
    assert_eq!(kinds(&acts), [EventKind::SynchronousBlocked]);
    let (health, why) = m.sync_health();
    assert_eq!(health, SyncHealth::Blocked);
    assert!(why.contains("wait") && why.contains("pg-b: does not stream from pg-a"), "{why}");
    assert_eq!(m.counters.sync_emptied, 0, "strict never empties the list");
}

#[test]
fn a_failover_promotes_only_a_standby_that_was_synchronous() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    mode(&mut m, &mut c, SyncMode::On);
    // pg-c streams, but not under its name: only pg-b is listed.
    see(&mut m, &mut c, 0, primary_list(5000, ONLY_B, &[("pg-b", 4950), ("walreceiver", 4999)]));
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4950, 1)), (2, standby(4999, 1))]);
    assert_eq!(promotes(&acts), [1], "pg-c has more WAL but may lack writes pg-a acknowledged: only pg-b is sure to have them");
    assert!(m.not_eligible(b(2)).unwrap().contains("not synchronous"), "{:?}", m.not_eligible(b(2)));
    let acts = m.promoted(attempt_of(&acts), b(1), Ok(primary(4950, 2)), c.tick());
    let ev = events(&acts).into_iter().find(|e| e.kind == EventKind::Failover).unwrap();
    assert!(ev.reason.contains("pg-b was synchronous on pg-a") && ev.reason.contains("no write pg-a acknowledged is lost"), "{}", ev.reason);
}

#[test]
fn a_failover_waits_until_enough_synchronous_standbys_answer() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    mode(&mut m, &mut c, SyncMode::On);
    see(&mut m, &mut c, 2, standby(3000, 1));
    see(&mut m, &mut c, 0, primary_list(5000, BOTH, &[("pg-b", 4950), ("pg-c", 3000)]));
    assert!(m.not_eligible(b(2)).unwrap().contains("exceeds max_lag_bytes"));
    // pg-c lags (not eligible), but it is listed: an acknowledged write may be on it alone.
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4950, 1))]);
    assert!(promotes(&acts).is_empty(), "pg-c's final position is unknown");
    assert!(m.route_reason.contains("waiting for the position of pg-c"), "{}", m.route_reason);
    let acts = see(&mut m, &mut c, 2, standby(3000, 1));
    assert_eq!(promotes(&acts), [1], "pg-b has the most WAL of the two");

    // The one with the most WAL cannot be promoted: nothing is.
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    mode(&mut m, &mut c, SyncMode::On);
    see(&mut m, &mut c, 0, primary_list(5000, BOTH, &[("pg-b", 4950), ("pg-c", 4950)]));
    let mut s = m.settings.clone();
    s.policies[2].nofailover = true;
    m.reload(s, false, c.tick());
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4950, 1)), (2, standby(4960, 1))]);
    assert!(promotes(&acts).is_empty());
    assert!(m.route_reason.contains("the synchronous standby with the most WAL cannot be promoted: pg-c (nofailover"), "{}", m.route_reason);
    let report = m.candidates();
    assert_eq!(report.choice.to, None);
    assert!(report.choice.wait.is_some());
}

#[test]
fn the_promoted_standby_gets_its_primary_list_first() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    mode(&mut m, &mut c, SyncMode::Strict);
    see(&mut m, &mut c, 0, primary_list(5000, BOTH, &[("pg-b", 4950), ("pg-c", 4940)]));
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4950, 1)), (2, standby(4940, 1))]);
    let list = acts.iter().find_map(|a| if let Action::Promote { synchronous, .. } = a { Some(synchronous.clone()) } else { None });
    assert_eq!(list, Some(Some(r#"ANY 1 ("pg-a", "pg-c")"#.to_string())), "strict: no write on pg-b runs unprotected");

    let (mut m, mut c) = running(3, PromoteMode::Auto);
    mode(&mut m, &mut c, SyncMode::On);
    see(&mut m, &mut c, 0, primary_list(5000, BOTH, &[("pg-b", 4950), ("pg-c", 4940)]));
    let acts = lose_primary(&mut m, &mut c, &[(1, Observation { sync_names: Some("ANY 1 (*)".into()), ..standby(4950, 1) }), (2, standby(4940, 1))]);
    let list = acts.iter().find_map(|a| if let Action::Promote { synchronous, .. } = a { Some(synchronous.clone()) } else { None });
    assert_eq!(list, Some(Some(String::new())), "on: nobody streams from it yet, so an empty list, not the stale one");
}

#[test]
fn an_unnamed_standby_is_repointed_to_name_it() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    let mut acts = Vec::new();
    for _ in 0..4 {
        acts.extend(see(&mut m, &mut c, 0, primary_list(5000, "", &[("walreceiver", 4990)])));
    }
    assert!(!acts.iter().any(|a| matches!(a, Action::Repoint { .. })), "off: names do not matter");
    let mut acts = mode(&mut m, &mut c, SyncMode::On);
    acts.extend(see(&mut m, &mut c, 0, primary_list(5000, "ANY 1 (*)", &[("walreceiver", 4990)])));
    assert!(acts.contains(&Action::Repoint { standby: b(1), primary: b(0) }), "{acts:?}");
    assert!(m.not_qualified(b(1), b(0)).unwrap().contains("not under its name"));
    assert!(sets(&acts).is_empty(), "the operator's list stays while the standby is named");
    // The re-point fails (say, a URI primary_conninfo): no more waiting, the list is emptied.
    let acts = m.repointed(b(1), b(0), Err(OpError::Conninfo(crate::monitor::conninfo::ConninfoError::Uri)), c.tick());
    assert_eq!(sets(&acts), [(0, Some(String::new()))]);
    assert_eq!(kinds(&acts), [EventKind::SynchronousUnprotected]);

    // A standby cascading from another configured backend is left alone.
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    m.backends[b(1)].address = "10.0.0.2:5432".into();
    see(
        &mut m,
        &mut c,
        2,
        Observation { receiver: Some(Receiver { status: "streaming".into(), timeline: Some(1), upstream: Some("10.0.0.2:5432".into()) }), ..standby(4898, 1) },
    );
    let mut acts = mode(&mut m, &mut c, SyncMode::On);
    for _ in 0..4 {
        acts.extend(see(&mut m, &mut c, 0, primary_list(5000, "", &[("pg-b", 4990)])));
    }
    assert!(!acts.iter().any(|a| matches!(a, Action::Repoint { standby, .. } if *standby == b(2))), "{acts:?}");
    assert_eq!(sets(&acts), [(0, Some(ONLY_B.into()))]);
}

#[test]
fn off_gives_back_what_it_set_and_followers_set_nothing() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    mode(&mut m, &mut c, SyncMode::On);
    let acts = see(&mut m, &mut c, 0, primary_list(5000, "", &[("pg-b", 4990)]));
    assert_eq!(sets(&acts), [(0, Some(ONLY_B.into()))]);
    applied(&mut m, &mut c, 0, Some(ONLY_B));
    let acts = mode(&mut m, &mut c, SyncMode::Off);
    assert_eq!(sets(&acts), [(0, None)], "back to the server's own configuration");
    applied(&mut m, &mut c, 0, None);
    assert!(sets(&see(&mut m, &mut c, 0, primary(5000, 1))).is_empty());
    assert!(m.backends[b(0)].sync_asked.is_none());

    let mut m = machine(2, PromoteMode::Auto);
    m.join("me".into(), true);
    let mut s = m.settings.clone();
    s.synchronous = SyncMode::On;
    let mut acts = m.reload(s, true, c.tick());
    acts.extend(see(&mut m, &mut c, 1, standby(4990, 1)));
    acts.extend(see(&mut m, &mut c, 0, primary_list(5000, "", &[("pg-b", 4990)])));
    assert!(sets(&acts).is_empty(), "only the leader sets lists");
}

/// A standby re-pointed at the new primary and streaming from it, under its name, counts as
/// on the new timeline even when the new primary dies before a check of the standby itself
/// saw its WAL receiver there (the receiver's timeline is gone with the connection).
#[test]
fn the_primary_s_senders_tell_a_standby_s_timeline() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    mode(&mut m, &mut c, SyncMode::On);
    see(&mut m, &mut c, 0, primary_list(5000, BOTH, &[("pg-b", 5000), ("pg-c", 5000)]));
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(5000, 1)), (2, standby(5000, 1))]);
    let acts = m.promoted(attempt_of(&acts), b(1), Ok(primary(5000, 2)), c.tick());
    assert_eq!(routes(&acts), [Some(1)]);
    // pg-b lists pg-c as streaming past its timeline's start; pg-c's own last check still
    // shows timeline 1, and the next ones come after pg-b is gone.
    see(&mut m, &mut c, 1, Observation { timeline: Some(2), ..primary_list(6000, r#"ANY 1 ("pg-c")"#, &[("pg-c", 6000)]) });
    assert_eq!(m.backends[b(1)].timeline(), 2);
    let acts = lose_primary_of(&mut m, &mut c, 1, &[(2, stranded(6000, 1))]);
    assert_eq!(promotes(&acts), [2], "{:?}", m.not_eligible(b(2)));
}

/// As `lose_primary`, for primary `p`.
fn lose_primary_of(m: &mut Machine, c: &mut Clock, p: usize, finals: &[(usize, Observation)]) -> Vec<Action> {
    let mut acts = fail(m, c, p, 3);
    for (i, o) in finals {
        acts.extend(see(m, c, *i, o.clone()));
    }
    for _ in 0..8 {
        if !promotes(&acts).is_empty() {
            break;
        }
        acts.extend(fail(m, c, p, 1));
    }
    acts
}

/// Strict names every standby that may come back, the dead old primary included. A standby
/// never seen connected to the primary, and silent since before the primary's last check,
/// cannot hold a write it acknowledged: the failover does not wait for it.
#[test]
fn a_listed_standby_never_connected_and_down_does_not_hold_a_failover() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    mode(&mut m, &mut c, SyncMode::Strict);
    fail(&mut m, &mut c, 1, 3);
    see(&mut m, &mut c, 0, primary_list(5000, BOTH, &[("pg-c", 5000)]));
    assert!(!m.synchronous_set(b(0)).members.contains(&b(1)), "pg-b never streamed from pg-a and is down");
    let acts = lose_primary(&mut m, &mut c, &[(2, standby(5000, 1))]);
    assert_eq!(promotes(&acts), [2]);

    // Seen connected once: it may hold writes, and is waited for.
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    mode(&mut m, &mut c, SyncMode::Strict);
    see(&mut m, &mut c, 0, primary_list(5000, BOTH, &[("pg-b", 5000), ("pg-c", 5000)]));
    fail(&mut m, &mut c, 1, 3);
    see(&mut m, &mut c, 0, primary_list(5000, BOTH, &[("pg-c", 5000)]));
    assert!(m.synchronous_set(b(0)).members.contains(&b(1)));
    let acts = lose_primary(&mut m, &mut c, &[(2, standby(5000, 1))]);
    assert!(promotes(&acts).is_empty(), "pg-b may hold a write only it acknowledged");
}
