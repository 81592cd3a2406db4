//! Health checks that are turned away — a wrong password, a missing check database, no
//! connection slot left — say what is wrong and never cause a failover.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgfailover::config::Secret;
use pgfailover::localpg::ClusterOptions;
use pgfailover::monitor::check_error::ErrorKind;
use pgfailover::monitor::machine::State;
use tokio_postgres::error::SqlState;

const LIMIT: Duration = Duration::from_secs(30);

/// A role for the checks only, so the test can break its login without touching clients'.
fn create_monitor_role(c: &pgfailover::localpg::Cluster) {
    c.psql(0, "CREATE ROLE pgf_monitor LOGIN PASSWORD 'monitor-pw' IN ROLE pg_monitor").unwrap();
}

fn as_monitor(cfg: &mut pgfailover::config::Config) {
    for b in std::iter::once(&mut cfg.primary).chain(cfg.standbys.iter_mut()) {
        b.user = "pgf_monitor".into();
        b.password = Some(Secret::new("monitor-pw"));
    }
}

/// Waits for a few more check rounds to pass, then asserts nothing was promoted.
async fn no_failover_after_more_checks(p: &pgfailover::server::Proxy, c: &pgfailover::localpg::Cluster) {
    let failures = p.monitor.status().health_check_failures;
    wait_status(p, LIMIT, "more check rounds", |s| s.health_check_failures >= failures + 8).await;
    assert_eq!(p.monitor.status().failover_count, 0);
    assert_eq!(c.psql(1, "select pg_is_in_recovery()").unwrap(), "t", "the standby was not promoted");
}

fn errors_metric(p: &pgfailover::server::Proxy, backend: &str, kind: &str) -> f64 {
    let text = p.metrics.render();
    let line = format!("pgfailover_health_check_errors_total{{backend=\"{backend}\",kind=\"{kind}\"}}");
    text.lines().find_map(|l| l.strip_prefix(&line).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// A typo in the check database, both servers up: no failover, no "server is down". Clients
/// and `/ready` are told what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_check_database_is_named_and_nothing_is_promoted() {
    let c = cluster(1).await;
    let p = start_proxy(proxy_config(&c, |cfg| {
        cfg.primary.database = "nope".into();
        cfg.standbys[0].database = "nope".into();
        cfg.failover.hold_timeout = Duration::from_millis(300);
    }))
    .await;
    let s = wait_status(&p, LIMIT, "both checks refused", |s| s.backends.iter().all(|b| b.last_error_kind == Some(ErrorKind::Misconfigured))).await;
    assert_eq!((s.state, s.current_primary.as_deref()), (State::Degraded, None));
    no_failover_after_more_checks(&p, &c).await;
    let expected = "checks to pg-a fail: database \"nope\" does not exist";
    let r = get(p.admin_addr, "/ready").await;
    assert_eq!(r.status, 503);
    assert!(r.json()["reason"].as_str().unwrap().contains(expected), "{}", r.body);
    let h = get(p.admin_addr, "/failover/health").await.json();
    assert_eq!(h["backends"][0]["lastErrorKind"], "misconfigured");
    assert!(h["backends"][0]["lastError"].as_str().unwrap().contains("3D000"));
    let err = try_connect(p.client_addr, &c.options.password).await.expect_err("refused");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW));
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains(expected) && !msg.contains("down"), "{msg}");
    assert!(errors_metric(&p, "pg-a", "misconfigured") >= 3.0);
    assert_eq!(errors_metric(&p, "pg-a", "down"), 0.0);
}

/// The checker's password is changed while everything runs: the primary keeps its route
/// and its clients, the state turns degraded with the reason, nothing is promoted; fixing
/// the password makes it healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_checker_password_degrades_but_never_fails_over() {
    let c = cluster(1).await;
    create_monitor_role(&c);
    let p = start_proxy(proxy_config(&c, as_monitor)).await;
    wait_status(&p, LIMIT, "healthy", |s| s.state == State::Healthy).await;
    // Two commands: one string would run both in one transaction, and a checker reconnecting
    // before it commits would log in with the old password and keep that session.
    c.psql(0, "ALTER ROLE pgf_monitor PASSWORD 'changed'").unwrap();
    c.psql(0, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'pgf_monitor'").unwrap();
    let s = wait_status(&p, LIMIT, "checks refused by authentication", |s| backend(s, "pg-a").last_error_kind == Some(ErrorKind::Misconfigured)).await;
    assert!(backend(&s, "pg-a").last_error.as_deref().unwrap().contains("28P01"), "{:?}", backend(&s, "pg-a").last_error);
    no_failover_after_more_checks(&p, &c).await;
    let s = p.monitor.status();
    assert_eq!((s.state, s.current_primary.as_deref()), (State::Degraded, Some("pg-a")));
    let client = connect(p.client_addr, &c.options.password).await;
    assert_eq!(server_port(&client).await, c.nodes[0].port as i32, "clients keep reaching the primary");
    c.psql(0, "ALTER ROLE pgf_monitor PASSWORD 'monitor-pw'").unwrap();
    wait_status(&p, LIMIT, "healthy again", |s| s.state == State::Healthy).await;
}

/// Every connection slot taken: the checker's reconnect gets 53300 "too many clients". The
/// server is busy, not down: no failover, kind `overloaded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_connection_slots_are_overload_not_a_failover() {
    let c = Arc::new(cluster_with(ClusterOptions { standbys: 1, max_connections: 20, ..Default::default() }).await);
    create_monitor_role(&c);
    let p = start_proxy(proxy_config(&c, as_monitor)).await;
    wait_status(&p, LIMIT, "healthy", |s| s.state == State::Healthy).await;
    // Take every slot, the superusers' reserved ones included, then end the checker's own
    // session: the slot it frees is one of the reserved, which the (non-superuser) checker
    // cannot have, so its reconnects are turned away with 53300 for as long as we hold on.
    let mut held = Vec::new();
    let direct = node_addr(&c, 0);
    loop {
        match try_connect(direct, &c.options.password).await {
            Ok(client) => held.push(client),
            Err(e) => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e}");
                break;
            }
        }
        assert!(held.len() < 30, "max_connections is 20");
    }
    held[0].batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgfailover-health'").await.unwrap();
    let s = wait_status(&p, LIMIT, "checks turned away", |s| backend(s, "pg-a").last_error_kind == Some(ErrorKind::Overloaded)).await;
    assert!(backend(&s, "pg-a").last_error.as_deref().unwrap().contains("53300"));
    no_failover_after_more_checks(&p, &c).await;
    assert_eq!(p.monitor.status().current_primary.as_deref(), Some("pg-a"));
    assert!(errors_metric(&p, "pg-a", "overloaded") >= 1.0);
    drop(held);
    wait_status(&p, LIMIT, "healthy again", |s| s.state == State::Healthy).await;
}
