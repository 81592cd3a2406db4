//! The data path against real PostgreSQL: everything a client does must work through the
//! proxy unchanged, route changes cut old sessions, refusals are proper 57P03 errors.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use pgfailover::cluster::BackendId;
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls};

const SECS_10: Duration = Duration::from_secs(10);
/// The harness's backends, in config order.
const PG_A: BackendId = BackendId::new(0);
const PG_B: BackendId = BackendId::new(1);

/// A TLS connector for clients of the harness servers' self-signed certificates.
fn tls_trusting_any_certificate() -> MakeTlsConnector {
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    MakeTlsConnector::new(builder.build())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_extended_and_pipelined_queries() {
    let c = cluster(0).await;
    let p = data_path(backends(&c), SECS_10).await;
    p.route.set(Some(PG_A), "");
    let client = connect(p.addr, &c.options.password).await;
    let rows = client.simple_query("select 1 as one; select 'two'").await.unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);
    client.batch_execute("create table t(id int primary key, v text)").await.unwrap();
    let stmt = client.prepare("insert into t values ($1, $2)").await.unwrap();
    // Pipelined: many extended-protocol executions in flight at once.
    let futs: Vec<_> = (0..500)
        .map(|i| {
            let client = &client;
            let stmt = &stmt;
            async move { client.execute(stmt, &[&i, &format!("v{i}")]).await }
        })
        .collect();
    for r in futures_util::future::join_all(futs).await {
        assert_eq!(r.unwrap(), 1);
    }
    let row = client.query_one("select count(*), max(v) from t where id >= $1", &[&0i32]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 500);
    assert_eq!(row.get::<_, String>(1), "v99");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_and_in_of_50mb_match_direct() {
    let c = cluster(0).await;
    let p = data_path(backends(&c), SECS_10).await;
    p.route.set(Some(PG_A), "");
    let pw = &c.options.password;
    let via = connect(p.addr, pw).await;
    let direct = connect(node_addr(&c, 0), pw).await;
    let query = "copy (select i, repeat(md5(i::text), 3) from generate_series(1, 500000) i) to stdout";
    let mut sums = Vec::new();
    for client in [&via, &direct] {
        let mut stream = Box::pin(client.copy_out(query).await.unwrap());
        let (mut h, mut n) = (Fnv::new(), 0usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            n += chunk.len();
            h.update(&chunk);
        }
        sums.push((n, h.0));
    }
    assert!(sums[0].0 >= 50_000_000, "copied {} bytes", sums[0].0);
    assert_eq!(sums[0], sums[1], "COPY out through the proxy differs from direct");

    via.batch_execute("create table big(i int, s text)").await.unwrap();
    let sink = via.copy_in("copy big from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let (mut sent, mut sent_bytes) = (Fnv::new(), 0usize);
    let mut i = 0u64;
    while sent_bytes < 50_000_000 {
        let mut chunk = String::with_capacity(1 << 20);
        while chunk.len() < (1 << 20) - 200 {
            i += 1;
            chunk.push_str(&format!("{i}\trow-{i}-{}\n", "y".repeat((i % 97) as usize)));
        }
        sent.update(chunk.as_bytes());
        sent_bytes += chunk.len();
        sink.send(Bytes::from(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), i);
    let mut back = Box::pin(direct.copy_out("copy (select * from big order by i) to stdout").await.unwrap());
    let mut got = Fnv::new();
    while let Some(chunk) = back.next().await {
        got.update(&chunk.unwrap());
    }
    assert_eq!(got.0, sent.0, "COPY in through the proxy stored different bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_passes_through() {
    let c = cluster(0).await;
    let p = data_path(backends(&c), SECS_10).await;
    p.route.set(Some(PG_A), "");
    let pw = &c.options.password;
    let (listener, mut conn) = tokio_postgres::connect(&conn_str(p.addr, pw), NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("listen jobs").await.unwrap();
    let notifier = connect(p.addr, pw).await;
    notifier.batch_execute("notify jobs, 'hello through the proxy'").await.unwrap();
    let got = tokio::time::timeout(SECS_10, rx.recv()).await.expect("notification in time").unwrap();
    assert_eq!(got, ("jobs".to_string(), "hello through the proxy".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_cancels_a_running_query() {
    let c = cluster(0).await;
    let p = data_path(backends(&c), SECS_10).await;
    p.route.set(Some(PG_A), "");
    let pw = c.options.password.clone();
    let client = connect(p.addr, &pw).await;
    let token = client.cancel_token();
    let started = tokio::time::Instant::now();
    let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    let watcher = connect(node_addr(&c, 0), &pw).await;
    eventually(SECS_10, "pg_sleep to be running", || async {
        let n: i64 =
            watcher.query_one("select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'", &[]).await.ok()?.get(0);
        (n == 1).then_some(())
    })
    .await;
    // The cancel token targets the address the client connected to: the proxy.
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(SECS_10, sleeper).await.expect("cancelled in time").unwrap().unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(started.elapsed() < Duration::from_secs(25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passes_through_to_the_server() {
    let c = cluster_with(pgfailover::localpg::ClusterOptions { standbys: 0, ssl: true, ..Default::default() }).await;
    let p = data_path(backends(&c), SECS_10).await;
    p.route.set(Some(PG_A), "");
    let tls = tls_trusting_any_certificate();
    let conn = format!("{} sslmode=require", conn_str(p.addr, &c.options.password));
    let (client, connection) = tokio_postgres::connect(&conn, tls).await.expect("TLS through the proxy");
    tokio::spawn(connection);
    let row = client.query_one("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()", &[]).await.unwrap();
    assert!(row.get::<_, bool>(0), "the server sees an encrypted session");
    assert!(row.get::<_, String>(1).starts_with("TLS"));
    // The proxy moved only ciphertext: it never saw the query text.
    assert!(p.metrics.stats.bytes.totals().0 > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_password_auth_works_and_wrong_password_fails() {
    let c = cluster(0).await;
    let p = data_path(backends(&c), SECS_10).await;
    p.route.set(Some(PG_A), "");
    let client = connect(p.addr, &c.options.password).await;
    let scram: bool = client.query_one("select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = 'postgres'", &[]).await.unwrap().get(0);
    assert!(scram, "the harness stores a SCRAM verifier");
    let err = try_connect(p.addr, "wrong-password").await.expect_err("wrong password refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions() {
    let c = cluster(0).await;
    let p = data_path(backends(&c), SECS_10).await;
    p.route.set(Some(PG_A), "");
    let pw = c.options.password.clone();
    let tasks: Vec<_> = (0..200i32)
        .map(|i| {
            let pw = pw.clone();
            let addr = p.addr;
            tokio::spawn(async move {
                let client = connect(addr, &pw).await;
                let v: i32 = client.query_one("select $1::int * 2", &[&i]).await.unwrap().get(0);
                assert_eq!(v, i * 2);
                client
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let direct = connect(node_addr(&c, 0), &pw).await;
    let n: i64 =
        direct.query_one("select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(n, 200);
    assert_eq!(pgfailover::metrics::Stats::get(&p.metrics.stats.active), 200);
    drop(clients);
    eventually(SECS_10, "all sessions to end", || async { (pgfailover::metrics::Stats::get(&p.metrics.stats.active) == 0).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_change_closes_sessions_to_the_old_backend() {
    let c = cluster(1).await;
    let p = data_path(backends(&c), SECS_10).await;
    p.route.set(Some(PG_A), "");
    let pw = &c.options.password;
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(connect(p.addr, pw).await);
    }
    for client in &old {
        assert!(!client.query_one("select pg_is_in_recovery()", &[]).await.unwrap().get::<_, bool>(0));
    }
    p.route.set(Some(PG_B), "");
    for client in &old {
        eventually(SECS_10, "old session to be closed", || async { client.is_closed().then_some(()) }).await;
        assert!(client.simple_query("select 1").await.is_err());
    }
    // New sessions go to the new target (here the standby, which is in recovery).
    let fresh = connect(p.addr, pw).await;
    assert!(fresh.query_one("select pg_is_in_recovery()", &[]).await.unwrap().get::<_, bool>(0));
    // The node itself kept running: nothing was done to it, only the sessions were cut.
    assert_eq!(c.psql(0, "select 1").unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_with_57p03_when_no_route_or_backend_down() {
    let c = cluster(0).await;
    let mut p = data_path(backends(&c), Duration::from_millis(300)).await;
    let pw = c.options.password.clone();
    // No route at all.
    let err = try_connect(p.addr, &pw).await.expect_err("refused");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err}");
    let db = err.as_db_error().unwrap();
    assert_eq!(db.severity(), "FATAL");
    assert!(db.message().contains("no primary database is available: no primary yet"), "{}", db.message());

    // Routed, but the backend is down: the client still gets a proper error (after an SSL
    // negotiation answered with N), and the monitor hears about it.
    p.route.set(Some(PG_A), "");
    c.kill(0).unwrap();
    let tls = tls_trusting_any_certificate();
    let conn = format!("{} sslmode=prefer", conn_str(p.addr, &pw));
    let Err(err) = tokio_postgres::connect(&conn, tls).await else { panic!("refused") };
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err}");
    assert!(err.as_db_error().unwrap().message().contains("could not connect to primary pg-a"), "{err}");
    assert_eq!(p.passive.recv().await, Some(PG_A), "passive signal names the failed backend");
    assert!(pgfailover::metrics::Stats::get(&p.metrics.stats.refused) >= 2);
    assert!(p.metrics.render().contains("pgfailover_client_connections_refused_total 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connection_is_spliced_when_a_route_appears() {
    let c = cluster(0).await;
    let p = data_path(backends(&c), SECS_10).await;
    let pw = c.options.password.clone();
    let addr = p.addr;
    let pending = tokio::spawn(async move { try_connect(addr, &pw).await });
    eventually(SECS_10, "the client to be held", || async { (pgfailover::metrics::Stats::get(&p.metrics.stats.held) == 1).then_some(()) }).await;
    assert!(!pending.is_finished());
    p.route.set(Some(PG_A), "");
    let client = pending.await.unwrap().expect("held client connects once a route appears");
    assert_eq!(client.query_one("select 41 + 1", &[]).await.unwrap().get::<_, i32>(0), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_client_does_not_hurt_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = cluster(0).await;
    let p = data_path(backends(&c), Duration::from_millis(100)).await;
    // Refusal path: a huge declared length and random bytes get a close, no panic.
    for junk in [&b"\xff\xff\xff\xff\x00\x00"[..], b"GET / HTTP/1.1\r\n\r\n", b"\x00\x00\x00\x08\x04\xd2\x16\x2f"] {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        s.shutdown().await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(SECS_10, s.read_to_end(&mut buf)).await.expect("closed in time");
    }
    p.route.set(Some(PG_A), "");
    // Routed: a direct-TLS ClientHello goes to the server unjudged, and it closes it.
    for junk in [&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..]] {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(SECS_10, s.read_to_end(&mut buf)).await.expect("closed by the server in time");
    }
    let client = connect(p.addr, &c.options.password).await;
    assert_eq!(client.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

/// Bytes whose first four cannot be a startup packet's length are closed at once, as
/// PostgreSQL closes them, without waiting for more or for the startup timeout, and without
/// a server connection kept for them; with or without a route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_startup_lengths_are_closed_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = cluster(0).await;
    let p = data_path(backends(&c), Duration::from_secs(5)).await;
    for routed in [false, true] {
        if routed {
            p.route.set(Some(PG_A), "");
        }
        for junk in [&b"hello\n"[..], b"GET / HTTP/1.1\r\n\r\n", b"\0\0\0\x04"] {
            let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
            let sent = std::time::Instant::now();
            s.write_all(junk).await.unwrap();
            let mut buf = Vec::new();
            // Unread bytes left behind make the close a reset, as with PostgreSQL.
            match tokio::time::timeout(SECS_10, s.read_to_end(&mut buf)).await.expect("closed") {
                Ok(_) => {}
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            }
            let took = sent.elapsed();
            eprintln!("{junk:?} (routed: {routed}) closed after {took:?}");
            assert!(buf.is_empty(), "closed without an answer, as PostgreSQL does");
            // The startup timeout is 10 s: a close well before it came from the length.
            assert!(took < Duration::from_secs(2), "{junk:?} closed after {took:?}");
        }
    }
    assert!(p.metrics.render().lines().any(|l| l.starts_with("pgfailover_sessions_closed_total{reason=\"invalid_startup\"} 6")));
}

/// A client that sends nothing, or half a startup packet, is closed at
/// `proxy.startup_timeout` (for the whole startup, not per packet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_at_the_startup_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = cluster(0).await;
    let p = data_path_with(backends(&c), Duration::from_secs(5), |pc| pc.startup_timeout = Duration::from_millis(300)).await;
    p.route.set(Some(PG_A), "");
    for partial in [&b""[..], b"\0\0\0\x50\0\x03"] {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(partial).await.unwrap();
        let mut buf = Vec::new();
        let started = std::time::Instant::now();
        tokio::time::timeout(SECS_10, s.read_to_end(&mut buf)).await.expect("closed by the startup timeout").unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250), "not before the timeout");
    }
}

/// Over `proxy.max_client_connections`, the next client gets a proper 53300 ErrorResponse
/// (as PostgreSQL's "too many clients"), counted; a slot freed is usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_answers_53300() {
    let c = cluster(0).await;
    let p = data_path_with(backends(&c), Duration::from_secs(5), |pc| pc.max_client_connections = 3).await;
    p.route.set(Some(PG_A), "");
    let pw = &c.options.password;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(p.addr, pw).await);
    }
    let err = try_connect(p.addr, pw).await.expect_err("the fourth is refused");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    assert!(err.as_db_error().unwrap().message().contains("max_client_connections is 3"));
    assert_eq!(p.metrics.stats.over_limit.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(p.metrics.render().lines().any(|l| l == "pgfailover_client_connections_over_limit_total 1"));
    drop(open.pop());
    eventually(SECS_10, "a slot is free again", || async { try_connect(p.addr, pw).await.ok() }).await;
}

/// A server that is up but cannot take sessions never answers the client itself. Here it is
/// a standby with `hot_standby = off`, which answers every StartupMessage with 57P03 "not
/// accepting connections", as a primary in the middle of an immediate stop or a crash
/// restart does. The client is held and goes wherever the route moves; if no server takes it
/// within the hold timeout it gets the proxy's 57P03, which says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_sessions_is_retried_not_passed_on() {
    let mut c = cluster(1).await;
    c.psql(1, "alter system set hot_standby = off").unwrap();
    c.stop(1).unwrap();
    let c = blocking(move || {
        c.start_node(1).unwrap();
        c
    })
    .await;
    let pw = c.options.password.clone();
    let direct = try_connect(node_addr(&c, 1), &pw).await.expect_err("pg-b refuses sessions");
    assert_eq!(direct.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{direct}");

    let mut p = data_path(backends(&c), Duration::from_millis(1500)).await;
    p.route.set(Some(PG_B), "");
    // Nothing takes the client in time: the proxy's own error, naming the server's reason.
    let err = try_connect(p.addr, &pw).await.expect_err("refused after the hold");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err}");
    let msg = err.as_db_error().unwrap().message();
    assert!(msg.starts_with("no primary database is available: pg-b refused the session"), "{msg}");
    assert!(msg.contains("not accepting connections"), "{msg}");
    assert_eq!(p.passive.recv().await, Some(PG_B), "the monitor is told to check pg-b now");
    assert!(pgfailover::metrics::Stats::get(&p.metrics.stats.held) >= 1);

    // The route moves while a client is held: it lands on the new target. It asked for TLS
    // first (sslmode=prefer); pg-b said N, so the retry sends only the StartupMessage.
    let tls = tls_trusting_any_certificate();
    let conn = format!("{} sslmode=prefer", conn_str(p.addr, &pw));
    let held_before = pgfailover::metrics::Stats::get(&p.metrics.stats.held);
    let pending = tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&conn, tls).await?;
        tokio::spawn(connection);
        Ok::<_, tokio_postgres::Error>(client)
    });
    eventually(SECS_10, "the client to be held", || async { (pgfailover::metrics::Stats::get(&p.metrics.stats.held) > held_before).then_some(()) }).await;
    p.route.set(Some(PG_A), "");
    let client = pending.await.unwrap().expect("the held client is taken by pg-a");
    assert_eq!(server_port(&client).await, c.nodes[0].port as i32);
    assert_eq!(client.query_one("select 41 + 1", &[]).await.unwrap().get::<_, i32>(0), 42);
    assert_eq!(pgfailover::metrics::Stats::get(&p.metrics.stats.refused), 1, "only the first client was refused");
}

/// A client whose routed server accepted the TCP connection but never answers its startup (a
/// frozen host, and no monitor here to move the route) does not keep the proxy from
/// stopping: the wait ends with the drain period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_session_whose_server_never_answers_the_startup() {
    let c = cluster(0).await;
    let p = data_path(backends(&c), SECS_10).await;
    p.route.set(Some(PG_A), "");
    c.hang(0).unwrap();
    let (addr, pw) = (p.addr, c.options.password.clone());
    let pending = tokio::spawn(async move { try_connect(addr, &pw).await });
    eventually(SECS_10, "the client's startup to reach the frozen server", || async { (p.metrics.stats.bytes.totals().0 > 0).then_some(()) }).await;
    p.shutdown.cancel();
    eventually(SECS_10, "the proxy to stop after its drain period", || async { p.task.is_finished().then_some(()) }).await;
    assert!(pending.await.unwrap().is_err(), "the waiting client's connection was closed");
    assert!(p.metrics.render().contains("pgfailover_sessions_closed_total{reason=\"shutdown\"} 1"), "{}", p.metrics.render());
    c.resume(0);
}
