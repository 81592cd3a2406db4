//! Synchronous mode against real servers: pgfailover owns `synchronous_standby_names`, names
//! the standbys, promotes only a synchronous one, and with `on` empties the list when no
//! standby is left (writes go on) while `strict` keeps writes waiting until one returns.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgfailover::config::{Secret, SyncMode};
use pgfailover::localpg::{Cluster, ClusterOptions};
use pgfailover::monitor::history::EventKind;
use pgfailover::monitor::machine::SyncHealth;
use pgfailover::server::Proxy;

const LIMIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "sync-token";

/// A cluster of a primary and two standbys built with `synchronous_standby_names = 'ANY 1
/// (*)'` on every node (the harness's synchronous option): the trap of the issue, since the
/// last primary standing keeps waiting for a standby that is gone.
async fn three_nodes() -> Arc<Cluster> {
    Arc::new(cluster_with(ClusterOptions { standbys: 2, synchronous: true, ..Default::default() }).await)
}

async fn proxy(c: &Cluster, mode: SyncMode) -> Proxy {
    start_proxy(proxy_config(c, |cfg| {
        cfg.failover.synchronous = mode;
        cfg.admin_token = Some(Secret::new(TOKEN));
    }))
    .await
}

fn show(c: &Cluster, i: usize) -> String {
    c.psql(i, "show synchronous_standby_names").unwrap()
}

/// The routed primary lists `names` (quoted, in config order) and counts them synchronous.
async fn protected_by(p: &Proxy, primary: &str, names: &[&str]) {
    let list = format!("ANY 1 ({})", names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", "));
    let what = format!("{primary} routed and protected by {list}");
    wait_status(p, LIMIT, &what, |s| {
        s.current_primary.as_deref() == Some(primary)
            && s.synchronous.state == SyncHealth::Protected
            && s.synchronous.list.as_deref() == Some(list.as_str())
            && s.synchronous.standbys.len() == names.len()
    })
    .await;
}

fn events(p: &Proxy, kind: EventKind) -> Vec<pgfailover::monitor::history::Event> {
    p.monitor.history(200).into_iter().filter(|e| e.kind == kind).collect()
}

fn metric(p: &Proxy, name: &str) -> Option<f64> {
    p.metrics.render().lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

/// The issue's scenario with `synchronous = "on"`: the primary is killed, then the new one.
/// Each time only a synchronous standby is promoted and the other standby, re-pointed and
/// named, becomes synchronous for the new primary. After the second failover no standby is
/// left: the list is emptied (logged, recorded, counted) and writes go on. No acknowledged
/// write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_failovers_lose_no_acknowledged_write_and_writes_go_on_after_the_second() {
    let c = three_nodes().await;
    let p = proxy(&c, SyncMode::On).await;
    // The harness's standbys stream as "walreceiver": pgfailover names them, then lists them.
    protected_by(&p, "pg-a", &["pg-b", "pg-c"]).await;
    assert_eq!(show(&c, 0), r#"ANY 1 ("pg-b", "pg-c")"#);
    for i in [1, 2] {
        assert_eq!(show(&c, i), "", "a standby's own list is emptied");
        let name = c.psql(0, &format!("select application_name from pg_stat_replication where application_name = 'pg-{}'", (b'a' + i as u8) as char)).unwrap();
        assert!(!name.is_empty(), "streams under its backend name");
    }
    let whatif = get(p.admin_addr, "/failover/candidates").await.json();
    assert!(whatif["maxLoss"]["acknowledgedWritesSafe"] == true, "{whatif:#}");
    assert_eq!(whatif["synchronousStandbys"], serde_json::json!(["pg-b", "pg-c"]));

    let pw = c.options.password.clone();
    let ledger = Ledger::start(p.client_addr, &pw).await;
    ledger.advance(100, LIMIT, "writes flowing").await;

    let Promoted { first, first_i, other, other_i } = kill_primary_until_promoted(&c, &p, LIMIT).await;
    let ev = events(&p, EventKind::Failover).pop().unwrap();
    assert!(ev.reason.contains(&format!("{first} was synchronous on pg-a")) && ev.reason.contains("no write pg-a acknowledged is lost"), "{}", ev.reason);
    protected_by(&p, &first, &[other]).await;
    ledger.advance(100, LIMIT, "synchronous writes acknowledged on the first new primary").await;

    let c3 = c.clone();
    blocking(move || c3.kill(first_i).unwrap()).await;
    let s = wait_status(&p, LIMIT, "the other standby promoted", |s| s.current_primary.as_deref() == Some(other)).await;
    assert_eq!(s.failover_count, 2);
    // Nobody is left to confirm a commit: the list is emptied so writes go on.
    ledger.advance(100, LIMIT, "writes go on after the second failover").await;
    let s = wait_status(&p, LIMIT, "unprotected", |s| s.synchronous.state == SyncHealth::Unprotected).await;
    assert!(s.synchronous.reason.as_deref().unwrap().contains("emptied"), "{:?}", s.synchronous.reason);
    assert_eq!(show(&c, other_i), "");
    assert_eq!(metric(&p, "pgfailover_synchronous_unprotected"), Some(1.0));
    assert!(metric(&p, "pgfailover_synchronous_emptied_total").unwrap() >= 1.0);
    let lost = events(&p, EventKind::SynchronousUnprotected);
    assert!(lost.iter().any(|e| e.from.as_deref() == Some(other)), "{lost:?}");

    assert_none_lost(ledger, &c, other_i, other).await;
}

/// The same with `strict`: after the second failover writes wait (the server's own
/// `SyncRep` wait; status, metric and history say why) instead of running unprotected, and
/// they resume once a standby returns: the first failed server, rebuilt as a standby,
/// streams, is named and listed. No acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_writes_wait_with_no_standby_and_resume_when_one_returns() {
    let c = three_nodes().await;
    let p = proxy(&c, SyncMode::Strict).await;
    protected_by(&p, "pg-a", &["pg-b", "pg-c"]).await;
    let pw = c.options.password.clone();
    let ledger = Ledger::start(p.client_addr, &pw).await;
    ledger.advance(100, LIMIT, "writes flowing").await;

    let Promoted { first, first_i, other, other_i } = kill_primary_until_promoted(&c, &p, LIMIT).await;
    protected_by(&p, &first, &[other]).await;
    ledger.advance(100, LIMIT, "writes on the first new primary").await;

    let c3 = c.clone();
    blocking(move || c3.kill(first_i).unwrap()).await;
    wait_status(&p, LIMIT, "the other standby promoted", |s| s.current_primary.as_deref() == Some(other)).await;
    let s = wait_status(&p, LIMIT, "blocked", |s| s.synchronous.state == SyncHealth::Blocked).await;
    let why = s.synchronous.reason.clone().unwrap();
    assert!(why.contains("wait") && why.contains("strict"), "{why}");
    // It started as a primary with a list naming the servers that could come back.
    assert_eq!(show(&c, other_i), format!("ANY 1 (\"pg-a\", \"{first}\")"));

    // A write now waits for a standby, by the server's own account.
    let client = connect(p.client_addr, &pw).await;
    let waiting = tokio::spawn(async move { client.execute("insert into ledger values (-1)", &[]).await });
    eventually(LIMIT, "a commit waiting for a synchronous standby", || async {
        let n: u32 = c.psql(other_i, "select count(*) from pg_stat_activity where wait_event = 'SyncRep'").ok()?.parse().ok()?;
        (n > 0).then_some(())
    })
    .await;
    assert!(!waiting.is_finished(), "the write waits");
    assert_eq!(metric(&p, "pgfailover_synchronous_blocked"), Some(1.0));
    assert!(events(&p, EventKind::SynchronousBlocked).iter().any(|e| e.from.as_deref() == Some(other)));
    let before = ledger.count();

    // The first failed server comes back, rebuilt as a standby of the new primary.
    let c4 = c.clone();
    blocking(move || c4.rebuild_as_standby(first_i, other_i).unwrap()).await;
    tokio::time::timeout(LIMIT, waiting).await.expect("the waiting write completes").unwrap().expect("and commits");
    protected_by(&p, other, &[first.as_str()]).await;
    ledger.advance(100, LIMIT, "writes resume").await;
    assert!(ledger.count() > before);
    assert!(events(&p, EventKind::SynchronousProtected).iter().any(|e| e.from.as_deref() == Some(other)));
    assert_eq!(metric(&p, "pgfailover_synchronous_blocked"), Some(0.0));

    assert_none_lost(ledger, &c, other_i, other).await;
    assert_eq!(c.psql(other_i, "select count(*) from ledger where id = -1").unwrap(), "1");
}

/// A reload changes the policy keys live (no takeover): a priority reorders the candidates,
/// `nofailover` makes a trigger naming the standby answer 409 with the reason, turning
/// `synchronous` on sets the lists, and turning it off gives every server its own setting
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_policy_keys_live() {
    let c = three_nodes().await;
    let mut cfg = proxy_config(&c, |cfg| cfg.admin_token = Some(Secret::new(TOKEN)));
    let p = start_proxy(cfg.clone()).await;
    wait_status(&p, LIMIT, "healthy", |s| backend(s, "pg-b").promotion_eligible && backend(s, "pg-c").promotion_eligible).await;
    assert_eq!(show(&c, 0), "ANY 1 (*)", "off: pgfailover leaves the list alone");

    cfg.standbys[1].policy.priority = 5;
    let r = p.reload(cfg.clone(), None).await.unwrap();
    assert!(!r.handover && r.need_restart.is_empty(), "{r:?}");
    eventually(LIMIT, "pg-c ranked first (equal WAL, higher priority)", || async {
        let v = get(p.admin_addr, "/failover/candidates").await.json();
        (v["wouldPromote"] == "pg-c").then_some(())
    })
    .await;

    cfg.standbys[0].policy.nofailover = true;
    p.reload(cfg.clone(), None).await.unwrap();
    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), "{\"target\": \"pg-b\"}").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("nofailover"), "{}", r.body);
    let v = get(p.admin_addr, "/failover/candidates").await.json();
    let b = v["candidates"].as_array().unwrap().iter().find(|c| c["name"] == "pg-b").unwrap().clone();
    assert!(b["nofailover"] == true && b["eligible"] == false && b["reasons"][0]["code"] == "no_failover", "{b:#}");

    cfg.standbys[0].policy.nofailover = false;
    cfg.failover.synchronous = SyncMode::On;
    p.reload(cfg.clone(), None).await.unwrap();
    protected_by(&p, "pg-a", &["pg-b", "pg-c"]).await;
    assert_eq!(show(&c, 0), r#"ANY 1 ("pg-b", "pg-c")"#);
    eventually(LIMIT, "the standbys' lists emptied", || async { (show(&c, 1).is_empty() && show(&c, 2).is_empty()).then_some(()) }).await;

    cfg.failover.synchronous = SyncMode::Off;
    p.reload(cfg, None).await.unwrap();
    eventually(LIMIT, "every list back to the server's own", || async { (0..3).all(|i| show(&c, i) == "ANY 1 (*)").then_some(()) }).await;
    let s = p.monitor.status();
    assert_eq!(s.synchronous.state, SyncHealth::Off);
}

/// The README's least-privilege role (nothing more) manages the lists on the primary and
/// the standbys, and names the standbys in their `primary_conninfo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_privilege_role_manages_the_lists_and_names_the_standbys() {
    let c = three_nodes().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("CREATE ROLE pgf_monitor LOGIN REPLICATION").expect("the recipe is in the README");
    let recipe = &readme[start..start + readme[start..].find("```").unwrap()];
    assert!(recipe.contains("synchronous_standby_names"), "the recipe grants the synchronous list");
    c.psql(0, &recipe.replace("'...'", "'monitor-pw'")).unwrap();
    eventually(LIMIT, "role replicated", || async { (c.psql(2, "select count(*) from pg_roles where rolname = 'pgf_monitor'").ok()? == "1").then_some(()) })
        .await;
    let p = start_proxy(proxy_config(&c, |cfg| {
        cfg.failover.synchronous = SyncMode::On;
        for b in std::iter::once(&mut cfg.primary).chain(cfg.standbys.iter_mut()) {
            b.user = String::from("pgf_monitor");
            b.password = Some(Secret::new("monitor-pw"));
        }
    }))
    .await;
    protected_by(&p, "pg-a", &["pg-b", "pg-c"]).await;
    assert_eq!(show(&c, 1), "");
    let conninfo = c.psql(1, "show primary_conninfo").unwrap();
    assert!(conninfo.contains("application_name='pg-b'"), "{conninfo}");
}

/// A switchover with `synchronous = "on"`: the candidate gets, before its promotion, a list
/// naming the standby already cascading from it, so the new primary's writes are protected
/// from its first commit; nothing acknowledged is lost. The old primary, rebuilt as a
/// standby, has the list a base backup copied into it cleared, is named, and becomes
/// synchronous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_gives_the_new_primary_its_list_and_the_rebuilt_old_one_is_cleared() {
    let c = three_nodes().await;
    let p = proxy(&c, SyncMode::On).await;
    protected_by(&p, "pg-a", &["pg-b", "pg-c"]).await;
    let pw = c.options.password.clone();
    let ledger = Ledger::start(p.client_addr, &pw).await;
    ledger.advance(100, LIMIT, "writes flowing").await;

    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), "{\"target\": \"pg-b\"}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["event"]["walDistanceBytes"], 0);
    // Set before pg_promote: no window in which pg-b writes without a synchronous standby.
    assert_eq!(show(&c, 1), r#"ANY 1 ("pg-c")"#);
    assert!(events(&p, EventKind::SynchronousUnprotected).iter().all(|e| e.from.as_deref() != Some("pg-b")), "never unprotected");
    protected_by(&p, "pg-b", &["pg-c"]).await;
    ledger.advance(100, LIMIT, "writes on the new primary").await;

    let c2 = c.clone();
    blocking(move || c2.rebuild_as_standby(0, 1).unwrap()).await;
    protected_by(&p, "pg-b", &["pg-a", "pg-c"]).await;
    assert_eq!(show(&c, 0), "", "the list the base backup copied from pg-b is cleared");
    let s = p.monitor.status();
    assert!(!backend(&s, "pg-a").fenced, "unfenced once it reports in recovery");
    ledger.advance(100, LIMIT, "writes go on").await;
    let acked = ledger.finish().await;
    assert!(missing_on(&c, 1, &acked).is_empty(), "acknowledged but lost");
}
