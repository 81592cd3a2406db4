//! Coordination through etcd as the machine sees it: who may promote, the record every proxy
//! routes by, the quorum's veto, fences shared by another proxy, and what this proxy shares.
//! etcd's news come in as the coordinator sends them: batches of [`Event`]s.

use super::*;
use crate::cluster::{FenceRecord, MemberView, PrimaryRecord};
use crate::coord::{Event, SharedFence, Snapshot, UNREADABLE};

fn record(name: &str) -> PrimaryRecord {
    PrimaryRecord { name: name.into(), timeline: Some(1), system_identifier: None, epoch: 1, by: "other".into() }
}

fn leadership(leader: &str, is_leader: bool) -> Event {
    Event::Leadership { leader: Some(leader.into()), is_leader }
}

/// Another proxy's view: the backends its checks find down.
fn member(name: &str, down: &[&str]) -> Event {
    let view = MemberView {
        name: name.into(),
        leader: false,
        primary: None,
        down: down.iter().map(|s| s.to_string()).collect(),
        backends: Default::default(),
        paused: None,
        drain: None,
    };
    Event::Member { name: name.into(), view: Some(view) }
}

/// A fence another proxy shared, at mod revision `rev`.
fn shared(backend: &str, fence: Fence, by: &str, rev: i64) -> Event {
    Event::Fence { backend: backend.into(), fence: SharedFence::Set { fence: FenceRecord { fence, by: by.into() }, revision: rev } }
}

/// One batch of etcd's news.
fn news(m: &mut Machine, c: &mut Clock, batch: Vec<Event>) -> Vec<Action> {
    m.coordinated(batch, c.tick())
}

/// The first read of a session that finds `recorded` as the record (at revision 10).
fn loaded(recorded: &str) -> Event {
    Event::Loaded(Snapshot { record: Some(record(recorded)), record_revision: 10, ..Default::default() })
}

/// `running(n)` as one of several coordinated proxies, etcd up, `pg-a` recorded.
fn coordinated(n: usize, is_leader: bool) -> (Machine, Clock) {
    let (mut m, mut c) = running(n, PromoteMode::Auto);
    m.join("me".into(), false);
    let leader = if is_leader { "me" } else { "other" };
    let acts = news(&mut m, &mut c, vec![Event::EtcdUp(true), leadership(leader, is_leader), loaded("pg-a")]);
    assert!(routes(&acts).is_empty(), "the recorded primary stays routed");
    (m, c)
}

/// `failover.quorum = "majority"`, as a reload sets it.
fn majority(m: &mut Machine, c: &mut Clock) {
    m.reload(m.settings.clone(), true, c.tick());
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
    news(&mut m, &mut c, vec![Event::Record(Some(record("pg-c")), 11)]);
    see(&mut m, &mut c, 2, primary(4898, 2));
    assert_eq!(m.route, Some(b(2)));
    assert_eq!(kinds(&news(&mut m, &mut c, vec![leadership("third", false)])), []);
}

#[test]
fn a_routed_primary_that_leaves_the_record_is_cut() {
    let (mut m, mut c) = coordinated(2, false);
    // A switchover by the leader: the record moves to pg-b before pg-b is promoted.
    let acts = news(&mut m, &mut c, vec![Event::Record(Some(record("pg-b")), 11)]);
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
    majority(&mut m, &mut c);
    news(&mut m, &mut c, vec![member("p2", &[]), member("p3", &[])]);
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4899, 1))]);
    assert!(promotes(&acts).is_empty(), "vetoed: {acts:?}");
    assert!(m.route_reason.contains("waiting for the other proxies to agree: 1 of 3 live proxies see pg-a down"), "{}", m.route_reason);
    // A second proxy agrees as etcd goes away: still nothing.
    let acts = news(&mut m, &mut c, vec![member("p2", &["pg-a"]), Event::EtcdUp(false)]);
    assert!(promotes(&acts).is_empty());
    assert!(m.route_reason.contains("etcd is unreachable"), "{}", m.route_reason);
    assert_eq!(m.phase(), "waiting_for_external_promotion");
    // etcd is back: two of three see it down, the leader promotes.
    let acts = news(&mut m, &mut c, vec![Event::EtcdUp(true)]);
    assert_eq!(promotes(&acts), [1]);
}

#[test]
fn a_proxy_that_wins_the_election_counts_the_quorum_before_it_promotes() {
    // A follower that cannot reach the primary (its own path) has a confirmed outage when it
    // is elected: the others' views are counted in the same decision.
    let (mut m, mut c) = coordinated(2, false);
    majority(&mut m, &mut c);
    news(&mut m, &mut c, vec![member("p2", &[]), member("p3", &[])]);
    lose_primary(&mut m, &mut c, &[(1, standby(4899, 1))]);
    let acts = news(&mut m, &mut c, vec![leadership("me", true)]);
    assert!(promotes(&acts).is_empty(), "{acts:?}");
    assert!(m.route_reason.contains("1 of 3"), "{}", m.route_reason);
}

#[test]
fn nothing_is_routed_or_promoted_before_etcd_has_spoken() {
    let mut m = machine(2, PromoteMode::Auto);
    m.join("me".into(), true);
    let mut c = Clock::new();
    see(&mut m, &mut c, 1, standby(4900, 1));
    let acts = see(&mut m, &mut c, 0, primary(5000, 1));
    assert!(routes(&acts).is_empty() || routes(&acts) == [None], "{acts:?}");
    assert_eq!(m.route, None);
    assert!(m.route_reason.contains("first read of etcd"), "{}", m.route_reason);
    assert!(!m.may_promote());
    // etcd answers and pg-a is recorded, but the first read is not finished.
    news(&mut m, &mut c, vec![Event::EtcdUp(true), Event::Record(Some(record("pg-a")), 5)]);
    assert_eq!(m.route, None, "still unsettled");
    let acts = news(&mut m, &mut c, vec![loaded("pg-a")]);
    assert_eq!(routes(&acts), [Some(0)]);
    // A record naming no backend of this proxy: nothing routed, nothing recorded over it.
    let acts = news(&mut m, &mut c, vec![Event::Record(Some(record("pg-z")), 11), leadership("me", true)]);
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
    let acts = news(&mut m, &mut c, vec![shared("pg-b", f, "p2", 20)]);
    assert_eq!(kinds(&acts), [EventKind::Fence], "the last check (before the fence) does not lift it");
    assert!(m.backends[b(1)].fence.as_ref().unwrap().reason.starts_with("fenced by p2: split brain"));
    assert!(!m.eligible(b(1)), "a fenced standby is not a candidate");
    assert!(m.share(c.tick()).is_empty(), "a peer's fence is never shared back");
    let acts = news(&mut m, &mut c, vec![Event::Fence { backend: "pg-b".into(), fence: SharedFence::Lifted }]);
    assert_eq!(kinds(&acts), [EventKind::Unfence]);
    assert!(m.backends[b(1)].fence.is_none());
    // A check begun after the fence that finds it rebuilt as a standby lifts it here (and so,
    // through etcd, everywhere: only the fence's revision is lifted).
    let f = Fence::new(FenceKind::Unreachable, "old primary".into());
    news(&mut m, &mut c, vec![shared("pg-c", f, "p2", 21)]);
    let acts = m.observe(b(2), Ok(standby(4800, 1)), Duration::ZERO, c.tick());
    assert_eq!(kinds(&acts), [EventKind::Unfence]);
    assert_eq!(m.share(c.tick()), [Action::LiftFence { backend: "pg-c".into(), revision: 21 }]);
}

#[test]
fn the_leader_re_records_only_when_the_record_names_no_routable_primary() {
    let (mut m, mut c) = coordinated(2, true);
    assert_eq!(m.record_wanted(), None, "pg-a recorded and routed");
    news(&mut m, &mut c, vec![Event::Record(None, 0)]);
    assert_eq!(m.record_wanted(), Some(b(0)), "a new cluster: record the routed primary");
    news(&mut m, &mut c, vec![Event::Record(Some(record("pg-a")), 12)]);
    // A switchover recorded pg-b, then pg-b refused the promotion and it was undone.
    let (started, _) = m.trigger(&TriggerRequest { target: None, force: false, who: "alice".into() }, c.tick()).unwrap();
    m.writes_stopped(started.attempt, b(0), Ok(5000), c.tick());
    m.replayed(started.attempt, b(1), Ok(5000), c.tick());
    news(&mut m, &mut c, vec![Event::Record(Some(record("pg-b")), 13)]);
    assert_eq!(m.record_wanted(), None, "not while the switchover runs");
    let denied = PromoteError::Refused(CheckError::Server { code: "42501".into(), message: "permission denied for function pg_promote".into() });
    m.promoted(started.attempt, b(1), Err(denied), c.tick());
    m.writes_allowed(started.attempt, b(0), Ok(()), c.tick());
    see(&mut m, &mut c, 1, standby(5000, 1));
    see(&mut m, &mut c, 0, primary(5000, 1));
    assert_eq!(m.route, None, "pg-a is not recorded");
    assert_eq!(m.record_wanted(), Some(b(0)), "the leader records pg-a again");
    let acts = news(&mut m, &mut c, vec![Event::Record(Some(record("pg-a")), 14)]);
    assert_eq!(routes(&acts), [Some(0)]);
    // A follower never records.
    news(&mut m, &mut c, vec![leadership("other", false)]);
    news(&mut m, &mut c, vec![Event::Record(None, 0)]);
    assert_eq!(m.record_wanted(), None);
}

#[test]
fn the_leader_writes_the_record_it_wants_once_and_again_after_a_failure() {
    let (mut m, mut c) = coordinated(2, true);
    news(&mut m, &mut c, vec![Event::Record(None, 0)]);
    let acts = m.share(c.tick());
    let [Action::RecordPrimary { backend: PG_A, recording }] = acts.as_slice() else { panic!("{acts:?}") };
    assert_eq!((recording.record.name.as_str(), recording.record.epoch, recording.expect), ("pg-a", 2, 0), "the next epoch, replacing no record");
    assert!(m.share(c.tick()).is_empty(), "one at a time");
    m.record_written(b(0), 2, None, c.tick());
    assert!(m.share(c.tick()).is_empty(), "not again at once after a failure");
    for _ in 0..10 {
        c.tick();
    }
    assert!(matches!(m.share(c.tick()).as_slice(), [Action::RecordPrimary { backend: PG_A, .. }]), "again a second later");
    m.record_written(b(0), 2, Some(30), c.tick());
    assert!(m.share(c.tick()).is_empty());
    assert_eq!(m.route, Some(b(0)));
}

#[test]
fn split_brain_fences_are_shared_only_while_the_record_they_were_decided_on_stands() {
    // pg-b comes back writable beside the recorded pg-a: fenced here, and shared on the
    // condition that the record is still the one at revision 10.
    let (mut m, mut c) = coordinated(2, false);
    see(&mut m, &mut c, 1, primary(4900, 1));
    assert_eq!(m.backends[b(1)].fence.as_ref().unwrap().kind, FenceKind::SplitBrain);
    let acts = m.share(c.tick());
    let [Action::ShareFence { backend, fence, while_record: Some(10) }] = acts.as_slice() else { panic!("{acts:?}") };
    assert_eq!((backend.as_str(), fence.by.as_str()), ("pg-b", "me"));
    // etcd refused it: the record had moved, to pg-b. The record wins: pg-b's fence is
    // lifted, never shared, and pg-a (writable beside the record) is the one fenced now.
    let acts = news(&mut m, &mut c, vec![Event::Record(Some(record("pg-b")), 11), Event::FenceRefused { backend: "pg-b".into() }]);
    assert_eq!(kinds(&acts).first(), Some(&EventKind::Unfence), "{acts:?}");
    assert!(m.backends[b(1)].fence.is_none());
    let acts = m.share(c.tick());
    assert!(matches!(acts.as_slice(), [Action::ShareFence { backend, while_record: Some(11), .. }] if backend == "pg-a"), "{acts:?}");

    // Refused because the record moved elsewhere: shared again on the new record.
    let (mut m, mut c) = coordinated(3, false);
    see(&mut m, &mut c, 1, primary(4900, 1));
    assert_eq!(m.share(c.tick()).len(), 1);
    news(&mut m, &mut c, vec![Event::Record(Some(record("pg-a")), 12), Event::FenceRefused { backend: "pg-b".into() }]);
    assert!(matches!(m.share(c.tick()).as_slice(), [Action::ShareFence { while_record: Some(12), .. }]));

    // Decided while the record already named it (a stale view): never shared.
    let (mut m, mut c) = coordinated(2, false);
    news(&mut m, &mut c, vec![Event::EtcdUp(false)]);
    news(&mut m, &mut c, vec![Event::Record(Some(record("pg-b")), 11)]);
    see(&mut m, &mut c, 0, primary(5001, 1));
    see(&mut m, &mut c, 1, primary(4900, 1));
    assert_eq!(m.backends[b(1)].fence.as_ref().map(|f| f.kind), Some(FenceKind::SplitBrain), "the record is not current without etcd");
    assert!(m.share(c.tick()).is_empty());
}

#[test]
fn the_first_read_lifts_what_etcd_does_not_have_and_keeps_what_it_cannot_read() {
    // pg-b fenced before a restart; etcd has no fence on it: the shared fences win.
    let names = ["pg-a".to_string(), "pg-b".to_string(), "pg-c".to_string()];
    let fence = Fence::new(FenceKind::Unreachable, "old primary".into());
    let mut m = Machine::new(settings(PromoteMode::Auto), &names, &[("pg-b".into(), fence.clone())]);
    let mut c = Clock::new();
    m.join("me".into(), false);
    assert!(m.share(c.tick()).is_empty(), "a fence restored from disk is not shared");
    let acts = news(&mut m, &mut c, vec![Event::EtcdUp(true), loaded("pg-a")]);
    assert_eq!(kinds(&acts), [EventKind::Unfence]);
    assert!(m.backends[b(1)].fence.is_none());

    // A session later: pg-c's fence is gone from etcd (lifted while this proxy was away), and
    // pg-a's key cannot be read any more (it keeps the fence it had, and is never lifted
    // from here).
    news(&mut m, &mut c, vec![shared("pg-c", fence.clone(), "p2", 20), shared("pg-a", fence.clone(), "p2", 21)]);
    assert!(m.backends[b(0)].fence.is_some() && m.backends[b(2)].fence.is_some());
    let mut snapshot = Snapshot { record: Some(record("pg-a")), record_revision: 10, ..Default::default() };
    snapshot.fences.insert("pg-a".into(), SharedFence::Unreadable);
    let acts = news(&mut m, &mut c, vec![Event::EtcdUp(true), Event::Loaded(snapshot)]);
    assert_eq!(kinds(&acts), [EventKind::Unfence], "pg-c's");
    assert!(m.backends[b(0)].fence.is_some() && m.backends[b(2)].fence.is_none());
    assert_eq!(m.coordination().unwrap().fence_revs.get("pg-a"), Some(&UNREADABLE));
}
