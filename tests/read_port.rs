//! The read-only port against a real primary and two streaming standbys: reads spread over
//! the standbys, a standby that falls behind gets no new reads, each fallback behaves as
//! configured, a client's own bound tightens (never loosens) the configured one, a failover
//! moves the read set, and TLS, SCRAM, COPY and cancel pass through.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pgfailover::config::{Balance, Config, Fallback};
use pgfailover::localpg::{Cluster, ClusterOptions};
use pgfailover::monitor::machine::State;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const LIMIT: Duration = Duration::from_secs(30);

fn with_reads(c: &Cluster, tweak: impl FnOnce(&mut Config)) -> Config {
    proxy_config(c, |cfg| {
        cfg.listen_ro = Some("127.0.0.1:0".parse().unwrap());
        tweak(cfg);
    })
}

async fn both_standbys_serve(p: &pgfailover::server::Proxy) {
    wait_status(p, LIMIT, "both standbys serve reads", |s| s.state == State::Healthy && backend(s, "pg-b").serves_reads && backend(s, "pg-c").serves_reads)
        .await;
}

/// A read session with extra connection options (`options=…`).
async fn read_session(p: &pgfailover::server::Proxy, pw: &str, options: &str) -> Result<Client, tokio_postgres::Error> {
    let addr = p.read_addr.expect("listen_ro is set");
    let mut conn = conn_str(addr, pw);
    if !options.is_empty() {
        conn.push_str(&format!(" options='{options}'"));
    }
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn on_standby(c: &Client) -> bool {
    c.query_one("select pg_is_in_recovery()", &[]).await.unwrap().get(0)
}

/// Pauses replay on node `i` and writes 1 MB on the primary, so `i` falls behind.
async fn fall_behind(c: &Arc<Cluster>, p: &pgfailover::server::Proxy, i: usize) {
    c.psql(i, "select pg_wal_replay_pause()").unwrap();
    let pw = c.options.password.clone();
    connect(p.client_addr, &pw)
        .await
        .batch_execute("create table if not exists filler(s text); insert into filler select repeat('x', 1000) from generate_series(1, 1000)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_the_standbys_and_never_reach_the_primary() {
    let c = cluster(2).await;
    let p = start_proxy(with_reads(&c, |_| {})).await;
    both_standbys_serve(&p).await;
    let pw = c.options.password.clone();
    let mut held = Vec::new();
    let mut per_port: HashMap<i32, usize> = HashMap::new();
    for _ in 0..6 {
        let s = read_session(&p, &pw, "").await.unwrap();
        assert!(on_standby(&s).await, "every read session is on a standby");
        *per_port.entry(server_port(&s).await).or_default() += 1;
        held.push(s);
    }
    assert_eq!(per_port.get(&(c.nodes[1].port as i32)), Some(&3), "least connections: {per_port:?}");
    assert_eq!(per_port.get(&(c.nodes[2].port as i32)), Some(&3), "least connections: {per_port:?}");
    let prom = p.metrics.render();
    assert!(prom.lines().any(|l| l == "pgfailover_read_sessions{backend=\"pg-b\"} 3"), "{prom}");
    assert_eq!(get(p.admin_addr, "/ready/ro").await.status, 200);
    // The main port still goes to the primary.
    assert!(!on_standby(&connect(p.client_addr, &pw).await).await);
    drop(held);

    // Round robin: each in turn, even with no sessions left open.
    let rr = start_proxy(with_reads(&c, |cfg| cfg.read.balance = Balance::RoundRobin)).await;
    both_standbys_serve(&rr).await;
    let mut ports = Vec::new();
    for _ in 0..4 {
        ports.push(server_port(&read_session(&rr, &pw, "").await.unwrap()).await);
    }
    assert!(ports.windows(2).all(|w| w[0] != w[1]), "alternating: {ports:?}");
}

/// `pg_wal_replay_pause()` on one standby while the primary writes: that standby gets no new
/// read sessions; both paused: each fallback does what it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_behind_gets_no_reads_and_each_fallback_behaves() {
    let c = Arc::new(cluster(2).await);
    let bounds = |cfg: &mut Config| {
        cfg.read.max_lag_bytes = 64 * 1024;
        cfg.failover.hold_timeout = Duration::from_millis(500);
    };
    let p = start_proxy(with_reads(&c, bounds)).await;
    both_standbys_serve(&p).await;
    let pw = c.options.password.clone();
    fall_behind(&c, &p, 1).await;
    let s = wait_status(&p, LIMIT, "pg-b no longer serves reads, pg-c does", |s| !backend(s, "pg-b").serves_reads && backend(s, "pg-c").serves_reads).await;
    let why = backend(&s, "pg-b").read_reason.clone().unwrap();
    assert!(why.contains("behind") && why.contains("max_lag_bytes"), "{why}");
    for _ in 0..4 {
        let r = read_session(&p, &pw, "").await.unwrap();
        assert_eq!(server_port(&r).await, c.nodes[2].port as i32, "only pg-c takes new reads");
    }

    fall_behind(&c, &p, 2).await;
    wait_status(&p, LIMIT, "no standby serves reads", |s| !backend(s, "pg-c").serves_reads).await;
    // fallback = primary (the default): the primary takes the read, and it is counted.
    let r = read_session(&p, &pw, "").await.unwrap();
    assert!(!on_standby(&r).await, "fell back to the primary");
    assert_eq!(p.metrics.stats.read_fallback.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(get(p.admin_addr, "/ready/ro").await.status, 200, "the fallback is a read target");

    // fallback = hold: held for hold_timeout, then refused with the reason.
    let hold = start_proxy(with_reads(&c, |cfg| {
        bounds(cfg);
        cfg.read.fallback = Fallback::Hold;
    }))
    .await;
    wait_status(&hold, LIMIT, "checked", |s| s.current_primary.is_some() && !backend(s, "pg-b").serves_reads && !backend(s, "pg-c").serves_reads).await;
    let started = Instant::now();
    let err = read_session(&hold, &pw, "").await.expect_err("refused after the hold");
    assert!(started.elapsed() >= Duration::from_millis(450), "held first");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW));
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("no read-only database is available") && msg.contains("max_lag_bytes"), "{msg}");
    let r = get(hold.admin_addr, "/ready/ro").await;
    assert_eq!(r.status, 503, "{}", r.body);

    // fallback = refuse: at once.
    let refuse = start_proxy(with_reads(&c, |cfg| {
        bounds(cfg);
        cfg.read.fallback = Fallback::Refuse;
        cfg.failover.hold_timeout = Duration::from_secs(10);
    }))
    .await;
    wait_status(&refuse, LIMIT, "checked", |s| s.current_primary.is_some() && !backend(s, "pg-b").serves_reads && !backend(s, "pg-c").serves_reads).await;
    let started = Instant::now();
    let err = read_session(&refuse, &pw, "").await.expect_err("refused");
    assert!(started.elapsed() < Duration::from_secs(5), "not held for the 10 s hold timeout");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW));
    assert_eq!(refuse.metrics.stats.read_refused.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Replay resumes: both serve reads again.
    c.psql(1, "select pg_wal_replay_resume()").unwrap();
    c.psql(2, "select pg_wal_replay_resume()").unwrap();
    both_standbys_serve(&p).await;
}

/// A client's `-c pgfailover.max_lag_bytes=0` / `pgfailover.max_lag=…` tightens the bound for
/// its connection; a looser one than configured is ignored; a bad value is refused (22023).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_from_the_startup_parameters_tightens_but_never_loosens() {
    let c = Arc::new(cluster(2).await);
    // Configured loosely: both standbys serve reads even with pg-b 1 MB and a minute behind.
    let p = start_proxy(with_reads(&c, |cfg| cfg.read.max_lag = Duration::from_secs(60))).await;
    both_standbys_serve(&p).await;
    let pw = c.options.password.clone();
    fall_behind(&c, &p, 1).await;
    wait_status(&p, LIMIT, "pg-b behind, still within the configured bound", |s| {
        let b = backend(s, "pg-b");
        b.serves_reads && b.read_lag_bytes.is_some_and(|l| l > 100_000) && backend(s, "pg-c").read_lag_bytes == Some(0)
    })
    .await;
    for options in ["-c pgfailover.max_lag_bytes=0", "-cpgfailover.max_lag_bytes=1000 -c pgfailover.max_lag=30s"] {
        for _ in 0..3 {
            let r = read_session(&p, &pw, options).await.unwrap();
            assert_eq!(server_port(&r).await, c.nodes[2].port as i32, "{options}: only the standby within the bound");
        }
    }
    // No standby meets a bound of 0 bytes once pg-c is behind too: the fallback (primary).
    fall_behind(&c, &p, 2).await;
    wait_status(&p, LIMIT, "pg-c behind", |s| backend(s, "pg-c").read_lag_bytes.is_some_and(|l| l > 100_000)).await;
    let r = read_session(&p, &pw, "-c pgfailover.max_lag_bytes=0").await.unwrap();
    assert!(!on_standby(&r).await, "fell back to the primary");

    let err = read_session(&p, &pw, "-c pgfailover.max_lag=soon").await.expect_err("a bad value");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PARAMETER_VALUE));
    assert!(err.as_db_error().unwrap().message().contains("pgfailover.max_lag"), "{err:?}");

    // Configured tightly: pg-b (behind) is out, and a client's looser bound does not bring it back.
    c.psql(2, "select pg_wal_replay_resume()").unwrap();
    let tight = start_proxy(with_reads(&c, |cfg| cfg.read.max_lag_bytes = 64 * 1024)).await;
    wait_status(&tight, LIMIT, "only pg-c serves reads", |s| !backend(s, "pg-b").serves_reads && backend(s, "pg-c").serves_reads).await;
    for _ in 0..3 {
        let r = read_session(&tight, &pw, "-c pgfailover.max_lag_bytes=999999999999").await.unwrap();
        assert_eq!(server_port(&r).await, c.nodes[2].port as i32, "a looser bound is ignored");
    }
    c.psql(1, "select pg_wal_replay_resume()").unwrap();
}

/// A failover while read sessions are open: the promoted standby leaves the read set (its
/// open sessions stay: it is neither lost nor fenced); the other standby serves reads again
/// once it follows the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_moves_the_read_set() {
    let c = Arc::new(cluster(2).await);
    let p = start_proxy(with_reads(&c, |_| {})).await;
    both_standbys_serve(&p).await;
    let pw = c.options.password.clone();
    let a = read_session(&p, &pw, "").await.unwrap();
    let b = read_session(&p, &pw, "").await.unwrap();
    let c2 = c.clone();
    blocking(move || c2.kill(0).unwrap()).await;
    let s = wait_status(&p, LIMIT, "a standby promoted", |s| s.current_primary.as_deref().is_some_and(|n| n != "pg-a")).await;
    let new_primary = s.current_primary.clone().unwrap();
    let other = if new_primary == "pg-b" { "pg-c" } else { "pg-b" };
    let other_port = c.nodes[if other == "pg-b" { 1 } else { 2 }].port as i32;
    let s = wait_status(&p, LIMIT, "the other standby serves reads again", |s| backend(s, other).serves_reads).await;
    assert!(!backend(&s, &new_primary).serves_reads, "the new primary leaves the read set");
    assert!(backend(&s, &new_primary).read_reason.as_deref().unwrap().contains("include_primary"));
    for _ in 0..3 {
        let r = read_session(&p, &pw, "").await.unwrap();
        assert!(on_standby(&r).await);
        assert_eq!(server_port(&r).await, other_port);
    }
    // The open read sessions on the standbys were not cut by the failover.
    for s in [&a, &b] {
        assert_eq!(s.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    }
}

/// TLS (to the server's certificate), SCRAM, COPY out and a CancelRequest work through the
/// read-only port as through the main one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_scram_copy_and_cancel_pass_through_the_read_port() {
    use futures_util::StreamExt;
    let c = cluster_with(ClusterOptions { standbys: 2, ssl: true, ..Default::default() }).await;
    let p = start_proxy(with_reads(&c, |_| {})).await;
    both_standbys_serve(&p).await;
    let addr = p.read_addr.unwrap();
    let pw = c.options.password.clone();
    // TLS end to end: the server's certificate, the session on a standby.
    let mut builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    builder.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let mut tls = postgres_openssl::MakeTlsConnector::new(builder.build());
    tls.set_callback(|cfg, _| {
        cfg.set_verify_hostname(false);
        Ok(())
    });
    let (tls_client, conn) = tokio_postgres::connect(&format!("{} sslmode=require", conn_str(addr, &pw)), tls).await.unwrap();
    tokio::spawn(conn);
    let row = tls_client.query_one("select ssl, pg_is_in_recovery() from pg_stat_ssl, (select 1) x where pid = pg_backend_pid()", &[]).await.unwrap();
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1), "TLS to a standby");
    // SCRAM: a wrong password is refused by the server, the right one accepted.
    assert_eq!(read_session(&p, "wrong", "").await.expect_err("wrong password").code(), Some(&SqlState::INVALID_PASSWORD));
    let r = read_session(&p, &pw, "").await.unwrap();
    // COPY out of 100,000 rows.
    let stream = r.copy_out("copy (select g, md5(g::text) from generate_series(1, 100000) g) to stdout").await.unwrap();
    let bytes: usize = stream.map(|chunk| chunk.unwrap().len()).fold(0, |a, n| async move { a + n }).await;
    assert!(bytes > 3_000_000, "{bytes} bytes copied out");
    // Cancel a long query on a read session.
    let token = r.cancel_token();
    let sleeping = tokio::spawn(async move { r.batch_execute("select pg_sleep(30)").await });
    let running = "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'";
    eventually(LIMIT, "the query runs on a standby", || async {
        let n: usize = [1, 2].iter().map(|i| c.psql(*i, running).unwrap().parse::<usize>().unwrap()).sum();
        (n == 1).then_some(())
    })
    .await;
    let (cancel_at, started) = (addr, Instant::now());
    let socket = tokio::net::TcpStream::connect(cancel_at).await.unwrap();
    token.cancel_query_raw(socket, NoTls).await.unwrap();
    let err = tokio::time::timeout(LIMIT, sleeping).await.unwrap().unwrap().expect_err("cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
