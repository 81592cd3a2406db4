//! Per-backend policy: `priority`, `nofailover`, `zone` with `failover.zone_policy`; every
//! reason against a standby; a reload of them.

use super::*;
use crate::config::{PromotionPolicy, ZonePolicy};

/// Sets backend `i`'s policy (as a reload of the configuration would).
fn policy(m: &mut Machine, c: &mut Clock, i: usize, p: PromotionPolicy) -> Vec<Action> {
    let mut s = m.settings.clone();
    s.policies[i] = p;
    m.reload(s, false, c.tick())
}

fn zone(z: &str) -> PromotionPolicy {
    PromotionPolicy { zone: Some(z.into()), ..Default::default() }
}

fn zone_policy(m: &mut Machine, c: &mut Clock, z: ZonePolicy) {
    let mut s = m.settings.clone();
    s.zone_policy = z;
    m.reload(s, false, c.tick());
}

fn trigger(m: &mut Machine, c: &mut Clock, target: Option<&str>, force: bool) -> Result<(Started, Vec<Action>), Refusal> {
    m.trigger(&TriggerRequest { target: target.map(str::to_string), force, who: "tester".into() }, c.tick())
}

#[test]
fn priority_decides_between_standbys_with_the_same_wal_and_never_over_more_wal() {
    let (mut m, mut c) = running(4, PromoteMode::Auto);
    for (i, p) in [(1, 1), (2, 5), (3, 3)] {
        policy(&mut m, &mut c, i, PromotionPolicy { priority: p, ..Default::default() });
    }
    let same: Vec<(usize, Observation)> = (1..4).map(|i| (i, standby(4950, 1))).collect();
    assert_eq!(promotes(&lose_primary(&mut m, &mut c, &same)), [2], "the highest priority among equals");

    let (mut m, mut c) = running(4, PromoteMode::Auto);
    for (i, p) in [(1, 1), (2, 5), (3, 3)] {
        policy(&mut m, &mut c, i, PromotionPolicy { priority: p, ..Default::default() });
    }
    assert_eq!(m.candidates().choice.ranked, [b(1), b(2), b(3)], "running: pg-b has the most WAL (4899 > 4898 > 4897)");
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4960, 1)), (2, standby(4950, 1)), (3, standby(4950, 1))]);
    assert_eq!(promotes(&acts), [1], "more WAL wins over priority: promoting pg-c would lose more");
}

#[test]
fn a_nofailover_standby_is_never_promoted_even_with_the_most_wal() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    policy(&mut m, &mut c, 2, PromotionPolicy { nofailover: true, ..Default::default() });
    see(&mut m, &mut c, 2, standby(4999, 1));
    assert!(m.not_eligible(b(2)).unwrap().contains("nofailover"), "{:?}", m.not_eligible(b(2)));
    assert_eq!(m.state, State::Healthy, "pg-b can still take over");

    // A trigger naming it is refused with the reason; one without a name passes it over.
    let err = trigger(&mut m, &mut c, Some("pg-c"), false).unwrap_err();
    assert!(matches!(&err, Refusal::Conflict(why) if why.contains("pg-c cannot be promoted") && why.contains("nofailover")), "{err:?}");
    assert!(matches!(trigger(&mut m, &mut c, Some("pg-c"), true), Err(Refusal::Conflict(_))), "force does not override nofailover");

    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4900, 1)), (2, standby(4999, 1))]);
    assert_eq!(promotes(&acts), [1], "pg-b, although pg-c received more");

    // Alone, it is not promoted at all.
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    policy(&mut m, &mut c, 1, PromotionPolicy { nofailover: true, ..Default::default() });
    assert_eq!(m.state, State::Degraded, "no standby can take over");
    assert!(promotes(&lose_primary(&mut m, &mut c, &[(1, standby(4999, 1))])).is_empty());
    assert!(m.route_reason.contains("nofailover"), "{}", m.route_reason);
}

#[test]
fn switchover_without_a_name_skips_nofailover_standbys() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    policy(&mut m, &mut c, 1, PromotionPolicy { nofailover: true, ..Default::default() });
    let (started, _) = trigger(&mut m, &mut c, None, false).unwrap();
    assert_eq!((started.to.as_str(), started.switchover), ("pg-c", true));
}

#[test]
fn prefer_same_uses_another_zone_only_as_a_last_resort() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    policy(&mut m, &mut c, 0, zone("east"));
    policy(&mut m, &mut c, 1, zone("west"));
    policy(&mut m, &mut c, 2, zone("east"));
    assert_eq!(m.candidates().choice.ranked, [b(2), b(1)], "the same zone first, though pg-b has more WAL");
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4990, 1)), (2, standby(4950, 1))]);
    assert_eq!(promotes(&acts), [2]);

    // pg-c is down too: pg-b, of the other zone, is the last resort.
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    for (i, z) in [(0, "east"), (1, "west"), (2, "east")] {
        policy(&mut m, &mut c, i, zone(z));
    }
    fail(&mut m, &mut c, 2, 3);
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4990, 1))]);
    assert_eq!(promotes(&acts), [1]);
}

#[test]
fn same_only_refuses_another_zone_and_any_ignores_zones() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    zone_policy(&mut m, &mut c, ZonePolicy::SameOnly);
    for (i, z) in [(0, "east"), (1, "west"), (2, "east")] {
        policy(&mut m, &mut c, i, zone(z));
    }
    let why = m.not_eligible(b(1)).unwrap();
    assert!(why.contains("in zone west") && why.contains("same_only"), "{why}");
    fail(&mut m, &mut c, 2, 3);
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4990, 1))]);
    assert!(promotes(&acts).is_empty(), "never across zones");
    assert!(m.route_reason.contains("same_only"), "{}", m.route_reason);
    // An operator naming it overrides the zone (a planned move to another region).
    let (started, acts) = trigger(&mut m, &mut c, Some("pg-b"), true).unwrap();
    assert_eq!((started.to.as_str(), promotes(&acts)), ("pg-b", vec![1]));

    let (mut m, mut c) = running(3, PromoteMode::Auto);
    zone_policy(&mut m, &mut c, ZonePolicy::Any);
    for (i, z) in [(0, "east"), (1, "west"), (2, "east")] {
        policy(&mut m, &mut c, i, zone(z));
    }
    let acts = lose_primary(&mut m, &mut c, &[(1, standby(4990, 1)), (2, standby(4950, 1))]);
    assert_eq!(promotes(&acts), [1], "zones play no part: the most WAL");
}

#[test]
fn a_primary_without_a_zone_makes_every_standby_the_same_zone() {
    let (mut m, mut c) = running(2, PromoteMode::Auto);
    zone_policy(&mut m, &mut c, ZonePolicy::SameOnly);
    policy(&mut m, &mut c, 1, zone("west"));
    assert!(m.eligible(b(1)));
}

#[test]
fn every_reason_is_listed_not_only_the_first() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    zone_policy(&mut m, &mut c, ZonePolicy::SameOnly);
    policy(&mut m, &mut c, 0, zone("east"));
    policy(&mut m, &mut c, 1, zone("east"));
    policy(&mut m, &mut c, 2, PromotionPolicy { nofailover: true, zone: Some("west".into()), priority: 1 });
    see(&mut m, &mut c, 2, stranded(3000, 1));
    let kinds: Vec<ReasonKind> = m.reasons(b(2), Purpose::Failover).iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [ReasonKind::NotStreaming, ReasonKind::Lagging, ReasonKind::NoFailover, ReasonKind::Zone]);
    fail(&mut m, &mut c, 2, 3);
    let kinds: Vec<ReasonKind> = m.reasons(b(2), Purpose::Failover).iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [ReasonKind::Unhealthy, ReasonKind::NoFailover, ReasonKind::Zone], "stale replication facts are left out");
    assert!(m.reasons(b(1), Purpose::Failover).is_empty());

    let report = m.candidates();
    assert_eq!((report.from, report.choice.to), (Some(b(0)), Some(b(1))));
    assert_eq!(report.standbys.iter().map(|(i, r)| (i.index(), r.len())).collect::<Vec<_>>(), [(1, 0), (2, 3)]);
}

#[test]
fn a_reload_of_the_policy_applies_from_the_next_decision() {
    let (mut m, mut c) = running(3, PromoteMode::Auto);
    assert_eq!(m.candidates().choice.to, Some(b(1)));
    policy(&mut m, &mut c, 1, PromotionPolicy { nofailover: true, ..Default::default() });
    assert_eq!(m.candidates().choice.to, Some(b(2)));
    policy(&mut m, &mut c, 1, PromotionPolicy::default());
    see(&mut m, &mut c, 1, standby(4898, 1));
    policy(&mut m, &mut c, 2, PromotionPolicy { priority: 9, ..Default::default() });
    assert_eq!(m.candidates().choice.ranked, [b(2), b(1)], "equal WAL: the priority reloaded decides");
}
