//! A planned switchover with three coordinated proxies under load: every proxy drains and
//! stops routing to the old primary before its writes are stopped, so no client anywhere
//! gets a read-only error, no transaction is aborted half-way and nothing is lost; and a
//! proxy that cannot confirm makes the leader undo the switchover before any write stops.

mod common;

use std::time::Duration;

use common::binary::Cluster;
use common::etcd;
use common::proxies::*;
use common::workload::{Mix, Report, Workload};
use common::*;

/// Acknowledged work ids missing on node `i`, and failed ones present there.
fn ledger_on(c: &Cluster, i: usize, r: &Report) -> (Vec<i64>, Vec<i64>) {
    let text = c.psql(i, "select id from work").expect("read the work table");
    let have: std::collections::HashSet<i64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let missing = r.acked.iter().copied().filter(|id| !have.contains(id)).collect();
    let ran = r.failed_ids().into_iter().filter(|id| have.contains(id)).collect();
    (missing, ran)
}

/// Each proxy's clients (2 autocommit writers, 2 workers in short transactions, 2 mostly
/// idle sessions) through a switchover asked of `via`, to `target`; every proxy must route
/// to it within 5 s of the trigger. Returns what each proxy's clients saw.
async fn switch_under_load(c: &Cluster, ps: &[&ProxyProc], via: &ProxyProc, target: &str, round: i64) -> Vec<Report> {
    let pw = c.options.password.clone();
    let mut ws = Vec::new();
    for (k, p) in ps.iter().enumerate() {
        let base = round * 10_000_000 + (k as i64 + 1) * 1_000_000;
        ws.push(Workload::start(p.listen, &pw, Mix { writers: 2, workers: 2, idle: 2, readers: 0 }, base).await);
    }
    for w in &ws {
        eventually(LIMIT, "every proxy's clients work", || async { (w.done() > 50).then_some(()) }).await;
    }
    let asked = std::time::Instant::now();
    let r = post(via.admin, "/failover/trigger", Some(TOKEN), &format!(r#"{{"target": "{target}"}}"#)).await;
    assert_eq!(r.status, 200, "the switchover through {}: {}", via.name, r.body);
    assert_eq!(r.json()["switchover"], true);
    // Every proxy routes to the new primary within 5 s of the trigger (the answer included).
    let left = Duration::from_secs(5).checked_sub(asked.elapsed()).unwrap_or_else(|| panic!("the switchover answered after {:?}", asked.elapsed()));
    eventually(left, &format!("all three route to {target} within 5 s of the trigger"), || async {
        for p in ps {
            if routed(&p.status().await) != Some(target) {
                return None;
            }
        }
        Some(())
    })
    .await;
    for w in &ws {
        let before = w.done();
        eventually(LIMIT, "the clients go on on the new primary", || async { (w.done() > before + 50).then_some(()) }).await;
    }
    let mut reports = Vec::new();
    for w in ws {
        reports.push(w.finish().await);
    }
    reports
}

fn assert_clean(c: &Cluster, ps: &[&ProxyProc], reports: &[Report], on: usize) {
    for (p, r) in ps.iter().zip(reports) {
        eprintln!("{}: {} units, {} failures", p.name, r.done, r.failures.len());
        assert!(r.read_only().is_empty(), "{}: 25006 read-only errors: {:#?}", p.name, r.read_only());
        assert!(r.aborted_mid_way().is_empty(), "{}: transactions aborted half-way: {:#?}", p.name, r.aborted_mid_way());
        assert!(r.in_doubt().is_empty(), "{}: COMMITs in doubt: {:#?}", p.name, r.in_doubt());
        assert!(r.not_clean().is_empty(), "{}: errors other than a connection-class one on a statement that never ran: {:#?}", p.name, r.not_clean());
        let (missing, ran) = ledger_on(c, on, r);
        assert!(missing.is_empty(), "{}: acknowledged writes lost: {missing:?}", p.name);
        assert!(ran.is_empty(), "{}: failed statements that ran after all: {ran:?}", p.name);
    }
    assert_eq!(c.psql(on, "select count(*) from work where step = 1").unwrap(), "0", "no torn transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_through_a_follower_then_the_leader_drains_every_proxy_and_loses_nothing() {
    let c = cluster(2).await;
    let etcd = etcd::start(1).await;
    let o = Opts::new(&etcd);
    let (p1, p2, p3) = (ProxyProc::start(&c, "p1", &o, &[]).await, ProxyProc::start(&c, "p2", &o, &[]).await, ProxyProc::start(&c, "p3", &o, &[]).await);
    let ps = [&p1, &p2, &p3];
    let lead = agreed(&ps, "pg-a").await;
    let follower = *ps.iter().find(|p| p.name != lead).unwrap();
    let leader = *ps.iter().find(|p| p.name == lead).unwrap();

    let reports = switch_under_load(&c, &ps, follower, "pg-b", 1).await;
    assert_clean(&c, &ps, &reports, 1);
    assert_eq!(promotions(&c), 1, "exactly one promotion");
    for p in ps {
        let f = p.events("failover").await;
        assert_eq!(f.len(), 1, "{}: one failover: {f:#?}", p.name);
        assert_eq!(f[0]["to"], "pg-b", "{}", p.name);
    }
    // pg-c streams from pg-b (cascaded before the promotion): the next switchover, asked of
    // the leader itself, goes there.
    all(&ps, "pg-c eligible behind pg-b", |_, s| backend_status(s, "pg-c")["promotionEligible"] == true).await;
    let reports = switch_under_load(&c, &ps, leader, "pg-c", 2).await;
    assert_clean(&c, &ps, &reports, 2);
    assert_eq!(promotions(&c), 2, "one promotion per switchover");
    let mut kv = etcd::client(&etcd).await;
    assert!(kv.get("/pgfailover/main/drain", None).await.unwrap().kvs().is_empty(), "the drain record is gone");
}

/// A follower that does not answer (frozen) cannot confirm it stopped routing to the old
/// primary: the leader undoes the switchover with a 409 that says so, before any write was
/// stopped, and promotes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_cannot_confirm_makes_the_leader_undo_before_any_write_stops() {
    let c = cluster(1).await;
    let etcd = etcd::start(1).await;
    // A lease that outlives the wait: the frozen proxy stays a live member meanwhile.
    let o = Opts { lease_ttl: Duration::from_secs(30), drain_timeout: Duration::from_secs(1), ..Opts::new(&etcd) };
    let mut ps = [ProxyProc::start(&c, "p1", &o, &[]).await, ProxyProc::start(&c, "p2", &o, &[]).await, ProxyProc::start(&c, "p3", &o, &[]).await];
    let lead = agreed(&ps.iter().collect::<Vec<_>>(), "pg-a").await;
    let fi = ps.iter().position(|p| p.name != lead).unwrap();
    let frozen = ps[fi].name.clone();
    ps[fi].pause();
    let (leader_admin, leader_listen) = ps.iter().find(|p| p.name == lead).map(|p| (p.admin, p.listen)).unwrap();
    let r = post(leader_admin, "/failover/trigger", Some(TOKEN), r#"{"target": "pg-b"}"#).await;
    ps[fi].resume();
    assert_eq!(r.status, 409, "{}", r.body);
    let why = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains(&format!("{frozen} did not confirm")) && why.contains("before any write was stopped"), "{why}");
    assert_eq!(promotions(&c), 0);
    assert_eq!(c.psql(0, "show default_transaction_read_only").unwrap(), "off", "writes were never stopped");
    let pw = c.options.password.clone();
    let rest: Vec<&ProxyProc> = ps.iter().collect();
    all(&rest, "every proxy routes to pg-a again", |_, s| routed(s) == Some("pg-a")).await;
    connect(leader_listen, &pw).await.batch_execute("create table after_undo(id int); insert into after_undo values (1)").await.unwrap();
}
