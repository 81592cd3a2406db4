//! Transaction-aware sessions end to end, against a real primary and standby: a switchover
//! under load that no transaction feels, the pause and resume endpoints, a transaction that
//! outlives the drain, and maintenance mode riding out a primary restart.

mod common;

use std::time::Duration;

use common::workload::{Mix, Workload};
use common::*;
use pgfailover::monitor::history::EventKind;
use pgfailover::monitor::machine::State;

const LIMIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "drain-test-token";

fn config(c: &pgfailover::localpg::Cluster, drain: Duration) -> pgfailover::config::Config {
    proxy_config(c, |cfg| {
        cfg.admin_token = Some(pgfailover::config::Secret::new(TOKEN.to_string()));
        cfg.failover.drain_timeout = drain;
        cfg.failover.hold_timeout = Duration::from_secs(10);
    })
}

async fn routed(p: &pgfailover::server::Proxy, name: &str) {
    wait_status(p, LIMIT, &format!("{name} routed, a standby eligible"), |s| s.current_primary.as_deref() == Some(name) && s.state == State::Healthy).await;
}

fn events(p: &pgfailover::server::Proxy, kind: EventKind) -> usize {
    p.monitor.history(1000).iter().filter(|e| e.kind == kind).count()
}

/// The issue's workload (4 autocommit writers, 4 workers in short transactions, 8 mostly
/// idle sessions, 2 readers) through a switchover: no transaction aborted after its first
/// statement, no COMMIT in doubt, no write to a read-only server, nothing lost, and every
/// error a 57P01 on a statement that never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_under_load_aborts_no_transaction_and_leaves_no_commit_in_doubt() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let p = start_proxy(config(&c, Duration::from_secs(5))).await;
    routed(&p, "pg-a").await;
    let w = Workload::start(p.client_addr, &pw, Mix { writers: 4, workers: 4, idle: 8, readers: 2 }, 1).await;
    eventually(LIMIT, "the workload runs", || async { (w.done() > 200).then_some(()) }).await;
    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), r#"{"target": "pg-b"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["switchover"], true);
    let before = w.done();
    eventually(LIMIT, "the workload goes on on pg-b", || async { (w.done() > before + 200).then_some(()) }).await;
    let report = w.finish().await;
    eprintln!("{} units done, {} failures: {:#?}", report.done, report.failures.len(), report.failures);
    assert!(report.aborted_mid_way().is_empty(), "transactions aborted after their first statement: {:#?}", report.aborted_mid_way());
    assert!(report.in_doubt().is_empty(), "COMMITs in doubt: {:#?}", report.in_doubt());
    assert!(report.read_only().is_empty(), "25006: {:#?}", report.read_only());
    assert!(report.not_clean().is_empty(), "errors other than a 57P01 on a statement that never ran: {:#?}", report.not_clean());
    // The quiet sessions on pg-a learned it from a 57P01 that says what happened.
    let with_code: Vec<_> = report.failures.iter().filter(|f| f.code.is_some()).collect();
    assert!(!with_code.is_empty() && with_code.iter().all(|f| f.text.contains("switched over from pg-a to pg-b")), "{:#?}", report.failures);
    let missing = missing_work(&c, 1, &report.acked);
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    let ran = present_work(&c, 1, &report.failed_ids());
    assert!(ran.is_empty(), "a failed statement ran after all: {ran:?}");
    assert_eq!(c.psql(1, "select count(*) from work where step = 1").unwrap(), "0", "no torn transaction");
    assert_eq!(p.monitor.status().failover_count, 1);
    assert!(p.metrics.render().contains("pgfailover_sessions_closed_total{reason=\"ended_quiet\"}"));
}

/// Of `ids`, those present on node `i`.
fn present_work(c: &pgfailover::localpg::Cluster, i: usize, ids: &[i64]) -> Vec<i64> {
    let all: Vec<i64> = ids.to_vec();
    let missing = missing_work(c, i, &all);
    all.into_iter().filter(|id| !missing.contains(id)).collect()
}

/// Acknowledged work ids missing on node `i`.
fn missing_work(c: &pgfailover::localpg::Cluster, i: usize, acked: &[i64]) -> Vec<i64> {
    let text = c.psql(i, "select id from work").expect("read the work table");
    let have: std::collections::HashSet<i64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    acked.iter().copied().filter(|id| !have.contains(id)).collect()
}

/// `POST /failover/pause` answers with the counts once every session is quiet (or its
/// timeout ran out with a transaction open), holds the next statement, and
/// `/failover/resume` lets it run on the same server session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_answers_with_the_counts_and_resume_lets_the_held_go_on() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let p = start_proxy(config(&c, Duration::from_secs(5))).await;
    routed(&p, "pg-a").await;
    let a = connect(p.client_addr, &pw).await;
    let b = connect(p.client_addr, &pw).await;
    a.batch_execute("create table t(id int); begin; insert into t values (1)").await.unwrap();
    // A transaction is open: the pause's timeout runs out and it says so.
    let r = post(p.admin_addr, "/failover/pause", Some(TOKEN), r#"{"timeout": "300ms"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!((v["paused"].as_bool(), v["quiet"].as_bool(), v["inTransaction"].as_u64()), (Some(true), Some(false), Some(1)), "{v}");
    let s = get(p.admin_addr, "/failover/status").await.json();
    assert_eq!(s["paused"], true);
    assert!(get(p.admin_addr, "/metrics").await.body.contains("pgfailover_paused 1"));
    // The transaction runs on to its COMMIT; then every session is quiet.
    a.batch_execute("insert into t values (2); commit").await.unwrap();
    let v = post(p.admin_addr, "/failover/pause", Some(TOKEN), r#"{"timeout": "10s"}"#).await.json();
    assert_eq!((v["quiet"].as_bool(), v["inTransaction"].as_u64(), v["sessions"].as_u64()), (Some(true), Some(0), Some(2)), "{v}");
    // A quiet session's next statement is held, and a new session too.
    let held = tokio::spawn(async move { b.execute("insert into t values (3)", &[]).await.map(|_| b) });
    let pw2 = pw.clone();
    let addr = p.client_addr;
    let fresh = tokio::spawn(async move { try_connect(addr, &pw2).await });
    eventually(LIMIT, "two held", || async { (p.metrics.render().contains("pgfailover_held_sessions 2")).then_some(()) }).await;
    assert_eq!(c.psql(0, "select count(*) from t").unwrap(), "2", "the held insert has not run");
    let r = post(p.admin_addr, "/failover/resume", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["released"], 2);
    let b = held.await.unwrap().expect("the held insert ran after the resume");
    assert!(fresh.await.unwrap().is_ok(), "the held new session opened");
    assert_eq!(c.psql(0, "select count(*) from t").unwrap(), "3");
    assert_eq!(server_port(&b).await, c.nodes[0].port as i32, "resumed on the same server");
    assert_eq!(get(p.admin_addr, "/failover/status").await.json()["paused"], false);
    assert_eq!((events(&p, EventKind::Pause), events(&p, EventKind::Resume)), (2, 1));
    // Bad bodies are refused without changing anything.
    for bad in [r#"{"timeout": "soon"}"#, r#"{"wait": "1s"}"#, "[1]", r#"{"timeout": "2h"}"#] {
        let r = post(p.admin_addr, "/failover/pause", Some(TOKEN), bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    assert_eq!(post(p.admin_addr, "/failover/pause", None, "").await.status, 401);
    assert_eq!(get(p.admin_addr, "/failover/status").await.json()["paused"], false);
}

/// A transaction that outlives `failover.drain_timeout` is cut at the deadline; nothing of
/// it is written, the switchover completes, and the writer's other work is all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_longer_than_the_drain_timeout_is_cut_and_nothing_of_it_is_written() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let p = start_proxy(config(&c, Duration::from_millis(800))).await;
    routed(&p, "pg-a").await;
    let (long, long_conn) = {
        let (client, conn) = tokio_postgres::connect(&conn_str(p.client_addr, &pw), tokio_postgres::NoTls).await.unwrap();
        (client, tokio::spawn(conn))
    };
    long.batch_execute("create table t(id int)").await.unwrap();
    long.batch_execute("begin; insert into t values (42)").await.unwrap();
    let started = std::time::Instant::now();
    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), r#"{"target": "pg-b"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(started.elapsed() >= Duration::from_millis(800), "the drain waited for the transaction");
    // The open transaction was cut: its session is gone, and its insert is nowhere.
    let end = tokio::time::timeout(LIMIT, long_conn).await.expect("the cut session ends").unwrap();
    if let Err(e) = end {
        let db = e.as_db_error().map(|d| (d.code().code().to_string(), d.detail().unwrap_or_default().to_string()));
        assert!(db.as_ref().is_none_or(|(code, detail)| code == "57P01" && detail.contains("in progress")), "{db:?}");
    }
    assert!(long.batch_execute("commit").await.is_err(), "the cut transaction cannot commit");
    assert_eq!(c.psql(1, "select count(*) from t").unwrap(), "0");
    let s = p.monitor.status();
    assert_eq!(s.current_primary.as_deref(), Some("pg-b"));
    assert!(p.metrics.render().contains("pgfailover_sessions_closed_total{reason=\"route_changed\"} 1"));
}

/// With maintenance mode on, a primary stopped (`pg_ctl stop -m fast`) for 5 s and started
/// again is waited for: no failover, new sessions held then refused with a reason naming the
/// maintenance, and sessions work again afterwards without a restart of the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_rides_out_a_primary_restart() {
    let mut c = cluster(1).await;
    let pw = c.options.password.clone();
    let mut cfg = config(&c, Duration::from_secs(5));
    cfg.failover.hold_timeout = Duration::from_secs(1);
    let p = start_proxy(cfg).await;
    routed(&p, "pg-a").await;
    let r = post(p.admin_addr, "/failover/maintenance", Some(TOKEN), r#"{"enabled": true, "reason": "minor upgrade", "duration": "30m"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = &r.json()["maintenance"];
    assert_eq!((m["enabled"].as_bool(), m["reason"].as_str()), (Some(true), Some("minor upgrade")), "{m}");
    assert!(m["by"].as_str().unwrap().starts_with("tester"), "{m}");
    assert!(get(p.admin_addr, "/metrics").await.body.contains("pgfailover_maintenance 1"));
    tokio::task::block_in_place(|| c.stop(0)).unwrap();
    // Down far past (threshold - 1) x interval: held, then refused, naming the maintenance.
    let status = wait_status(&p, LIMIT, "the primary marked down", |s| {
        s.current_primary.is_none() && s.route_reason.as_deref().is_some_and(|r| r.contains("maintenance"))
    })
    .await;
    assert!(status.route_reason.as_deref().unwrap().contains("minor upgrade"), "{:?}", status.route_reason);
    let refused = try_connect(p.client_addr, &pw).await.expect_err("no primary while it is down");
    let db = refused.as_db_error().expect("a proper 57P03");
    assert_eq!(db.code().code(), "57P03");
    assert!(db.message().contains("maintenance mode is on"), "{}", db.message());
    tokio::time::sleep(Duration::from_secs(5)).await; // the operator's restart takes 5 s: part of the scenario
    tokio::task::block_in_place(|| c.start_node(0)).unwrap();
    routed(&p, "pg-a").await;
    let client = connect(p.client_addr, &pw).await;
    assert_eq!(server_port(&client).await, c.nodes[0].port as i32);
    let s = p.monitor.status();
    assert_eq!(s.failover_count, 0, "no failover in maintenance");
    assert_eq!(c.psql(1, "select pg_is_in_recovery()").unwrap(), "t", "pg-b is still a standby");
    assert_eq!(events(&p, EventKind::MaintenanceOn), 1);
    // Off again: the next outage would fail over.
    let r = post(p.admin_addr, "/failover/maintenance", Some(TOKEN), r#"{"enabled": false}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["maintenance"]["enabled"], false);
    assert_eq!(events(&p, EventKind::MaintenanceOff), 1);
    for bad in [r#"{"reason": "x"}"#, r#"{"enabled": true, "duration": "0s"}"#, r#"{"enabled": false, "duration": "1h"}"#, ""] {
        assert_eq!(post(p.admin_addr, "/failover/maintenance", Some(TOKEN), bad).await.status, 400, "{bad}");
    }
}

/// A health-check role that is no superuser cannot end a superuser's session: the
/// switchover is undone (502) and says exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_privilege_is_named_as_such() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    c.psql(
        0,
        &format!(
            "create role pgf_monitor login replication password '{pw}' in role pg_monitor, pg_signal_backend; \
             grant execute on function pg_promote(boolean, integer) to pgf_monitor; \
             grant execute on function pg_reload_conf() to pgf_monitor; \
             grant alter system on parameter default_transaction_read_only, primary_conninfo to pgf_monitor"
        ),
    )
    .unwrap();
    let mut cfg = config(&c, Duration::from_secs(1));
    for b in std::iter::once(&mut cfg.primary).chain(cfg.standbys.iter_mut()) {
        b.user = "pgf_monitor".into();
    }
    cfg.failover.trigger_wait = Duration::from_secs(2);
    let p = start_proxy(cfg).await;
    routed(&p, "pg-a").await;
    // A superuser's session straight to the primary, which the checker may not end.
    let direct = connect(node_addr(&c, 0), &pw).await;
    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), r#"{"target": "pg-b"}"#).await;
    assert_eq!(r.status, 502, "{}", r.body);
    let why = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("1 superuser session(s) could not be ended") && why.contains("not a superuser"), "{why}");
    routed(&p, "pg-a").await;
    eventually(LIMIT, "pg-a writable again", || async { (c.psql(0, "show default_transaction_read_only").ok()? == "off").then_some(()) }).await;
    drop(direct);
}

/// Clients that do not go through a paused proxy and keep reconnecting to the old primary
/// are named as such when the switchover cannot end their sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_keep_reappearing_are_named_as_such() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let mut cfg = config(&c, Duration::from_secs(1));
    cfg.failover.trigger_wait = Duration::from_secs(2);
    let p = start_proxy(cfg).await;
    routed(&p, "pg-a").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..8 {
        let (stop, pw, addr) = (stop.clone(), pw.clone(), node_addr(&c, 0));
        loops.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(client) = try_connect(addr, &pw).await {
                    let _ = client.batch_execute("select pg_sleep(0.5)").await;
                }
            }
        }));
    }
    // Every loop has a session open before the switchover begins.
    eventually(LIMIT, "the direct sessions", || async {
        (c.psql(0, "select count(*) from pg_stat_activity where query = 'select pg_sleep(0.5)'").ok()?.parse::<u32>().ok()? >= 6).then_some(())
    })
    .await;
    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), r#"{"target": "pg-b"}"#).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    assert_eq!(r.status, 502, "{}", r.body);
    let why = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("kept reappearing faster than they could be ended"), "{why}");
    assert!(!why.contains("superuser"), "the checker is a superuser: {why}");
    routed(&p, "pg-a").await;
}
