//! The data path's pause against a real PostgreSQL: the framing tells quiet sessions from
//! busy ones, a paused quiet session's next statement waits (and never reaches the server
//! until the resume), busy sessions run on until quiet, and a session whose server the
//! route leaves ends with a proper FATAL 57P01.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use pgfailover::cluster::BackendId;
use pgfailover::cluster::Scope;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const SECS_10: Duration = Duration::from_secs(10);
const PG_A: BackendId = BackendId::new(0);

async fn pid(c: &Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0)
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// A client and its connection task (which ends with the error a FATAL brings).
async fn connect_watched(addr: std::net::SocketAddr, pw: &str) -> (Client, tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>) {
    let (client, conn) = tokio_postgres::connect(&conn_str(addr, pw), NoTls).await.unwrap();
    (client, tokio::spawn(conn))
}

/// A primary, and a data path routed to it (no monitor: the test drives the gate).
async fn one_server() -> (pgfailover::localpg::Cluster, String, TestProxy) {
    let c = cluster(0).await;
    let pw = c.options.password.clone();
    let p = data_path(backends(&c), SECS_10).await;
    p.route.set(Some(PG_A), "");
    (c, pw, p)
}

fn soon() -> Instant {
    Instant::now() + SECS_10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_sessions_next_statement_waits_for_the_resume_and_runs_on_the_same_server() {
    let (c, pw, p) = one_server().await;
    let client = connect(p.addr, &pw).await;
    client.batch_execute("create table t(id int)").await.unwrap();
    let before = pid(&client).await;
    let gate = &p.dp.gate;
    gate.set(Some(Scope::Everything));
    let census = gate.settle(Scope::Everything, soon()).await;
    assert!(census.settled(), "{census:?}");
    assert_eq!((census.sessions, census.quiet), (1, 1));
    let client = Arc::new(client);
    let c2 = client.clone();
    let insert = tokio::spawn(async move { c2.execute("insert into t values (1)", &[]).await });
    eventually(SECS_10, "the statement is held", || async { (gate.census(Scope::Everything).held == 1).then_some(()) }).await;
    let direct = connect(node_addr(&c, 0), &pw).await;
    assert_eq!(count(&direct, "select count(*) from t").await, 0, "a held statement never reaches the server");
    assert!(!insert.is_finished());
    gate.set(None);
    assert_eq!(insert.await.unwrap().unwrap(), 1);
    assert_eq!(count(&direct, "select count(*) from t").await, 1);
    assert_eq!(pid(&client).await, before, "resumed on the same server session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_runs_on_until_it_commits_and_a_pause_that_times_out_says_so() {
    let (_c, pw, p) = one_server().await;
    let client = connect(p.addr, &pw).await;
    let idle = connect(p.addr, &pw).await;
    client.batch_execute("create table t(id int); begin; insert into t values (1)").await.unwrap();
    let gate = &p.dp.gate;
    gate.set(Some(Scope::Everything));
    let census = gate.settle(Scope::Everything, Instant::now() + Duration::from_millis(300)).await;
    assert!(!census.settled(), "the pause's timeout ran out with a transaction open");
    assert_eq!((census.sessions, census.in_transaction, census.quiet), (2, 1, 1), "{census:?}");
    // The transaction is not held: its statements and its COMMIT go on.
    client.batch_execute("insert into t values (2)").await.unwrap();
    client.batch_execute("commit").await.unwrap();
    let census = gate.settle(Scope::Everything, soon()).await;
    assert!(census.settled() && census.quiet == 2, "{census:?}");
    // Now quiet: its next statement is held like any other.
    let client = Arc::new(client);
    let c2 = client.clone();
    let next = tokio::spawn(async move { c2.batch_execute("insert into t values (3)").await });
    eventually(SECS_10, "the next statement is held", || async { (gate.census(Scope::Everything).held == 1).then_some(()) }).await;
    gate.set(None);
    next.await.unwrap().unwrap();
    assert_eq!(count(&idle, "select count(*) from t").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_session_whose_server_is_left_ends_with_57p01_and_its_statement_never_ran() {
    let (c, pw, p) = one_server().await;
    let (held, _held_conn) = connect_watched(p.addr, &pw).await;
    let (idle, idle_conn) = connect_watched(p.addr, &pw).await;
    held.batch_execute("create table t(id int)").await.unwrap();
    idle.batch_execute("select 1").await.unwrap();
    let gate = &p.dp.gate;
    gate.set(Some(Scope::Backend(PG_A)));
    assert!(gate.settle(Scope::Backend(PG_A), soon()).await.settled());
    let insert = tokio::spawn(async move { held.batch_execute("insert into t values (9)").await });
    eventually(SECS_10, "the insert is held", || async { (gate.census(Scope::Backend(PG_A)).held == 1).then_some(()) }).await;
    // The route leaves the server (a switchover's next step).
    p.route.set(None, "the primary is being switched over from pg-a to pg-b");
    let err = tokio::time::timeout(SECS_10, insert).await.expect("ended in time").unwrap().expect_err("the held statement fails");
    let db = err.as_db_error().unwrap_or_else(|| panic!("a proper ErrorResponse, got {err}"));
    assert_eq!(db.code(), &SqlState::ADMIN_SHUTDOWN);
    assert!(db.message().contains("switched over"), "{}", db.message());
    // The idle session learns it the same way, unasked.
    let idle_end = tokio::time::timeout(SECS_10, idle_conn).await.expect("ended in time").unwrap();
    let e = idle_end.expect_err("the idle session was ended");
    assert_eq!(e.as_db_error().map(|d| d.code()), Some(&SqlState::ADMIN_SHUTDOWN), "{e}");
    let direct = connect(node_addr(&c, 0), &pw).await;
    assert_eq!(count(&direct, "select count(*) from t").await, 0, "the held insert never ran");
    let metrics = p.metrics.render();
    assert!(metrics.contains("reason=\"ended_quiet\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_extended_protocol_client_is_quiet_only_when_every_batch_is_answered() {
    let (c, pw, p) = one_server().await;
    let client = Arc::new(connect(p.addr, &pw).await);
    client.batch_execute("create table t(id int, v text)").await.unwrap();
    let stmt = client.prepare("insert into t select $1, pg_sleep(0.001)::text").await.unwrap();
    let gate = &p.dp.gate;
    let c2 = client.clone();
    let all = tokio::spawn(async move {
        let futs: Vec<_> = (0..300)
            .map(|i: i32| {
                let (c, s) = (c2.clone(), stmt.clone());
                async move { c.execute(&s, &[&i]).await }
            })
            .collect();
        futures_util::future::join_all(futs).await
    });
    // Pause while the batches are in flight: the census settles only once all answered.
    eventually(SECS_10, "the batches are in flight", || async { (gate.census(Scope::Everything).running == 1).then_some(()) }).await;
    gate.set(Some(Scope::Everything));
    let census = gate.settle(Scope::Everything, soon()).await;
    assert!(census.settled(), "{census:?}");
    let direct = connect(node_addr(&c, 0), &pw).await;
    let settled_at = count(&direct, "select count(*) from t").await;
    gate.set(None);
    let results = tokio::time::timeout(SECS_10, all).await.expect("done in time").unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(1))), "every pipelined insert succeeded");
    assert_eq!(count(&direct, "select count(*) from t").await, 300);
    assert!(settled_at <= 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_copy_out_run_to_their_end_across_a_pause() {
    let (c, pw, p) = one_server().await;
    let client = connect(p.addr, &pw).await;
    client.batch_execute("create table t(id int)").await.unwrap();
    let gate = &p.dp.gate;
    // COPY FROM STDIN, paused half-way.
    let sink = client.copy_in("copy t from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    for i in 0..1000 {
        sink.feed(Bytes::from(format!("{i}\n"))).await.unwrap();
    }
    sink.flush().await.unwrap();
    gate.set(Some(Scope::Everything));
    let census = gate.settle(Scope::Everything, Instant::now() + Duration::from_millis(300)).await;
    assert_eq!(census.running, 1, "a COPY in progress is busy: {census:?}");
    for i in 1000..2000 {
        sink.feed(Bytes::from(format!("{i}\n"))).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 2000, "the COPY ran to its end while paused");
    assert!(gate.settle(Scope::Everything, soon()).await.settled());
    gate.set(None);
    // COPY TO STDOUT, paused half-way through the stream.
    let stream = client.copy_out("copy (select i from generate_series(1, 200000) i) to stdout").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut got = stream.next().await.unwrap().unwrap().len();
    gate.set(Some(Scope::Everything));
    while let Some(chunk) = stream.next().await {
        got += chunk.unwrap().len();
    }
    assert_eq!(got as i64, count(&connect(node_addr(&c, 0), &pw).await, "select sum(length(i::text) + 1) from generate_series(1, 200000) i").await);
    assert!(gate.settle(Scope::Everything, soon()).await.settled());
    gate.set(None);
    assert_eq!(count(&client, "select count(*) from t").await, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_lets_a_hundred_held_sessions_go_on() {
    let (c, pw, p) = one_server().await;
    let setup = connect(p.addr, &pw).await;
    setup.batch_execute("create table t(id int)").await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(connect(p.addr, &pw).await);
    }
    let gate = &p.dp.gate;
    gate.set(Some(Scope::Everything));
    assert!(gate.settle(Scope::Everything, soon()).await.settled());
    // 50 open sessions' statements and 50 new sessions, all held.
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move { client.execute("insert into t values ($1)", &[&(i as i32)]).await.map(|_| ()) }));
    }
    for i in 50..100i32 {
        let pw = pw.clone();
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            let client = try_connect(addr, &pw).await?;
            client.execute("insert into t values ($1)", &[&i]).await.map(|_| ())
        }));
    }
    eventually(SECS_10, "100 held", || async {
        let c = gate.census(Scope::Everything);
        (c.held == 50 && c.held_new == 50).then_some(())
    })
    .await;
    assert_eq!(count(&connect(node_addr(&c, 0), &pw).await, "select count(*) from t").await, 0);
    gate.set(None);
    for t in tasks {
        tokio::time::timeout(SECS_10, t).await.expect("resumed in time").unwrap().unwrap();
    }
    assert_eq!(count(&setup, "select count(*) from t").await, 100);
}
