//! Failovers that do no harm, shown by fault injection against real servers: a blip is not a
//! failover, a switchover loses no acknowledged write (even with a stalled WAL sender), a
//! slow promotion is waited for and never undone, two failovers in a row with two standbys
//! lose nothing, and a dead monitor fails closed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pgfailover::config::Secret;
use pgfailover::localpg::ClusterOptions;
use pgfailover::monitor::history::EventKind;
use pgfailover::monitor::machine::State;

const LIMIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "safe-failover-token";

async fn routed(p: &pgfailover::server::Proxy, name: &str) {
    wait_status(p, LIMIT, &format!("{name} routed, a standby eligible"), |s| s.current_primary.as_deref() == Some(name) && s.state == State::Healthy).await;
}

fn count(p: &pgfailover::server::Proxy, kind: EventKind) -> usize {
    p.monitor.history(1000).iter().filter(|e| e.kind == kind).count()
}

/// What happened to a session opened through the proxy during a fault (the texts are read
/// through `Debug`, in assertion messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Opened {
    /// It reached the server on this port.
    On(i32),
    /// The server ended it after accepting it (the restart's own shutdown or crash: 57P01,
    /// 57P02, or the connection closed): a session cut in flight, which no proxy can move.
    Cut(String),
    /// Anything else, a refusal by the proxy included.
    Failed(String),
}

/// Opens sessions through the proxy every 20 ms while `fault` runs.
async fn sessions_during<F: FnOnce() + Send + 'static>(p: &pgfailover::server::Proxy, pw: &str, fault: F) -> Vec<Opened> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, pw2, stop2) = (p.client_addr, pw.to_string(), stop.clone());
    let opener = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let what = |e: tokio_postgres::Error| match e.as_db_error() {
                Some(db) if matches!(db.code().code(), "57P01" | "57P02") => Opened::Cut(db.message().to_string()),
                Some(db) => Opened::Failed(format!("{}: {}", db.code().code(), db.message())),
                None if e.is_closed() || e.to_string().contains("closed") => Opened::Cut(e.to_string()),
                None => Opened::Failed(e.to_string()),
            };
            match try_connect(addr, &pw2).await {
                Ok(c) => match c.query_one("select inet_server_port()", &[]).await {
                    Ok(row) => seen.push(Opened::On(row.get(0))),
                    Err(e) => seen.push(what(e)),
                },
                Err(e) => seen.push(what(e)),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    });
    blocking(fault).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    opener.await.unwrap()
}

/// `pg_ctl restart -m fast`, a crash restart (a backend SIGKILLed: every session ends and
/// the server answers 57P03 while it recovers) and a 400 ms freeze of the primary: each cuts
/// the primary's sessions, but none is a failover, and clients opened meanwhile reach the
/// same primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_a_crash_restart_or_a_short_freeze_of_the_primary_is_not_a_failover() {
    let c = Arc::new(cluster(1).await);
    let p = start_proxy(proxy_config(&c, |_| {})).await;
    routed(&p, "pg-a").await;
    let pw = c.options.password.clone();
    let port_a = c.nodes[0].port as i32;
    type Fault = Box<dyn FnOnce() + Send>;
    let faults: Vec<(&str, Fault)> = vec![
        (
            "restart -m fast",
            Box::new({
                let c = c.clone();
                move || c.restart(0).unwrap()
            }),
        ),
        (
            "crash restart",
            Box::new({
                let c = c.clone();
                move || c.crash_restart(0).unwrap()
            }),
        ),
        (
            "400 ms freeze",
            Box::new({
                let c = c.clone();
                move || {
                    c.hang(0).unwrap();
                    std::thread::sleep(Duration::from_millis(400));
                    c.resume(0);
                }
            }),
        ),
    ];
    for (what, fault) in faults {
        let old = connect(p.client_addr, &pw).await;
        let before = p.monitor.status().health_check_failures;
        let seen = sessions_during(&p, &pw, fault).await;
        routed(&p, "pg-a").await;
        let s = p.monitor.status();
        eprintln!("{what}: {} sessions opened meanwhile, {} failed checks", seen.len(), s.health_check_failures - before);
        assert_eq!(s.failover_count, 0, "{what} is not a failover");
        assert_eq!(count(&p, EventKind::Fence), 0, "{what}: nothing fenced");
        assert_eq!(c.psql(1, "select pg_is_in_recovery()").unwrap(), "t", "{what}: pg-b is still a standby");
        for r in &seen {
            assert!(
                matches!(r, Opened::On(p) if *p == port_a) || matches!(r, Opened::Cut(_)),
                "{what}: every client opened meanwhile reaches pg-a (or was in flight when the server ended it): {seen:?}"
            );
        }
        assert!(seen.iter().any(|r| matches!(r, Opened::On(_))), "{what}: {seen:?}");
        if what != "400 ms freeze" {
            assert!(s.health_check_failures > before, "{what}: the checks saw the outage");
            eventually(LIMIT, "the old session was cut", || async { old.is_closed().then_some(()) }).await;
        }
        let after = connect(p.client_addr, &pw).await;
        after.batch_execute("create table if not exists after_blip(i int); insert into after_blip values (1)").await.unwrap();
    }
}

/// The switchover: the standby is behind (its WAL sender stalled for 1.5 s) while
/// writes flow. The switchover stops writes on the old primary, waits until the standby has
/// replayed everything, then promotes it: every acknowledged write is on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_with_a_stalled_wal_sender_loses_no_acknowledged_write() {
    let c = Arc::new(cluster(1).await);
    let p = start_proxy(proxy_config(&c, |cfg| {
        cfg.admin_token = Some(Secret::new(TOKEN));
        cfg.failover.trigger_wait = Duration::from_secs(10);
    }))
    .await;
    routed(&p, "pg-a").await;
    let pw = c.options.password.clone();
    let ledger = Ledger::start(p.client_addr, &pw).await;
    ledger.advance(100, LIMIT, "writes flowing").await;
    let sender = c.process(0, "walsender").expect("a WAL sender");
    c.pause_process(sender);
    ledger.advance(300, LIMIT, "writes acknowledged while the standby falls behind").await;
    let admin = p.admin_addr;
    let trigger = tokio::spawn(async move { post(admin, "/failover/trigger", Some(TOKEN), "").await });
    wait_status(&p, LIMIT, "writes stopped, catching up", |s| s.failover_in_progress.as_ref().is_some_and(|f| f.phase == "catching_up")).await;
    // The stall is the fault: it lasts 1.5 s whatever else happens.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.resume_process(sender);
    let r = trigger.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["to"], "pg-b");
    assert_eq!(r.json()["event"]["walDistanceBytes"], 0);
    ledger.advance(50, LIMIT, "writes acknowledged by the new primary").await;
    let acked = ledger.finish().await;
    let missing = missing_on(&c, 1, &acked);
    eprintln!("{} acknowledged writes, {} missing on the new primary", acked.len(), missing.len());
    assert!(missing.is_empty(), "acknowledged but lost: {} of {} ({:?}…)", missing.len(), acked.len(), &missing[..missing.len().min(10)]);
    let s = p.monitor.status();
    assert_eq!((s.current_primary.as_deref(), s.failover_count), (Some("pg-b"), 1));
    assert!(backend(&s, "pg-a").fenced, "the old primary stays fenced");
    assert_eq!(c.psql(0, "show default_transaction_read_only").unwrap(), "on", "and refuses writes by default");
}

/// The same stall for longer than the switchover may wait: the switchover is undone (409),
/// the old primary accepts writes again and keeps the route, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_that_cannot_catch_up_is_undone_and_loses_nothing() {
    let c = Arc::new(cluster(1).await);
    let p = start_proxy(proxy_config(&c, |cfg| {
        cfg.admin_token = Some(Secret::new(TOKEN));
        cfg.failover.trigger_wait = Duration::from_secs(1);
    }))
    .await;
    routed(&p, "pg-a").await;
    let pw = c.options.password.clone();
    let ledger = Ledger::start(p.client_addr, &pw).await;
    ledger.advance(100, LIMIT, "writes flowing").await;
    let sender = c.process(0, "walsender").expect("a WAL sender");
    c.pause_process(sender);
    ledger.advance(200, LIMIT, "writes acknowledged while the standby falls behind").await;
    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), "").await;
    c.resume_process(sender);
    assert_eq!(r.status, 409, "{}", r.body);
    let why = r.json()["error"].as_str().unwrap().to_string();
    assert!(why.contains("did not catch up") && why.contains("pg-a stays primary"), "{why}");
    routed(&p, "pg-a").await;
    ledger.advance(50, LIMIT, "writes acknowledged by pg-a again").await;
    let acked = ledger.finish().await;
    assert!(missing_on(&c, 0, &acked).is_empty());
    assert_eq!(c.psql(0, "show default_transaction_read_only").unwrap(), "off", "writable again");
    assert_eq!(c.psql(1, "select pg_is_in_recovery()").unwrap(), "t", "nothing was promoted");
    let s = p.monitor.status();
    assert_eq!((s.failover_count, backend(&s, "pg-a").fenced), (0, false));
    assert_eq!(count(&p, EventKind::SwitchoverAborted), 1);
}

/// A promotion that outlives `promote_timeout` (the standby's startup process frozen for
/// 2.5 s) is not "failed": the route stays empty, the old primary does not get it back, and
/// when the promotion finishes that is the one failover. No split brain, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_promotion_is_waited_for_not_undone() {
    let c = Arc::new(cluster(1).await);
    let p = start_proxy(proxy_config(&c, |cfg| {
        cfg.admin_token = Some(Secret::new(TOKEN));
        cfg.failover.promote_timeout = Duration::from_secs(1);
        cfg.failover.trigger_wait = Duration::from_secs(10);
    }))
    .await;
    routed(&p, "pg-a").await;
    let pw = c.options.password.clone();
    let ledger = Ledger::start(p.client_addr, &pw).await;
    ledger.advance(200, LIMIT, "writes flowing").await;
    let acked = ledger.finish().await;
    eventually(LIMIT, "pg-b replayed every write", || async { try_missing_on(&c, 1, &acked)?.is_empty().then_some(()) }).await;
    let startup = c.process(1, "startup").expect("the standby's startup process");
    c.pause_process(startup);
    let paused_at = Instant::now();
    let admin = p.admin_addr;
    let trigger = tokio::spawn(async move { post(admin, "/failover/trigger", Some(TOKEN), "{\"force\": true}").await });
    wait_status(&p, LIMIT, "promoting", |s| s.failover_in_progress.as_ref().is_some_and(|f| f.phase == "promoting")).await;
    // Past promote_timeout and then some: the route stays empty, never pg-a again.
    while paused_at.elapsed() < Duration::from_millis(2500) {
        let s = p.monitor.status();
        assert_eq!(s.current_primary, None, "the route went back while the promotion could still finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.resume_process(startup);
    let r = trigger.await.unwrap();
    assert!(r.status == 200 || r.status == 202, "{} {}", r.status, r.body);
    let s = wait_status(&p, LIMIT, "pg-b routed", |s| s.current_primary.as_deref() == Some("pg-b")).await;
    assert_eq!(s.failover_count, 1);
    assert_eq!((count(&p, EventKind::Failover), count(&p, EventKind::SplitBrain), count(&p, EventKind::FailoverFailed)), (1, 0, 0));
    assert!(missing_on(&c, 1, &acked).is_empty());
    let client = connect(p.client_addr, &pw).await;
    client.batch_execute("insert into ledger values (-1)").await.unwrap();
    assert_eq!(server_port(&client).await, c.nodes[1].port as i32);
}

/// A primary and two standbys with synchronous replication (`ANY 1 (*)`): the primary is
/// killed, the standby with the most WAL is promoted and the other re-pointed at it (it
/// streams again, on the new timeline); then the new primary is killed and the other is
/// promoted. Every write acknowledged along the way is on the last primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failovers_in_a_row_with_two_standbys_lose_no_acknowledged_write() {
    let c = Arc::new(cluster_with(ClusterOptions { standbys: 2, synchronous: true, ..Default::default() }).await);
    let p = start_proxy(proxy_config(&c, |_| {})).await;
    routed(&p, "pg-a").await;
    let pw = c.options.password.clone();
    let ledger = Ledger::start(p.client_addr, &pw).await;
    ledger.advance(100, LIMIT, "writes flowing").await;

    let Promoted { first, first_i, other, other_i } = kill_primary_until_promoted(&c, &p, LIMIT).await;
    eprintln!("first failover: {first}");
    // The other standby follows the new primary: re-pointed, streaming on its timeline.
    let s = wait_status(&p, LIMIT, "the other standby re-pointed and streaming", |s| {
        let b = backend(s, other);
        b.following_primary == Some(true) && b.promotion_eligible
    })
    .await;
    assert_eq!(s.state, State::Healthy);
    assert_eq!(backend(&s, other).timeline, backend(&s, &first).timeline);
    assert!(p.monitor.history(50).iter().any(|e| e.kind == EventKind::Repoint && e.from.as_deref() == Some(other)));
    let c3 = c.clone();
    blocking(move || c3.wait_streaming_from(first_i, 1, LIMIT).unwrap()).await;
    ledger.advance(100, LIMIT, "synchronous writes acknowledged on the new primary").await;

    let c4 = c.clone();
    blocking(move || c4.kill(first_i).unwrap()).await;
    let s = wait_status(&p, LIMIT, "the other standby promoted", |s| s.current_primary.as_deref() == Some(other)).await;
    assert_eq!(s.failover_count, 2);
    assert_none_lost(ledger, &c, other_i, other).await;
}

/// If the monitor dies (a bug), the proxy fails closed: the route is cleared, `/ready`
/// answers 503, new clients are refused with 57P03 naming the cause, and the proxy reports
/// itself failed so the binary exits non-zero (tested in `tests/cli.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_monitor_fails_closed() {
    let c = cluster(1).await;
    let p = start_proxy(proxy_config(&c, |cfg| cfg.failover.hold_timeout = Duration::from_millis(300))).await;
    routed(&p, "pg-a").await;
    p.monitor.crash_for_test().await;
    tokio::time::timeout(LIMIT, p.failed()).await.expect("the proxy reports the monitor's death");
    let r = get(p.admin_addr, "/ready").await;
    assert_eq!(r.status, 503);
    assert!(r.json()["reason"].as_str().unwrap().contains("health monitor stopped"), "{}", r.body);
    let err = try_connect(p.client_addr, &c.options.password).await.expect_err("refused");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW));
    let msg = err.as_db_error().expect("a proper ErrorResponse").message().to_string();
    assert!(msg.contains("health monitor stopped"), "{msg}");
}

/// The README's steps to rejoin an old primary after a switchover, run as written: it comes
/// back as a standby of the new primary, is unfenced by the proxy and can take over again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_rejoin_steps_make_the_old_primary_a_standby() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for step in [
        "pg_ctl -D \"$PGDATA\" stop -m fast",
        "psql \"host=NEW_HOST port=NEW_PORT user=postgres dbname=postgres\" -c CHECKPOINT",
        "pg_rewind --target-pgdata=\"$PGDATA\" --write-recovery-conf \\\n  --source-server=\"host=NEW_HOST port=NEW_PORT user=postgres dbname=postgres\"",
        "cp \"$PGDATA/postgresql.conf\" \"$PGDATA/pg_hba.conf\" /tmp/",
        "cp /tmp/postgresql.conf /tmp/pg_hba.conf \"$PGDATA/\"",
        "sed -i '/^default_transaction_read_only\\|^primary_slot_name/d' \"$PGDATA/postgresql.auto.conf\"",
    ] {
        assert!(readme.contains(step), "the README shows: {step}");
    }
    let mut c = cluster(1).await;
    let p = start_proxy(proxy_config(&c, |cfg| cfg.admin_token = Some(Secret::new(TOKEN)))).await;
    routed(&p, "pg-a").await;
    connect(p.client_addr, &c.options.password).await.batch_execute("create table before(i int); insert into before values (1)").await.unwrap();
    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = blocking(move || {
        c.stop(0).unwrap();
        c.psql(1, "CHECKPOINT").unwrap();
        let data = c.nodes[0].data.to_string_lossy().to_string();
        let own: Vec<(std::path::PathBuf, Vec<u8>)> =
            ["postgresql.conf", "pg_hba.conf"].iter().map(|f| (c.nodes[0].data.join(f), std::fs::read(c.nodes[0].data.join(f)).unwrap())).collect();
        let source = format!("host=127.0.0.1 port={} user=postgres dbname=postgres password={}", c.nodes[1].port, c.options.password);
        let out = c.run_tool("pg_rewind", &[&format!("--target-pgdata={data}"), "--write-recovery-conf", &format!("--source-server={source}")]).unwrap();
        assert!(out.contains("Done!") || out.contains("no rewind required"), "{out}");
        for (path, bytes) in own {
            std::fs::write(path, bytes).unwrap();
        }
        let auto = c.nodes[0].data.join("postgresql.auto.conf");
        let kept: String = std::fs::read_to_string(&auto)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("default_transaction_read_only") && !l.starts_with("primary_slot_name"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&auto, kept).unwrap();
        c.start_node(0).unwrap();
        c
    })
    .await;
    let s = wait_status(&p, LIMIT, "pg-a back as an eligible standby of pg-b", |s| {
        let a = backend(s, "pg-a");
        !a.fenced && a.role == "standby" && a.promotion_eligible
    })
    .await;
    assert_eq!((s.current_primary.as_deref(), s.state), (Some("pg-b"), State::Healthy));
    assert!(p.monitor.history(50).iter().any(|e| e.kind == EventKind::Unfence && e.from.as_deref() == Some("pg-a")));
    assert_eq!(c.psql(0, "select count(*) from before").unwrap(), "1");
}
