//! What terminated sessions make visible, against real servers: the read port's per-connection
//! bounds and read-your-writes (`pgfailover.min_lsn`, with a standby whose replay is paused),
//! freshness chosen by port for passthrough TLS (`[[read.listeners]]`), and a TLS session held
//! by a pause and drained by a switchover.

mod common;

use std::time::Duration;

use common::certs::{Leaf, Pki};
use common::tls_clients::psql;
use common::*;
use pgfailover::config::{Config, ReadListener, Secret, TlsMode};
use pgfailover::localpg::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "tls-sessions-token";

fn terminating(c: &Cluster, cert: &Leaf, tweak: impl FnOnce(&mut Config)) -> Config {
    proxy_config(c, |cfg| {
        cfg.tls.mode = TlsMode::Terminate;
        cfg.tls.cert_file = Some(cert.chain.clone());
        cfg.tls.key_file = Some(cert.key.clone());
        cfg.listen_ro = Some("127.0.0.1:0".parse().unwrap());
        cfg.admin_token = Some(Secret::new(TOKEN));
        tweak(cfg);
        cfg.apply_server_tls();
    })
}

async fn serving(p: &pgfailover::server::Proxy) {
    wait_status(p, LIMIT, "pg-a routed, pg-b eligible", |s| {
        s.current_primary.as_deref() == Some("pg-a") && s.state == pgfailover::monitor::machine::State::Healthy
    })
    .await;
}

/// TLS to the proxy (not verified: these tests are about what passes through it).
fn tls_conn(port: u16, pw: &str, options: &str) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres password={pw} sslmode=require options='{options}'")
}

const IN_RECOVERY: &str = "SELECT pg_is_in_recovery()";

/// psql prints a command tag per statement: the LSN is the last line.
fn last_line(out: String) -> String {
    out.lines().last().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_bounds_and_min_lsn_work_through_termination() {
    let pki = Pki::new("reads");
    let cert = pki.leaf("proxy", "localhost", &["DNS:localhost"]);
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let wait = Duration::from_millis(1500);
    let p = start_proxy(terminating(&c, &cert, |cfg| {
        cfg.read.min_lsn_wait = wait;
        // The paused standby stays in the read set however long the test runs: its bytes
        // behind, and the sessions' own bounds, are what is tested.
        cfg.read.max_lag = Duration::from_secs(3600);
    }))
    .await;
    serving(&p).await;
    let ro = p.read_addr.unwrap().port();
    let rw = p.client_addr.port();
    psql(&tls_conn(rw, &pw, ""), "CREATE TABLE ryw (id int)").await.unwrap();
    eventually(LIMIT, "pg-b replays the table", || async { c.psql(1, "SELECT count(*) FROM pg_class WHERE relname = 'ryw'").ok().filter(|n| n == "1") }).await;

    // The bound the issue found ignored over TLS is read: 22023.
    let bogus = psql(&tls_conn(ro, &pw, "-c pgfailover.max_lag=bogus"), "SELECT 1").await.unwrap_err();
    assert!(bogus.contains("invalid value for parameter \"pgfailover.max_lag\""), "{bogus}");
    let bad_lsn = psql(&tls_conn(ro, &pw, "-c pgfailover.min_lsn=16/nothex"), "SELECT 1").await.unwrap_err();
    assert!(bad_lsn.contains("pgfailover.min_lsn"), "{bad_lsn}");
    assert_eq!(psql(&tls_conn(ro, &pw, "-c pgfailover.max_lag=10s"), IN_RECOVERY).await.unwrap(), "t", "a standby within the bound");

    // The standby stops replaying: writes are behind on it.
    c.psql(1, "SELECT pg_wal_replay_pause()").unwrap();
    for i in 0..3 {
        let lsn = last_line(psql(&tls_conn(rw, &pw, ""), &format!("INSERT INTO ryw VALUES ({i}); SELECT pg_current_wal_insert_lsn()")).await.unwrap());
        let started = std::time::Instant::now();
        let read = psql(
            &tls_conn(ro, &pw, &format!("-c pgfailover.min_lsn={lsn}")),
            &format!("SELECT count(*) FILTER (WHERE id = {i}), pg_is_in_recovery() FROM ryw"),
        )
        .await
        .unwrap();
        assert_eq!(read, "1|f", "the row written is read, on the primary (read.fallback) since the standby is paused");
        assert!(started.elapsed() >= wait, "after read.min_lsn_wait");
    }
    // A session bound by bytes goes to the primary too; one without bounds stays on the standby.
    eventually(LIMIT, "the monitor sees pg-b behind", || async {
        let s = p.monitor.status();
        (backend(&s, "pg-b").read_lag_bytes.unwrap_or(0) > 0).then_some(())
    })
    .await;
    assert_eq!(psql(&tls_conn(ro, &pw, "-c pgfailover.max_lag_bytes=0"), IN_RECOVERY).await.unwrap(), "f");
    assert_eq!(psql(&tls_conn(ro, &pw, ""), IN_RECOVERY).await.unwrap(), "t");

    // Replay goes on: a min_lsn read lands on the standby once it has replayed that far.
    c.psql(1, "SELECT pg_wal_replay_resume()").unwrap();
    let lsn = last_line(psql(&tls_conn(rw, &pw, ""), "INSERT INTO ryw VALUES (99); SELECT pg_current_wal_insert_lsn()").await.unwrap());
    let read = psql(&tls_conn(ro, &pw, &format!("-c pgfailover.min_lsn={lsn}")), "SELECT count(*) FILTER (WHERE id = 99), pg_is_in_recovery() FROM ryw")
        .await
        .unwrap();
    assert_eq!(read, "1|t", "read from the standby that replayed it");

    // As a parameter of its own (a driver that sends startup parameters): malformed, 22023.
    let mut s = tokio::net::TcpStream::connect(p.read_addr.unwrap()).await.unwrap();
    let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
    for f in ["user", "postgres", "pgfailover.min_lsn", "later", ""] {
        startup.extend_from_slice(f.as_bytes());
        startup.push(0);
    }
    let len = startup.len() as u32;
    startup[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&startup).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.first() == Some(&b'E') && text.contains("C22023") && text.contains("pgfailover.min_lsn"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_listeners_give_freshness_by_port_through_passthrough_tls() {
    let c = cluster_with(ClusterOptions { standbys: 1, ssl: true, ..Default::default() }).await;
    let pw = c.options.password.clone();
    let any = "127.0.0.1:0".parse().unwrap();
    let p = start_proxy(proxy_config(&c, |cfg| {
        cfg.read.max_lag = Duration::from_secs(3600);
        cfg.read.listeners = vec![
            ReadListener { listen: any, max_lag: None, max_lag_bytes: Some(0) },
            ReadListener { listen: any, max_lag: Some(Duration::from_secs(3600)), max_lag_bytes: Some(1 << 30) },
        ];
        cfg.apply_server_tls();
    }))
    .await;
    serving(&p).await;
    let (fresh, loose) = (p.read_addrs[0].port(), p.read_addrs[1].port());
    // TLS end to end (passthrough): the servers' own TLS.
    let conn = |port: u16| format!("host=127.0.0.1 port={port} user=postgres dbname=postgres password={pw} sslmode=require");
    const SSL_AND_RECOVERY: &str = "SELECT ssl::text || '|' || pg_is_in_recovery()::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    assert_eq!(psql(&conn(loose), SSL_AND_RECOVERY).await.unwrap(), "true|true");
    c.psql(1, "SELECT pg_wal_replay_pause()").unwrap();
    psql(&conn(p.client_addr.port()), "CREATE TABLE behind (id int)").await.unwrap();
    eventually(LIMIT, "the monitor sees pg-b behind", || async {
        let s = p.monitor.status();
        (backend(&s, "pg-b").read_lag_bytes.unwrap_or(0) > 0).then_some(())
    })
    .await;
    assert_eq!(psql(&conn(fresh), SSL_AND_RECOVERY).await.unwrap(), "true|false", "the strict port falls back to the primary");
    assert_eq!(psql(&conn(loose), SSL_AND_RECOVERY).await.unwrap(), "true|true", "the loose port still reads from the standby");
    c.psql(1, "SELECT pg_wal_replay_resume()").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_is_held_by_a_pause_and_drained_by_a_switchover() {
    let pki = Pki::new("drain");
    let cert = pki.leaf("proxy", "localhost", &["DNS:localhost"]);
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let p = start_proxy(terminating(&c, &cert, |cfg| {
        cfg.failover.drain_timeout = Duration::from_secs(5);
        cfg.failover.hold_timeout = Duration::from_secs(10);
    }))
    .await;
    serving(&p).await;
    let tls = {
        let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
        b.set_verify(openssl::ssl::SslVerifyMode::NONE);
        postgres_openssl::MakeTlsConnector::new(b.build())
    };
    let conninfo = format!("host=127.0.0.1 port={} user=postgres dbname=postgres password={pw} sslmode=require", p.client_addr.port());
    let (client, conn) = tokio_postgres::connect(&conninfo, tls).await.expect("a TLS session");
    let conn = tokio::spawn(conn);
    client.batch_execute("CREATE TABLE drained (id int)").await.unwrap();

    // The pause sees it quiet (its framing is followed, not opaque), and holds its next statement.
    let v = post(p.admin_addr, "/failover/pause", Some(TOKEN), r#"{"timeout": "5s"}"#).await.json();
    assert_eq!((v["quiet"].as_bool(), v["sessions"].as_u64()), (Some(true), Some(1)), "{v}");
    let client = std::sync::Arc::new(client);
    let c2 = client.clone();
    // The simple protocol: `execute` prepares a statement and, once done, sends a
    // fire-and-forget Close of it, which could still be in flight when the switchover below
    // ends the session, and take the 57P01 as its answer (a limit the README names).
    let held = tokio::spawn(async move { c2.simple_query("INSERT INTO drained VALUES (1)").await });
    eventually(LIMIT, "the statement is held", || async { p.metrics.render().contains("pgfailover_held_sessions 1").then_some(()) }).await;
    assert_eq!(c.psql(0, "SELECT count(*) FROM drained").unwrap(), "0", "a held statement never reaches the server");
    assert_eq!(post(p.admin_addr, "/failover/resume", Some(TOKEN), "").await.status, 200);
    let inserted = held.await.unwrap().expect("the held insert ran after the resume");
    assert!(inserted.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(1))), "one row inserted");

    // A switchover: the quiet TLS session is ended at a message boundary with 57P01.
    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), r#"{"target": "pg-b"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ended = tokio::time::timeout(LIMIT, conn).await.expect("the drained session ends").unwrap();
    let code = ended.err().and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
    assert_eq!(code.as_deref(), Some("57P01"), "a FATAL 57P01 through the client's TLS");
    assert!(p.metrics.render().contains("pgfailover_sessions_closed_total{reason=\"ended_quiet\"} 1"), "{}", p.metrics.render());
    assert_eq!(p.monitor.status().current_primary.as_deref(), Some("pg-b"));
    assert_eq!(c.psql(1, "SELECT count(*) FROM drained").unwrap(), "1", "nothing lost");
}
